"""OCPP 1.6 firmware update: UpdateFirmware / FirmwareStatusNotification and SignedUpdateFirmware.

SCAFFOLD (lead): the firmware-update engineer replaces this module; keep the three exported names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from firmware.config import Settings
from firmware.session import SessionManager
from hal.clock import Clock

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService


class FirmwareHandlers:
    """Mixed into CentralSystemLink: the ``@on``/``@after`` handlers for the firmware actions."""

    service: OcppService


class OcppFirmware:
    def status(self) -> str:
        """The FirmwareStatusNotification status a TriggerMessage reports now."""
        return "Idle"


def build_firmware(
    settings: Settings,
    *,
    clock: Clock,
    sender: Any,
    sessions: SessionManager,
    firmware_version: str,
    restart: Callable[[str], None],
) -> OcppFirmware:
    return OcppFirmware()
