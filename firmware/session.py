"""Sessions: who may charge, and what each session delivered.

Card taps and connector events meet here. A tap asks the :class:`Authorizer`; an accepted idTag
is handed to the connector, and the same card again ends its own session. Session boundaries
read the meter's import register (billing grade: never integrated power).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from firmware.auth import AuthDecision, Authorizer, id_tag_from_uid
from firmware.charging.connector import (
    SessionStarted,
    SessionStopped,
    Status,
    StatusChanged,
    StopReason,
)
from firmware.charging.controller import ChargingController, ControllerEvent
from firmware.metering import MeterSampler
from hal.clock import Clock
from hal.interfaces import CardReader, CardTap, DeviceError, IndicatorPattern, MeterReading, SigningMeter

log = logging.getLogger("firmware.session")


@dataclass
class SessionRecord:
    number: int
    id_tag: str
    started_at: datetime
    meter_start_wh: float | None
    stopped_at: datetime | None = None
    meter_stop_wh: float | None = None
    stop_reason: str | None = None
    max_current_a: float = 0.0
    #: The durable transaction this session is recorded as (set by the OCPP layer when present).
    transaction_ref: int | None = None
    reservation_id: int | None = None
    #: How the driver was authorized: "card (csms)", "remote start (local-list)", "free vend (free)", ...
    auth: str | None = None
    #: The meter's own signed begin/end records (OCMF) when it signs; forwarded untouched.
    signed_start: str | None = None
    signed_stop: str | None = None

    def energy_wh(self, register_wh: float | None = None) -> float | None:
        end = self.meter_stop_wh if self.meter_stop_wh is not None else register_wh
        if end is None or self.meter_start_wh is None:
            return None
        return max(0.0, end - self.meter_start_wh)

    def duration_s(self, now: datetime) -> float:
        return ((self.stopped_at or now) - self.started_at).total_seconds()

    def as_dict(self, register_wh: float | None, now: datetime) -> dict[str, Any]:
        d = asdict(self)
        d["started_at"] = self.started_at.isoformat()
        d["stopped_at"] = None if self.stopped_at is None else self.stopped_at.isoformat()
        energy = self.energy_wh(register_wh)
        d["energy_wh"] = None if energy is None else round(energy, 1)
        d["duration_s"] = round(self.duration_s(now), 1)
        return d


class SessionManager:
    def __init__(
        self,
        controller: ChargingController,
        authorizer: Authorizer,
        sampler: MeterSampler,
        clock: Clock,
        *,
        free_vend_id_tag: str | None = None,
        uid_byte_order: Literal["forward", "reverse"] = "forward",
        uid_case: Literal["upper", "lower"] = "upper",
    ) -> None:
        self.controller = controller
        self.authorizer = authorizer
        self.sampler = sampler
        self.clock = clock
        self.free_vend_id_tag = free_vend_id_tag
        self.uid_byte_order: Literal["forward", "reverse"] = uid_byte_order
        self.uid_case: Literal["upper", "lower"] = uid_case
        self.current: SessionRecord | None = None
        self.history: deque[SessionRecord] = deque(maxlen=100)
        self.last_decision: AuthDecision | None = None
        #: (via, decision source) of the authorization the next session starts with.
        self._authorized_by: str | None = None
        self._events: asyncio.Queue[ControllerEvent] = asyncio.Queue()
        self._finished_listeners: list[Callable[[SessionRecord], None]] = []
        self._started_listeners: list[Callable[[SessionRecord], None]] = []
        controller.add_listener(self._events.put_nowait)
        sampler.add_reading_listener(self.note_reading)

    def on_session_started(self, listener: Callable[[SessionRecord], None]) -> None:
        self._started_listeners.append(listener)

    def on_session_finished(self, listener: Callable[[SessionRecord], None]) -> None:
        self._finished_listeners.append(listener)

    # ---- authorization ---------------------------------------------------------------------
    async def present_id_tag(self, id_tag: str, via: str = "card") -> AuthDecision | None:
        """A driver presents ``id_tag``: start, or stop their own session. Returns the decision taken."""
        connector = self.controller.connector
        if connector.in_session or connector.authorized:
            if connector.id_tag is not None and connector.id_tag.casefold() == id_tag.casefold():
                log.info("%s %s: stopping its own session", via, id_tag)
                connector.request_stop(StopReason.LOCAL, f"{via} {id_tag} presented again")
                self.controller.wake()
                return None
            log.info("%s %s ignored: connector busy with %s", via, id_tag, connector.id_tag)
            self.controller.flash(IndicatorPattern.REJECTED)
            return None
        decision = await self.authorizer.authorize(id_tag)
        self.last_decision = decision
        log.info(
            "authorization %s for %s %s by %s (%s)",
            decision.status.value,
            via,
            id_tag,
            decision.source,
            decision.reason,
        )
        if decision.accepted and connector.authorize(id_tag):
            self._authorized_by = f"{via} ({decision.source})"
            self.controller.flash(IndicatorPattern.AUTHORIZED)
            self.controller.wake()
        elif decision.accepted:
            log.warning("%s %s accepted but connector is %s: not started", via, id_tag, connector.status.value)
            self.controller.flash(IndicatorPattern.REJECTED)
        else:
            self.controller.flash(IndicatorPattern.REJECTED)
        return decision

    def note_authorization(self, via: str, source: str) -> None:
        """An authorization granted outside :meth:`present_id_tag` (a remote start the CSMS vouches for)."""
        self._authorized_by = f"{via} ({source})"

    async def handle_tap(self, tap: CardTap) -> AuthDecision | None:
        try:
            id_tag = id_tag_from_uid(tap.uid, self.uid_byte_order, self.uid_case)
        except ValueError as exc:
            log.warning("card from %s ignored: %s", tap.reader, exc)
            self.controller.flash(IndicatorPattern.REJECTED)
            return None
        return await self.present_id_tag(id_tag, "card")

    async def run_reader(self, reader: CardReader, *, retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        """Consume taps forever; a failing reader raises the "reader" fault and is retried."""
        delay = retry_s
        while True:
            taps = reader.taps().__aiter__()
            try:
                first = asyncio.ensure_future(taps.__anext__())
                done, _ = await asyncio.wait({first}, timeout=1.0)
                if not done:
                    self._reader_healthy()
                    delay = retry_s
                tap = await first
                self._reader_healthy()
                await self._handle_tap_safely(tap)
                while True:
                    await self._handle_tap_safely(await taps.__anext__())
            except DeviceError as exc:
                if "reader" not in self.controller.faults:
                    log.error("card reader failed: %s; retrying", exc)
                self.controller.set_device_fault("reader", True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry_s)
            except StopAsyncIteration:
                log.warning("card reader stream ended; reopening")
                await asyncio.sleep(delay)

    async def _handle_tap_safely(self, tap: CardTap) -> None:
        """A failure while deciding on one card must not stop the reader for every later card."""
        try:
            await self.handle_tap(tap)
        except Exception:
            log.exception("card tap %s could not be handled", tap.uid.hex())
            self.controller.flash(IndicatorPattern.REJECTED)

    def _reader_healthy(self) -> None:
        self.controller.set_device_fault("reader", False)

    # ---- connector events ----------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self.handle_event(await self._events.get())

    async def drain(self) -> None:
        """Handle every event queued so far (tests and shutdown)."""
        while not self._events.empty():
            await self.handle_event(self._events.get_nowait())

    async def handle_event(self, event: ControllerEvent) -> None:
        if isinstance(event, SessionStarted):
            register = await self.sampler.register_wh()
            self.current = SessionRecord(
                event.session,
                event.id_tag,
                event.at,
                register,
                reservation_id=event.reservation_id,
                auth=self._authorized_by,
            )
            self._authorized_by = None
            self.current.signed_start = self._sign(lambda m: m.sign_begin(event.id_tag), "begin")
            log.info("session %d started for %s, meter %s Wh", event.session, event.id_tag, _wh(register))
            for listener in self._started_listeners:
                listener(self.current)
        elif isinstance(event, SessionStopped):
            register = await self.sampler.register_wh()
            record = self.current
            if record is None or record.number != event.session:
                record = SessionRecord(event.session, event.id_tag, event.at, None)
            record.stopped_at, record.meter_stop_wh, record.stop_reason = (
                event.at,
                register,
                event.reason.value,
            )
            if record.signed_start is not None:
                end = "P" if event.reason is StopReason.POWER_LOSS else "E"
                record.signed_stop = self._sign(lambda m: m.sign_end(reason=end), "end")
            self.current = None
            self.history.append(record)
            energy = record.energy_wh()
            log.info(
                "session %d stopped (%s%s): %s Wh in %.0f s",
                record.number,
                event.reason.value,
                f", {event.detail}" if event.detail else "",
                "?" if energy is None else f"{energy:.1f}",
                record.duration_s(event.at),
            )
            for listener in self._finished_listeners:
                listener(record)
        elif (
            isinstance(event, StatusChanged)
            and event.status is Status.PREPARING
            and self.free_vend_id_tag is not None
            and not self.controller.connector.authorized
            and self.controller.connector.ev_present()
        ):
            await self.present_id_tag(self.free_vend_id_tag, "free vend")

    def _sign(self, ask: Callable[[SigningMeter], str], which: str) -> str | None:
        """The meter's signed record, when it signs; a failure is logged and the session goes on unsigned."""
        meter = self.sampler.meter
        if not isinstance(meter, SigningMeter):
            return None
        try:
            return ask(meter)
        except (DeviceError, ValueError) as exc:
            log.warning("the meter did not sign the transaction %s: %s", which, exc)
            return None

    def note_reading(self, reading: MeterReading) -> None:
        if self.current is not None:
            drawn = max((i for i in reading.current_a if i is not None), default=0.0)
            self.current.max_current_a = max(self.current.max_current_a, drawn)

    def transaction_status(self) -> dict[str, Any] | None:
        record = self.current
        if record is None:
            return None
        latest = self.sampler.latest
        energy = record.energy_wh(None if latest is None else latest.energy_import_wh)
        return {
            "id": record.number,
            "id_tag": record.id_tag,
            "started_at": record.started_at.isoformat(),
            "energy_wh": None if energy is None else round(energy, 1),
            "cost": None,
        }


def _wh(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"
