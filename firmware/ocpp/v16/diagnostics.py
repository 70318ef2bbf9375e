"""OCPP 1.6 diagnostics: GetDiagnostics / DiagnosticsStatusNotification and GetLog / LogStatusNotification.

SCAFFOLD (lead): the diagnostics engineer replaces this module; keep the three exported names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firmware.config import Settings
from firmware.store import Store
from hal.clock import Clock

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService


class DiagnosticsHandlers:
    """Mixed into CentralSystemLink: the ``@on``/``@after`` handlers for the diagnostics actions."""

    service: OcppService


class OcppDiagnostics:
    def status(self) -> str:
        """The DiagnosticsStatusNotification status a TriggerMessage reports now."""
        return "Idle"


def build_diagnostics(settings: Settings, *, store: Store, clock: Clock, sender: Any) -> OcppDiagnostics:
    return OcppDiagnostics()
