"""Transactions as OCPP 1.6 reports them: Start/Stop, sampled and clock-aligned MeterValues, power loss.

Every message goes into the durable outbox; the service sends it. Energy is always the meter's import
register. Also the idTag verdicts that arrive with StartTransaction.conf (StopTransactionOnInvalidId,
MaxEnergyOnInvalidId).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from firmware.aio import wait_event
from firmware.auth import AuthStatus
from firmware.auth.ocpp import IdTagInfo
from firmware.charging.connector import StopReason
from firmware.charging.controller import ChargingController
from firmware.metering import MeterSampler
from firmware.ocpp.outbox import Outbox
from firmware.ocpp.v16.configuration import Configuration
from firmware.ocpp.v16.meter_values import iso, meter_value, transaction_meter_value
from firmware.session import SessionManager, SessionRecord
from hal.clock import Clock
from hal.interfaces import MeterReading

log = logging.getLogger("firmware.ocpp")

CONNECTOR: Final = 1


def next_boundary(now: datetime, interval_s: int) -> datetime:
    """The next instant after ``now`` that is a whole multiple of ``interval_s`` since 00:00 UTC."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (now - midnight).total_seconds()
    return midnight + timedelta(seconds=(int(elapsed // interval_s) + 1) * interval_s)


class TransactionReporter:
    def __init__(
        self,
        *,
        outbox: Outbox,
        configuration: Configuration,
        sessions: SessionManager,
        sampler: MeterSampler,
        controller: ChargingController,
        clock: Clock,
        kick: Callable[[], None],
    ) -> None:
        self.outbox = outbox
        self.configuration = configuration
        self.sessions = sessions
        self.sampler = sampler
        self.controller = controller
        self.clock = clock
        self.kick = kick
        #: Clock-aligned samples of the running transaction, for StopTxnAlignedData.
        self._aligned_for_stop: list[dict[str, Any]] = []
        #: The Transaction.Begin reading per StopTxnSampledData, kept for its StopTransaction (by transaction ref).
        self._begin_for_stop: dict[int, dict[str, Any]] = {}
        #: (transaction ref, register Wh at which to stop) after an idTag was found invalid (MaxEnergyOnInvalidId).
        self._energy_cap: tuple[int, float] | None = None
        self._ended_listeners: list[Callable[[int], None]] = []
        #: When a transaction a power cut interrupted really ended (the ledger's last record), if known.
        self.power_loss_time: Callable[[int], datetime | None] = lambda ref: None
        #: Set when the CSMS changes an interval: the loops re-plan at once instead of finishing the old wait.
        self._sample_interval_changed = asyncio.Event()
        self._aligned_interval_changed = asyncio.Event()
        configuration.subscribe(self._on_key_changed)
        sessions.on_session_started(self.on_session_started)
        sessions.on_session_finished(self.on_session_finished)

    def on_transaction_ended(self, listener: Callable[[int], None]) -> None:
        """``listener(ref)`` once a transaction is stopped, by its session or by power-loss recovery."""
        self._ended_listeners.append(listener)

    def _ended(self, ref: int) -> None:
        for listener in self._ended_listeners:
            try:
                listener(ref)
            except Exception:
                log.exception("transaction-ended listener failed for transaction %d", ref)

    def on_session_started(self, record: SessionRecord) -> None:
        self._aligned_for_stop = []
        meter_start = record.meter_start_wh or 0.0
        ref = self.outbox.begin_transaction(
            CONNECTOR, record.id_tag, meter_start, record.started_at, reservation_id=record.reservation_id
        )
        record.transaction_ref = ref
        payload: dict[str, Any] = {
            "connectorId": CONNECTOR,
            "idTag": record.id_tag,
            "meterStart": round(meter_start),
            "timestamp": iso(record.started_at),
        }
        if record.reservation_id is not None:
            payload["reservationId"] = record.reservation_id
        self.outbox.enqueue("StartTransaction", payload, transaction_ref=ref)
        # The readings at the start (Transaction.Begin), their register exactly meterStart, right after
        # StartTransaction; with a signing meter its signed begin record travels with them.
        latest = self.sampler.latest
        begin = transaction_meter_value(
            meter_start,
            latest,
            self.configuration.get_list("MeterValuesSampledData"),
            record.started_at,
            "Transaction.Begin",
            signed=record.signed_start,
            offered_a=self.controller.offered_a,
        )
        if begin is not None:
            self.outbox.enqueue(
                "MeterValues",
                {"connectorId": CONNECTOR, "transactionId": 0, "meterValue": [begin]},
                transaction_ref=ref,
            )
        for_stop = transaction_meter_value(
            meter_start,
            latest,
            self.configuration.get_list("StopTxnSampledData"),
            record.started_at,
            "Transaction.Begin",
        )
        if for_stop is not None:
            self._begin_for_stop[ref] = for_stop
        self.kick()

    def on_session_finished(self, record: SessionRecord) -> None:
        ref = record.transaction_ref
        if ref is None:
            return
        stopped = record.stopped_at or self.clock.now()
        meter_stop = record.meter_stop_wh if record.meter_stop_wh is not None else (record.meter_start_wh or 0.0)
        self.outbox.end_transaction(ref, meter_stop, stopped, record.stop_reason or "Other")
        self._enqueue_stop(
            ref,
            meter_stop,
            stopped,
            record.stop_reason or "Other",
            record.id_tag,
            signed_stop=record.signed_stop,
            meter_start=record.meter_start_wh or 0.0,
            started=record.started_at,
        )
        self._ended(ref)

    def _enqueue_stop(
        self,
        ref: int,
        meter_stop: float,
        stopped: datetime,
        reason: str,
        id_tag: str | None,
        *,
        signed_stop: str | None = None,
        meter_start: float = 0.0,
        started: datetime | None = None,
    ) -> None:
        """StopTransaction; its transactionData: Transaction.Begin, the aligned samples, Transaction.End."""
        payload: dict[str, Any] = {
            "transactionId": 0,
            "meterStop": round(meter_stop),
            "timestamp": iso(stopped),
            "reason": reason,
        }
        if id_tag:
            payload["idTag"] = id_tag
        measurands = self.configuration.get_list("StopTxnSampledData")
        begin = self._begin_for_stop.pop(ref, None)
        if begin is None and started is not None:
            begin = transaction_meter_value(meter_start, None, measurands, started, "Transaction.Begin")
        data: list[dict[str, Any]] = [begin] if begin is not None and measurands else []
        data += self._aligned_for_stop
        self._aligned_for_stop = []
        end = transaction_meter_value(
            meter_stop, self.sampler.latest, measurands, stopped, "Transaction.End", signed=signed_stop
        )
        if end is not None:
            data.append(end)
        if data:
            payload["transactionData"] = data
        self.outbox.enqueue("StopTransaction", payload, transaction_ref=ref)
        self.kick()

    async def recover_power_loss(self) -> None:
        """Transactions still open on disk were cut by a power loss: stop them with the meter's register."""
        open_transactions = self.outbox.open_transactions()
        register = await self.sampler.register_wh() if open_transactions else None
        for tx in open_transactions:
            meter_stop = tx.meter_start_wh
            if register is not None and register >= tx.meter_start_wh:
                meter_stop = register
            else:
                log.warning("meter register unavailable or behind the transaction start: meterStop = meterStart")
            # Stopped when the charger was last known to run (not now: the driver did not charge through the cut).
            now = self.clock.now()
            last_alive = self.power_loss_time(tx.ref)
            stopped = last_alive if last_alive is not None and tx.started_at <= last_alive <= now else now
            log.warning("transaction %s (%s) was cut by a power loss: stopping it at %s", tx.ref, tx.id_tag, stopped)
            self.outbox.end_transaction(tx.ref, meter_stop, stopped, "PowerLoss")
            self._enqueue_stop(
                tx.ref,
                meter_stop,
                stopped,
                "PowerLoss",
                tx.id_tag,
                meter_start=tx.meter_start_wh,
                started=tx.started_at,
            )
            self._ended(tx.ref)

    def sample_meter_values(
        self,
        *,
        context: str = "Sample.Periodic",
        key: str = "MeterValuesSampledData",
        at: datetime | None = None,
        always: bool = False,
    ) -> None:
        """Queue one MeterValues: in a transaction it carries the transactionId; otherwise only if ``always``."""
        record, latest = self.sessions.current, self.sampler.latest
        in_tx = record is not None and record.transaction_ref is not None
        if latest is None or not (in_tx or always):
            return
        value = meter_value(
            latest,
            self.configuration.get_list(key),
            at or self.clock.now(),
            context=context,
            offered_a=self.controller.offered_a,
        )
        if value is None:
            return
        payload: dict[str, Any] = {"connectorId": CONNECTOR, "meterValue": [value]}
        if in_tx and record is not None:
            payload["transactionId"] = 0
            self.outbox.enqueue("MeterValues", payload, transaction_ref=record.transaction_ref)
        else:
            self.outbox.enqueue("MeterValues", payload)
        self.kick()

    def _on_key_changed(self, key: str, value: object) -> None:
        if key == "MeterValueSampleInterval":
            self._sample_interval_changed.set()
        elif key == "ClockAlignedDataInterval":
            self._aligned_interval_changed.set()

    async def run_sampling(self) -> None:
        """Sampled MeterValues every MeterValueSampleInterval during a transaction (0 = off).

        A new interval from the CSMS applies at once (the next sample comes one new interval later).
        """
        while True:
            interval = self.configuration.get_int("MeterValueSampleInterval")
            self._sample_interval_changed.clear()
            if await wait_event(self._sample_interval_changed, interval if interval > 0 else 86400):
                continue
            if interval > 0:
                self.sample_meter_values()

    async def run_clock_aligned(self) -> None:
        """Clock-aligned MeterValues every ClockAlignedDataInterval, aligned to 00:00 UTC (0 = off)."""
        while True:
            interval = self.configuration.get_int("ClockAlignedDataInterval")
            self._aligned_interval_changed.clear()
            if interval <= 0:
                await wait_event(self._aligned_interval_changed, 86400)
                continue
            now = self.clock.now()
            boundary = next_boundary(now, interval)
            if await wait_event(self._aligned_interval_changed, max(0.0, (boundary - now).total_seconds())):
                continue
            self.clock_aligned_sample(boundary)

    def clock_aligned_sample(self, boundary: datetime) -> None:
        """One aligned reading: a MeterValues now, and kept for StopTransaction per StopTxnAlignedData."""
        self.sample_meter_values(context="Sample.Clock", key="MeterValuesAlignedData", at=boundary, always=True)
        stop_measurands = self.configuration.get_list("StopTxnAlignedData")
        latest = self.sampler.latest
        if stop_measurands and latest is not None and self.sessions.current is not None:
            value = meter_value(latest, stop_measurands, boundary, context="Sample.Clock")
            if value is not None:
                self._aligned_for_stop.append(value)

    def check_start_answer(self, ref: int | None, response: dict[str, Any]) -> None:
        info = IdTagInfo.from_wire(response.get("idTagInfo") or {})
        record = self.sessions.current
        if info.status is AuthStatus.ACCEPTED or record is None or record.transaction_ref != ref:
            return
        if self.configuration.get_bool("StopTransactionOnInvalidId"):
            log.warning("StartTransaction answered %s: stopping the transaction", info.status.value)
            self.controller.connector.request_stop(StopReason.DEAUTHORIZED, f"idTag {info.status.value}")
            self.controller.wake()
            return
        max_wh = self.configuration.get_int("MaxEnergyOnInvalidId")
        if max_wh > 0 and ref is not None:
            start = record.meter_start_wh or 0.0
            self._energy_cap = (ref, start + max_wh)
            log.warning("StartTransaction answered %s: charging on for at most %d Wh", info.status.value, max_wh)

    def on_meter_reading(self, reading: MeterReading) -> None:
        """MaxEnergyOnInvalidId: stop once an invalidated idTag has had its allowance."""
        cap, record = self._energy_cap, self.sessions.current
        if cap is None:
            return
        if record is None or record.transaction_ref != cap[0]:
            self._energy_cap = None
        elif reading.energy_import_wh >= cap[1]:
            self._energy_cap = None
            log.warning("MaxEnergyOnInvalidId reached: stopping the transaction")
            self.controller.connector.request_stop(StopReason.DEAUTHORIZED, "MaxEnergyOnInvalidId reached")
            self.controller.wake()
