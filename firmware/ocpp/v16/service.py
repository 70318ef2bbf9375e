"""The charge point's OCPP 1.6J side: boot, heartbeat, status, transactions, metering, remote control.

Outlives every connection. Transaction-related messages go through the durable outbox (on disk
before they are sent, delivered in order); status notifications and heartbeats are sent live and
may overtake the queue (1.6 §3.7). The charging core never waits for any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Final, Protocol

from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from firmware.aio import wait_event
from firmware.auth.ocpp import IdTagInfo, IdTagTable
from firmware.charging.connector import Reservation, Status, StatusChanged, StopReason
from firmware.charging.controller import ChargingController, ControllerEvent, FaultsChanged
from firmware.metering import MeterSampler
from firmware.ocpp.connection import OcppConnection
from firmware.ocpp.outbox import Outbox
from firmware.ocpp.v16.configuration import Configuration
from firmware.ocpp.v16.diagnostics import OcppDiagnostics
from firmware.ocpp.v16.firmware import OcppFirmware
from firmware.ocpp.v16.link import CentralSystemLink
from firmware.ocpp.v16.meter_values import iso
from firmware.ocpp.v16.pricing import PricingService
from firmware.ocpp.v16.security_events import SecurityEvents
from firmware.ocpp.v16.smart_charging import SmartCharging
from firmware.ocpp.v16.transactions import CONNECTOR, TransactionReporter
from firmware.session import SessionManager
from hal.clock import Clock

log = logging.getLogger("firmware.ocpp")

#: OCPP 1.6 ChargePointErrorCode for each fault, most important first.
ERROR_CODES: Final = (
    ("rcd", "GroundFailure"),
    ("weld", "PowerSwitchFailure"),
    ("stuck-open", "PowerSwitchFailure"),
    ("overtemp", "HighTemperature"),
    ("cp-short", "EVCommunicationError"),
    ("pilot-fault", "EVCommunicationError"),
    ("diode", "EVCommunicationError"),
    ("meter", "PowerMeterFailure"),
    ("reader", "ReaderFailure"),
    ("pp-broken", "OtherError"),
)
TRIGGERABLE: Final = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)

#: ExtendedTriggerMessage (security extension): the same, with the security messages in place of the 1.6 ones.
#: SignChargePointCertificate is NotImplemented: this charger has no certificate management (no CSR).
EXTENDED_TRIGGERABLE: Final = (
    "BootNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "StatusNotification",
)


@functools.lru_cache(maxsize=512)
def _snake(key: str) -> str:
    return str(camel_to_snake_case({key: None}).popitem()[0])


def snake_keys(data: Any) -> Any:
    """camelCase -> snake_case keys, recursively; the per-key conversion is cached (the outbox replays a lot)."""
    if isinstance(data, dict):
        return {_snake(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def error_code(faults: frozenset[str]) -> tuple[str, str | None]:
    """(errorCode, vendorErrorCode) for the active faults."""
    for fault, code in ERROR_CODES:
        if fault in faults:
            return code, fault
    return ("OtherError", sorted(faults)[0]) if faults else ("NoError", None)


class CallObserver(Protocol):
    """Sees every CALL on the link: the fleet simulator counts and times them.

    ``sent`` when a charger-initiated CALL is written to the socket, ``answered``/``failed`` when its
    caller gets the result, ``received`` for each CALL from the CSMS.
    """

    def sent(self, action: str) -> None: ...
    def answered(self, action: str, latency_s: float) -> None: ...
    def failed(self, action: str, kind: str) -> None: ...
    def received(self, action: str) -> None: ...


class OcppService:
    def __init__(
        self,
        *,
        charge_point_id: str,
        controller: ChargingController,
        sessions: SessionManager,
        sampler: MeterSampler,
        outbox: Outbox,
        configuration: Configuration,
        local_list: IdTagTable,
        cache: IdTagTable,
        connection: OcppConnection,
        clock: Clock,
        firmware_version: str,
        restart: Callable[[str], None],
        smart_charging: SmartCharging,
        response_timeout_s: float = 30.0,
    ) -> None:
        self.charge_point_id = charge_point_id
        self.controller = controller
        self.sessions = sessions
        self.sampler = sampler
        self.outbox = outbox
        self.configuration = configuration
        self.local_list = local_list
        self.cache = cache
        self.connection = connection
        self.clock = clock
        self.firmware_version = firmware_version
        self.restart = restart
        self.response_timeout_s = response_timeout_s
        self.link: CentralSystemLink | None = None
        self.accepted = False
        self._booted = False
        self._kick = asyncio.Event()
        self._status_due: set[int] = set()
        self._last_status: dict[int, tuple[str, str, str | None]] = {}
        self._scheduled_availability: str | None = None
        self._pending_remote_start: str | None = None
        self._last_heartbeat = 0.0
        self.call_observer: CallObserver | None = None
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._boot_hooks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.security = SecurityEvents(outbox=outbox, clock=clock, kick=self._kick.set, sender=self)
        self.security.online = lambda: self.online
        self.on_boot_accepted(self.security.flush)
        connection.on_security_failure = self._on_connection_security_failure
        configuration.subscribe(self._on_security_key_changed)
        # Set by the assembly once the service exists (both send through it).
        self.diagnostics: OcppDiagnostics | None = None
        self.firmware: OcppFirmware | None = None
        self.pricing: PricingService | None = None
        self.transactions = TransactionReporter(
            outbox=outbox,
            configuration=configuration,
            sessions=sessions,
            sampler=sampler,
            controller=controller,
            clock=clock,
            kick=self._kick.set,
        )
        self.smart_charging = smart_charging
        # After the reporter's own listener: a started session has its transaction ref by then.
        sessions.on_session_started(smart_charging.on_session_started)
        self.transactions.on_transaction_ended(smart_charging.on_transaction_ended)
        sampler.add_reading_listener(smart_charging.on_meter_reading)
        controller.add_listener(self._on_controller_event)

    # ---- state --------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self.link is not None and self.accepted

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "connected": self.online,
            "state": self.connection.state,
            "queued": len(self.outbox),
            "last_error": self.connection.last_error,
        }

    def on_boot_accepted(self, hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """``hook`` runs (as its own task) after every accepted BootNotification, once the link is usable."""
        self._boot_hooks.append(hook)

    async def send_live(self, payload: Any) -> Any | None:
        """A charger-initiated CALL outside the transaction queue, sent now: its result, or None when offline,
        unanswered or refused (logged). Status notifications of diagnostics and firmware go this way."""
        link = self.link
        if link is None or not self.accepted:
            return None
        try:
            return await self._call(link, payload)
        except Exception as exc:  # CALLERROR, timeout, or the socket closing under the call
            log.warning("%s failed: %s", type(payload).__name__, type(exc).__name__)
            return None

    def _on_connection_security_failure(self, kind: str, reason: str) -> None:
        event = "FailedToAuthenticateAtCentralSystem" if kind == "authentication" else "InvalidCentralSystemCertificate"
        self.security.record(event, reason)

    def _on_security_key_changed(self, key: str, value: object) -> None:
        if key in ("AuthorizationKey", "SecurityProfile"):
            self.security.record("ReconfigurationOfSecurityParameters", f"{key} changed by the CSMS")

    # ---- running ------------------------------------------------------------------------
    async def run(self) -> None:
        """The CSMS link and, beside it, the smart-charging claim (profiles are local: it runs offline too)."""
        self.security.record("StartupOfTheDevice", f"pievse {self.firmware_version} started")
        async with asyncio.TaskGroup() as group:
            group.create_task(self.smart_charging.run(), name="ocpp-smart-charging")
            await self.transactions.recover_power_loss()
            await self.connection.run(self._session)

    async def _session(self, ws: Any) -> None:
        link = CentralSystemLink(self.charge_point_id, ws, self, self.response_timeout_s)
        self.link = link
        receiver = asyncio.create_task(link.start(), name="ocpp-receive")
        worker = asyncio.create_task(self._work(link), name="ocpp-send")
        try:
            done, _ = await asyncio.wait({receiver, worker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("OCPP session ended: %s", type(task.exception()).__name__)
        finally:
            self.link, self.accepted = None, False
            for task in (receiver, worker):
                task.cancel()
            for task in (receiver, worker):
                with contextlib.suppress(BaseException):
                    await task

    async def _call(self, link: CentralSystemLink, payload: Any) -> Any:
        action = type(payload).__name__
        observer = self.call_observer  # counts the CALL when the link writes it, times it here
        started = time.perf_counter()
        try:
            result = await link.call(payload, suppress=False)
        except TimeoutError:
            if observer is not None:
                observer.failed(action, "timeout")
            if self.link is link:  # never drop a newer connection for a call made on an older one
                await self.connection.drop(f"{action} not answered within {self.response_timeout_s:g} s")
            raise
        except OCPPError as exc:
            if observer is not None:
                observer.failed(action, f"CallError {exc.code}")
            raise
        except asyncio.CancelledError:
            raise  # shutdown or a dropped link: not the CSMS's failure
        except Exception as exc:
            if observer is not None:
                observer.failed(action, type(exc).__name__)
            raise
        if observer is not None:
            observer.answered(action, time.perf_counter() - started)
        return result

    async def _work(self, link: CentralSystemLink) -> None:
        if not self._booted:
            await self._boot(link)
        self.accepted = True
        self._run_boot_hooks()
        self._status_due.update({0, CONNECTOR})
        self._last_heartbeat = self.clock.monotonic()
        while True:
            await self._send_statuses(link)
            sent = await self._send_queued(link)
            if sent:
                continue
            await self._heartbeat_if_due(link)
            self._kick.clear()
            await wait_event(self._kick, self._idle_wait())

    def _run_boot_hooks(self) -> None:
        for hook in self._boot_hooks:
            task = asyncio.create_task(hook(), name="ocpp-boot-hook")
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    def _idle_wait(self) -> float:
        interval = max(1, self.configuration.get_int("HeartbeatInterval"))
        wait = self._last_heartbeat + interval - self.clock.monotonic()
        head = self.outbox.peek()
        if head is not None and head.not_before is not None:
            wait = min(wait, head.not_before - self.clock.now().timestamp())
        return min(max(wait, 0.05), 5.0)

    async def _boot(self, link: CentralSystemLink) -> None:
        while True:
            result = await self._call(
                link,
                call.BootNotification(
                    charge_point_model="pievse-ac",
                    charge_point_vendor="pievse",
                    charge_point_serial_number=self.charge_point_id[:25],
                    firmware_version=self.firmware_version[:50],
                ),
            )
            interval = int(result.interval)
            if result.status == "Accepted":
                if interval > 0:
                    self.configuration.change("HeartbeatInterval", str(interval))
                self._booted = True
                log.info("BootNotification accepted; heartbeat every %d s", interval)
                return
            wait = interval if interval > 0 else 30
            log.warning("BootNotification %s; retrying in %d s", result.status, wait)
            await asyncio.sleep(wait)

    async def _heartbeat_if_due(self, link: CentralSystemLink) -> None:
        if self.clock.monotonic() - self._last_heartbeat >= self.configuration.get_int("HeartbeatInterval"):
            await self._call(link, call.Heartbeat())
            self._last_heartbeat = self.clock.monotonic()

    # ---- status notifications -------------------------------------------------------------
    def _connector_status(self, connector_id: int) -> tuple[str, str, str | None]:
        faults = self.controller.faults
        code, vendor = error_code(faults)
        if connector_id == 0:
            if not self.controller.connector.operative:
                return "Unavailable", code, vendor
            return ("Faulted" if self.controller.connector.status is Status.FAULTED else "Available"), code, vendor
        return self.controller.connector.status.value, code, vendor

    async def _send_statuses(self, link: CentralSystemLink) -> None:
        while self._status_due:
            connector_id = min(self._status_due)
            self._status_due.discard(connector_id)
            status, code, vendor = self._connector_status(connector_id)
            info = ", ".join(sorted(self.controller.faults))[:50] or None
            await self._call(
                link,
                call.StatusNotification(
                    connector_id=connector_id,
                    error_code=code,
                    status=status,
                    timestamp=iso(self.clock.now()),
                    info=info,
                    vendor_error_code=vendor,
                ),
            )
            self._last_status[connector_id] = (status, code, vendor)

    def _on_controller_event(self, event: ControllerEvent) -> None:
        if isinstance(event, StatusChanged | FaultsChanged):
            for connector_id in (0, CONNECTOR):
                if self._connector_status(connector_id) != self._last_status.get(connector_id):
                    self._status_due.add(connector_id)
            if (
                isinstance(event, StatusChanged)
                and self._scheduled_availability is not None
                and not self.controller.in_session
            ):
                self._apply_availability(self._scheduled_availability)
                self._scheduled_availability = None
            self._kick.set()

    # ---- transactions -----------------------------------------------------------------------
    async def _send_queued(self, link: CentralSystemLink) -> bool:
        msg = self.outbox.next_due()
        if msg is None:
            return False
        payload_type = getattr(call, msg.action)
        payload = payload_type(**snake_keys(msg.payload))
        self.outbox.mark_sent(msg.id)
        try:
            result = await self._call(link, payload)
        except OCPPError as exc:
            retried = self.outbox.failed(msg.id, f"{type(exc).__name__}: {exc.description}")
            log.warning("%s refused by the CSMS (%s)%s", msg.action, exc, "" if retried else "; discarded")
            return True
        except TimeoutError:
            self.outbox.failed(msg.id, "no answer")
            raise
        response = snake_to_camel_case(dataclasses.asdict(result))
        if self.outbox.delivered(msg.id, response) and msg.action == "StartTransaction":
            self.transactions.check_start_answer(msg.transaction_ref, response)
        return True

    async def data_transfer(self, vendor_id: str, message_id: str | None = None, data: str | None = None) -> Any:
        """A charger-initiated DataTransfer (e.g. pricing messages); None when the CSMS is unreachable."""
        link = self.link
        if link is None or not self.accepted:
            return None
        return await self._call(link, call.DataTransfer(vendor_id=vendor_id, message_id=message_id, data=data))

    # ---- authorization ---------------------------------------------------------------------
    async def authorize_with_csms(self, id_tag: str) -> IdTagInfo | None:
        link = self.link
        if link is None or not self.accepted:
            return None
        try:
            result = await self._call(link, call.Authorize(id_tag=id_tag))
        except Exception as exc:  # CALLERROR, timeout, or the socket closing under the call
            log.warning("Authorize for %s failed: %s", id_tag, type(exc).__name__)
            return None
        return IdTagInfo.from_wire(result.id_tag_info)

    # ---- CSMS-initiated ------------------------------------------------------------------
    def remote_start(self, id_tag: str, connector_id: int | None, charging_profile: Any) -> str:
        if connector_id not in (None, CONNECTOR):
            return "Rejected"
        profile = None
        if charging_profile is not None:
            profile = self.smart_charging.remote_start_profile(charging_profile, connector_id)
            if profile is None:
                return "Rejected"
        connector = self.controller.connector
        if connector.in_session or connector.authorized or not connector.operative:
            return "Rejected"
        if connector.status in (Status.FAULTED, Status.UNAVAILABLE):
            return "Rejected"
        self._pending_remote_start = id_tag
        self.smart_charging.hold_for_remote_start(id_tag, profile)
        return "Accepted"

    async def remote_start_followup(self, id_tag: str) -> None:
        if self._pending_remote_start != id_tag:
            return
        self._pending_remote_start = None
        if self.configuration.get_bool("AuthorizeRemoteTxRequests"):
            await self.sessions.present_id_tag(id_tag, "remote start")
        elif self.controller.connector.authorize(id_tag):
            self.sessions.note_authorization("remote start", "csms")
            log.info("remote start for %s", id_tag)
            self.controller.wake()

    def remote_stop(self, transaction_id: int) -> str:
        record = self.sessions.current
        if record is None or record.transaction_ref is None:
            return "Rejected"
        if self.outbox.transaction_id(record.transaction_ref) != transaction_id:
            return "Rejected"
        self.controller.connector.request_stop(StopReason.REMOTE, "RemoteStopTransaction")
        self.controller.wake()
        return "Accepted"

    async def reset(self, kind: str) -> None:
        self.security.record("ResetOrReboot", f"{kind} reset requested by the CSMS")
        reason = StopReason.HARD_RESET if kind == "Hard" else StopReason.SOFT_RESET
        if self.controller.connector.request_stop(reason, f"{kind} reset"):
            self.controller.wake()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if self.sessions.current is None:
                    break
        # 1.6 §5.14: the StopTransaction goes out and is answered before the restart; otherwise the restarted
        # process sends it (again) from the outbox. Bounded: offline it simply stays queued.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.response_timeout_s
        while len(self.outbox) and self.online and loop.time() < deadline:
            self._kick.set()
            await asyncio.sleep(0.05)
        log.warning("%s reset requested by the CSMS: restarting", kind)
        self.restart(kind)

    def change_availability(self, connector_id: int, kind: str) -> str:
        if connector_id not in (0, CONNECTOR):
            return "Rejected"
        if self.controller.in_session:
            self._scheduled_availability = kind
            return "Scheduled"
        self._apply_availability(kind)
        return "Accepted"

    def _apply_availability(self, kind: str) -> None:
        self.controller.connector.operative = kind == "Operative"
        log.info("availability set to %s", kind)
        self.controller.wake()

    def unlock_connector(self, connector_id: int) -> str:
        return "NotSupported"  # no cable lock actuator on this hardware

    def change_configuration(self, key: str, value: str) -> str:
        status = self.configuration.change(key, value)
        log.info("ChangeConfiguration %s: %s", key, status)
        return status

    def clear_cache(self) -> str:
        self.cache.clear()
        return "Accepted"

    def local_list_version(self) -> int:
        return self.local_list.version if self.configuration.get_bool("LocalAuthListEnabled") else -1

    def send_local_list(self, version: int, update_type: str, entries: list[dict[str, Any]]) -> str:
        if not self.configuration.get_bool("LocalAuthListEnabled"):
            return "NotSupported"
        if len(entries) > self.configuration.get_int("SendLocalListMaxLength"):
            return "Failed"
        if update_type == "Full":
            table = {e["id_tag"]: IdTagInfo.from_wire(e["id_tag_info"]) for e in entries if e.get("id_tag_info")}
            self.local_list.replace(table, version)
            return "Accepted"
        if version <= self.local_list.version:
            return "VersionMismatch"
        for entry in entries:
            if entry.get("id_tag_info"):
                self.local_list.put(entry["id_tag"], IdTagInfo.from_wire(entry["id_tag_info"]))
            else:
                self.local_list.remove(entry["id_tag"])
        self.local_list.set_version(version)
        return "Accepted"

    def trigger_status(self, message: str, connector_id: int | None, *, extended: bool = False) -> str:
        """The TriggerMessage.conf (``extended``: ExtendedTriggerMessage.conf) status."""
        if connector_id not in (None, 0, CONNECTOR):
            return "Rejected"
        return "Accepted" if message in (EXTENDED_TRIGGERABLE if extended else TRIGGERABLE) else "NotImplemented"

    async def trigger(self, message: str, connector_id: int | None) -> None:
        if self.trigger_status(message, connector_id) != "Accepted":
            return
        if message == "BootNotification":
            self._booted = False
            if self.link is not None:
                await self._boot(self.link)
                self._run_boot_hooks()
        elif message == "Heartbeat":
            self._last_heartbeat = -1e9
        elif message == "StatusNotification":
            self._status_due.update({connector_id} if connector_id is not None else {0, CONNECTOR})
        elif message == "MeterValues":
            self.transactions.sample_meter_values(context="Trigger", always=True)
        elif message == "DiagnosticsStatusNotification" and self.link is not None:
            status = self.diagnostics.status() if self.diagnostics is not None else "Idle"
            await self._call(self.link, call.DiagnosticsStatusNotification(status=status))
        elif message == "FirmwareStatusNotification" and self.link is not None:
            status = self.firmware.status() if self.firmware is not None else "Idle"
            await self._call(self.link, call.FirmwareStatusNotification(status=status))
        self._kick.set()

    async def extended_trigger(self, message: str, connector_id: int | None) -> None:
        """The messages the security extension names: its own status notifications, the rest as TriggerMessage."""
        if self.trigger_status(message, connector_id, extended=True) != "Accepted":
            return
        if message == "FirmwareStatusNotification":
            status, request_id = self.firmware.signed_status() if self.firmware is not None else ("Idle", None)
            await self.send_live(call.SignedFirmwareStatusNotification(status=status, request_id=request_id))
        elif message == "LogStatusNotification":
            status, request_id = self.diagnostics.log_status() if self.diagnostics is not None else ("Idle", None)
            await self.send_live(call.LogStatusNotification(status=status, request_id=request_id))
        else:
            await self.trigger(message, connector_id)

    def reserve_now(
        self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int, parent_id_tag: str | None
    ) -> str:
        if connector_id != CONNECTOR:
            return "Rejected"  # ReserveConnectorZeroSupported is false; there is one connector
        try:
            expires = datetime.fromisoformat(expiry_date.replace("Z", "+00:00"))
        except ValueError:
            return "Rejected"
        if expires.tzinfo is None or expires <= self.clock.now():
            return "Rejected"
        status = self.controller.connector.reserve(Reservation(reservation_id, id_tag, expires, parent_id_tag))
        log.info("ReserveNow %d for %s until %s: %s", reservation_id, id_tag, expires.isoformat(), status)
        self.controller.wake()
        return status

    def cancel_reservation(self, reservation_id: int) -> str:
        if self.controller.connector.cancel_reservation(reservation_id):
            self.controller.wake()
            return "Accepted"
        return "Rejected"
