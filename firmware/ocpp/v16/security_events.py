"""Security events (OCPP 1.6 security whitepaper ed. 2, SecurityEventNotification and its appendix of types).

Every event goes in the security log (the ``firmware.ocpp.security`` logger, which GetLog SecurityLog collects).
Critical events go to the CSMS through the durable outbox, so an outage or a restart does not lose them; the
others go when the CSMS can be reached, the newest few held in memory until then (a charger that keeps failing
to authenticate would otherwise queue one event per reconnect).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from ocpp.v16 import call

from firmware.ocpp.outbox import Outbox
from firmware.ocpp.v16.meter_values import iso
from hal.clock import Clock

log = logging.getLogger("firmware.ocpp.security")

#: Critical in the whitepaper's appendix: the charger SHALL send them, queued while offline.
CRITICAL: Final = frozenset(
    {
        "FirmwareUpdated",
        "SettingSystemTime",
        "StartupOfTheDevice",
        "ResetOrReboot",
        "SecurityLogWasCleared",
        "MemoryExhaustion",
        "TamperDetectionActivated",
    }
)
TYPES: Final = CRITICAL | frozenset(
    {
        "FailedToAuthenticateAtCentralSystem",
        "CentralSystemFailedToAuthenticate",
        "ReconfigurationOfSecurityParameters",
        "InvalidMessages",
        "AttemptedReplayAttacks",
        "InvalidFirmwareSignature",
        "InvalidFirmwareSigningCertificate",
        "InvalidCentralSystemCertificate",
        "InvalidChargePointCertificate",
        "InvalidTLSVersion",
        "InvalidTLSCipherSuite",
    }
)
#: Non-critical events held while the CSMS is unreachable (oldest dropped first; all of them are in the log).
PENDING_MAX: Final = 20
TECH_INFO_MAX: Final = 255  # CiString255


class LiveSender(Protocol):
    async def send_live(self, payload: Any) -> Any | None: ...


class SecurityEvents:
    def __init__(self, *, outbox: Outbox, clock: Clock, kick: Callable[[], None], sender: LiveSender) -> None:
        self._outbox = outbox
        self._clock = clock
        self._kick = kick
        self._sender = sender
        self._pending: deque[dict[str, str]] = deque(maxlen=PENDING_MAX)
        self._flushing: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()  # a boot's flush and a new event's flush never send the same event twice
        self.online: Callable[[], bool] = lambda: False

    @property
    def pending(self) -> list[dict[str, str]]:
        return list(self._pending)

    def record(self, kind: str, tech_info: str | None = None) -> None:
        """Log the event and send it as its criticality requires."""
        if kind not in TYPES:
            raise ValueError(f"unknown security event type {kind!r}")
        payload = {"type": kind, "timestamp": iso(self._clock.now())}
        if tech_info:
            payload["techInfo"] = "".join(c if " " <= c <= "~" else "?" for c in tech_info)[:TECH_INFO_MAX]
        log.warning("SecurityEvent %s%s", kind, f": {payload['techInfo']}" if "techInfo" in payload else "")
        if kind in CRITICAL:
            self._outbox.enqueue("SecurityEventNotification", payload)
            self._kick()
            return
        last = self._pending[-1] if self._pending else None
        if last is not None and (last["type"], last.get("techInfo")) == (kind, payload.get("techInfo")):
            last["timestamp"] = payload["timestamp"]  # the same failure again: one event, its latest time
        else:
            self._pending.append(payload)
        if self.online():
            self.flush_soon()

    def flush_soon(self) -> None:
        if self._pending and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self.flush(), name="ocpp-security-events")

    async def flush(self) -> None:
        """Send the held non-critical events, oldest first; stop at the first that cannot be delivered."""
        async with self._sending:
            while self._pending:
                payload = self._pending[0]
                result = await self._sender.send_live(
                    call.SecurityEventNotification(
                        type=payload["type"], timestamp=payload["timestamp"], tech_info=payload.get("techInfo")
                    )
                )
                if result is None:
                    return
                if self._pending and self._pending[0] is payload:
                    self._pending.popleft()
