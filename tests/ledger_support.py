"""Ledger rows written the way the daemon writes them (firmware.ledger.SessionLedger), for read-side tests."""

from __future__ import annotations

from datetime import datetime

from firmware.ledger import SessionLedger
from firmware.payment.tariff import Tariff
from firmware.session import SessionRecord
from firmware.store import Store
from hal.clock import FakeClock


def record_session(
    store: Store,
    id_tag: str,
    started_at: datetime,
    meter_start_wh: float,
    *,
    stopped_at: datetime | None = None,
    meter_stop_wh: float | None = None,
    reason: str | None = None,
    transaction_ref: int | None = None,
    tariff: Tariff | None = None,
    auth: str | None = "card (csms)",
) -> None:
    """One session through the real ledger writer: started, and stopped when ``stopped_at`` is given."""
    clock = FakeClock(started_at)
    ledger = SessionLedger(store, clock, tariff)
    record = SessionRecord(1, id_tag, started_at, meter_start_wh, transaction_ref=transaction_ref, auth=auth)
    ledger.on_session_started(record)
    if stopped_at is not None:
        record.stopped_at, record.meter_stop_wh, record.stop_reason = stopped_at, meter_stop_wh, reason
        ledger.on_session_finished(record)
