"""The session ledger: the billing record of every session, in the store, whether or not a CSMS is configured.

A row is inserted when a session starts and rewritten while it runs (every ``update_every_s`` and on the stop),
each time inside one SQLite transaction (WAL, synchronous=FULL): a kill -9 or a power cut loses at most the
last interval. A row found open at start-up was cut by a power loss: it is closed with reason PowerLoss at the time
of its last record, its meter stop from the register as it reads now (or the last stored reading, if the register
reads less), and its cost computed from the start and that stop.

Energy always comes from the meter's import register (meter stop minus meter start), never from integrated
power. The cost is the local tariff's (``cost_source = "local"``) until the CSMS sends its own final cost
(California Pricing FinalCost), which replaces it (``"backend"``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from firmware.payment.cost import Cost, CostMeter, Sample
from firmware.payment.tariff import Tariff, register_wh
from firmware.session import SessionRecord
from firmware.store import Store
from hal.clock import Clock
from hal.interfaces import MeterReading

log = logging.getLogger("firmware.ledger")


class SessionLedger:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        tariff: Tariff | None,
        *,
        connector_id: int = 1,
        update_every_s: float = 10.0,
        evse_suspended: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.clock = clock
        #: None or a free tariff: sessions carry no cost.
        self.tariff = tariff if tariff is not None and not tariff.free else None
        self.connector_id = connector_id
        self.update_every_s = update_every_s
        self.evse_suspended = evse_suspended
        self._row: int | None = None
        self._record: SessionRecord | None = None
        self._meter: CostMeter | None = None
        self._last_register: float | None = None
        self._last_write = 0.0
        self._bad_sample_logged = False

    # ---- start-up -------------------------------------------------------------------------------------
    def has_open_sessions(self) -> bool:
        """A row without a stop: only then does start-up need the meter's register (:meth:`recover`)."""
        return self.store.conn.execute("SELECT 1 FROM sessions WHERE stopped_at IS NULL LIMIT 1").fetchone() is not None

    def recover(self, register_now_wh: float | None) -> int:
        """Close the rows a power loss left open; returns how many."""
        rows = self.store.conn.execute(
            "SELECT id, started_at, updated_at, meter_start_wh, meter_last_wh FROM sessions WHERE stopped_at IS NULL"
        ).fetchall()
        for row_id, started_at, updated_at, meter_start, meter_last in rows:
            # The register as it reads now, unless it reads below the last stored value (a meter that was replaced
            # or reset while the power was off): then the last stored reading.
            stop_wh = meter_last
            if register_now_wh is not None and (meter_last is None or register_now_wh >= meter_last):
                stop_wh = register_now_wh
            stopped = datetime.fromisoformat(updated_at)
            started = datetime.fromisoformat(started_at)
            cost = None
            if self.tariff is not None and meter_start is not None and stop_wh is not None and stop_wh >= meter_start:
                try:
                    meter = CostMeter(self.tariff, Sample(started, register_wh(meter_start)))
                    cost = meter.finish(Sample(max(stopped, started), register_wh(stop_wh)))
                except ValueError as exc:
                    log.warning("ledger row %d: cost not recomputed after the power loss: %s", row_id, exc)
            self._write(
                row_id,
                stopped_at=stopped.isoformat(),
                updated_at=stopped.isoformat(),
                meter_stop_wh=stop_wh,
                meter_last_wh=stop_wh,
                energy_wh=None if stop_wh is None or meter_start is None else max(0.0, stop_wh - meter_start),
                duration_s=max(0.0, (stopped - started).total_seconds()),
                stop_reason="PowerLoss",
                **self._cost_columns(cost),
            )
            log.warning("ledger: session %d was cut by a power loss; closed at its last record (%s)", row_id, stopped)
        return len(rows)

    def power_loss_stop(self, transaction_ref: int) -> datetime | None:
        """When :meth:`recover` closed the session of this OCPP transaction: its last record before the cut.

        The OCPP recovery stops the transaction at the same moment, so the CSMS and the ledger bill the same time.
        """
        row = self.store.conn.execute(
            "SELECT stopped_at FROM sessions WHERE transaction_ref = ? AND stop_reason = 'PowerLoss'"
            " ORDER BY id DESC LIMIT 1",
            (transaction_ref,),
        ).fetchone()
        return None if row is None or row[0] is None else datetime.fromisoformat(row[0])

    # ---- the running session ---------------------------------------------------------------------------
    def on_session_started(self, record: SessionRecord) -> None:
        now = record.started_at
        start_wh = record.meter_start_wh
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO sessions(connector_id, id_tag, auth, transaction_ref, started_at, updated_at,"
                " meter_start_wh, meter_last_wh, energy_wh, duration_s, currency, tariff, signed_start)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
                (
                    self.connector_id,
                    record.id_tag,
                    record.auth,
                    record.transaction_ref,
                    now.isoformat(),
                    now.isoformat(),
                    start_wh,
                    start_wh,
                    None if self.tariff is None else self.tariff.currency,
                    None if self.tariff is None else self.tariff.describe(),
                    record.signed_start,
                ),
            )
        self._row, self._record = cursor.lastrowid, record
        self._last_register = start_wh
        self._meter = None
        if self.tariff is not None and start_wh is not None:
            self._meter = CostMeter(self.tariff, Sample(now, register_wh(start_wh)))
        self._last_write = self.clock.monotonic()
        log.info("ledger: session %d recorded for %s", self._row, record.id_tag)

    def on_reading(self, reading: MeterReading) -> None:
        if self._row is None or self._record is None:
            return
        now = self.clock.now()
        self._last_register = reading.energy_import_wh
        if self._meter is not None:
            try:
                self._meter.add(Sample.from_reading(now, reading, evse_suspended=self.evse_suspended()))
            except (ValueError, TypeError) as exc:  # a register that went back or a clock step: skip the sample
                if not self._bad_sample_logged:
                    log.warning("ledger: meter sample skipped for the cost: %s", exc)
                    self._bad_sample_logged = True
        if self.clock.monotonic() - self._last_write >= self.update_every_s:
            self._write_running(now)

    def _write_running(self, now: datetime) -> None:
        record, row = self._record, self._row
        if record is None or row is None:
            return
        start = record.meter_start_wh
        last = self._last_register
        cost = self._meter.running(now) if self._meter is not None else None
        self._write(
            row,
            updated_at=now.isoformat(),
            meter_last_wh=last,
            energy_wh=None if start is None or last is None else max(0.0, last - start),
            duration_s=max(0.0, (now - record.started_at).total_seconds()),
            transaction_ref=record.transaction_ref,
            **self._cost_columns(cost),
        )
        self._last_write = self.clock.monotonic()

    def on_session_finished(self, record: SessionRecord) -> None:
        row = self._row if self._record is record else None
        if row is None:
            log.warning("ledger: session %d finished without a ledger row", record.number)
            return
        stopped = record.stopped_at or self.clock.now()
        cost = None
        if self._meter is not None and record.meter_stop_wh is not None:
            try:
                cost = self._meter.finish(Sample(max(stopped, self._meter.last.at), register_wh(record.meter_stop_wh)))
            except ValueError as exc:
                log.warning("ledger: final sample refused (%s); cost at the last good sample", exc)
                cost = self._meter.finish()
        energy = record.energy_wh()
        self._write(
            row,
            stopped_at=stopped.isoformat(),
            updated_at=stopped.isoformat(),
            meter_stop_wh=record.meter_stop_wh,
            meter_last_wh=record.meter_stop_wh,
            energy_wh=energy,
            duration_s=record.duration_s(stopped),
            stop_reason=record.stop_reason,
            transaction_ref=record.transaction_ref,
            signed_stop=record.signed_stop,
            **self._cost_columns(cost),
        )
        self._row = self._record = self._meter = None

    # ---- what others ask -------------------------------------------------------------------------------
    def running_cost(self) -> Cost | None:
        """The local estimate of the running session's cost now, or None (no session, no tariff)."""
        if self._meter is None:
            return None
        return self._meter.running(max(self.clock.now(), self._meter.last.at))

    def set_backend_cost(self, transaction_ref: int, cost: Decimal, detail: dict[str, Any] | None = None) -> bool:
        """The CSMS's final cost of a transaction (California Pricing FinalCost) replaces the local estimate."""
        row = self.store.conn.execute(
            "SELECT id FROM sessions WHERE transaction_ref = ? ORDER BY id DESC LIMIT 1", (transaction_ref,)
        ).fetchone()
        if row is None:
            log.warning("ledger: a final cost for transaction ref %d, which has no ledger row", transaction_ref)
            return False
        self._write(
            int(row[0]),
            cost=str(cost),
            cost_source="backend",
            cost_detail=None if detail is None else json.dumps(detail, sort_keys=True),
        )
        return True

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _cost_columns(self, cost: Cost | None) -> dict[str, Any]:
        if cost is None:
            return {}
        return {
            "cost": str(cost.total),
            "currency": cost.currency,
            "cost_source": "local",
            "cost_detail": json.dumps(cost.as_dict(), sort_keys=True),
        }

    def _write(self, row: int, **columns: Any) -> None:
        names = sorted(columns)
        assignments = ", ".join(f"{name} = ?" for name in names)
        with self.store.transaction() as conn:
            conn.execute(f"UPDATE sessions SET {assignments} WHERE id = ?", [*(columns[n] for n in names), row])
