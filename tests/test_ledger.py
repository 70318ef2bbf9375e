"""The session ledger: every session on disk from its first second, billing-grade energy, exact costs, a power cut
mid-session, and summaries that equal the sum of their sessions."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_support import record_session

from firmware import cli
from firmware.apiclient import ApiClient
from firmware.ledger import SessionLedger
from firmware.payment.tariff import Tariff
from firmware.session import SessionRecord
from firmware.store import Store
from hal.clock import FakeClock
from hal.interfaces import MeterReading

T0 = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
TARIFF = Tariff(currency="EUR", energy_per_kwh=Decimal("0.39"), session_fee=Decimal("0.50"))
EVSE = [sys.executable, "-m", "firmware"]


def reading(register_wh: float, amps: float = 16.0) -> MeterReading:
    return MeterReading(
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(amps, amps, amps),
        power_w=(amps * 230.0, amps * 230.0, amps * 230.0),
        total_power_w=3 * amps * 230.0,
        energy_import_wh=register_wh,
    )


def rows(db: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY id")]
    finally:
        conn.close()


def test_a_session_is_on_disk_from_its_start_and_updated_while_it_runs(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with Store(tmp_path / "evse.db") as store:
        ledger = SessionLedger(store, clock, TARIFF, update_every_s=10.0)
        record = SessionRecord(1, "04A1B2C3", T0, 1000.0, auth="card (csms)")
        ledger.on_session_started(record)
        (row,) = rows(tmp_path / "evse.db")
        assert (row["id_tag"], row["auth"], row["meter_start_wh"], row["stopped_at"]) == (
            "04A1B2C3",
            "card (csms)",
            1000.0,
            None,
        )
        assert row["energy_wh"] == 0 and row["tariff"] == TARIFF.describe()
        clock.advance(5.0)
        ledger.on_reading(reading(1500.0))  # 5 s later: not yet rewritten
        assert rows(tmp_path / "evse.db")[0]["meter_last_wh"] == 1000.0
        clock.advance(5.0)
        ledger.on_reading(reading(2000.0))  # 10 s: rewritten
        row = rows(tmp_path / "evse.db")[0]
        assert (row["meter_last_wh"], row["energy_wh"], row["duration_s"]) == (2000.0, 1000.0, 10.0)
        assert (row["cost"], row["currency"], row["cost_source"]) == ("0.89", "EUR", "local")  # 1 kWh x 0.39 + 0.50
        running = ledger.running_cost()
        assert running is not None and running.total == Decimal("0.89")
        clock.advance(20.0)
        record.stopped_at, record.meter_stop_wh, record.stop_reason = clock.now(), 3234.0, "EVDisconnected"
        ledger.on_session_finished(record)
    row = rows(tmp_path / "evse.db")[0]
    # Energy from the register (3234 - 1000), never integrated power; cost 2.234 x 0.39 + 0.50 = 1.37126 -> 1.37.
    assert (row["meter_stop_wh"], row["energy_wh"], row["duration_s"], row["stop_reason"]) == (
        3234.0,
        2234.0,
        30.0,
        "EVDisconnected",
    )
    assert row["cost"] == "1.37" and json.loads(str(row["cost_detail"]))["final"] is True
    assert ledger.running_cost() is None


def test_no_tariff_no_cost_but_still_a_ledger(tmp_path: Path) -> None:
    with Store(tmp_path / "evse.db") as store:
        record_session(store, "FREEVEND", T0, 0.0, stopped_at=T0 + timedelta(hours=1), meter_stop_wh=7400.0)
        record_session(store, "X", T0, 0.0, tariff=Tariff(), stopped_at=T0, meter_stop_wh=0.0)  # a free tariff
    first, second = rows(tmp_path / "evse.db")
    assert first["energy_wh"] == 7400.0 and first["cost"] is None and first["currency"] is None
    assert second["cost"] is None


def test_the_backend_final_cost_replaces_the_local_estimate(tmp_path: Path) -> None:
    from firmware.ocpp.outbox import Outbox

    with Store(tmp_path / "evse.db") as store:
        outbox = Outbox(store, wall=lambda: 0.0, attempts=lambda: 3, retry_interval=lambda: 60.0)
        ref = outbox.begin_transaction(1, "APP1", 0.0, T0)
        with store.transaction() as conn:
            conn.execute("UPDATE transactions SET transaction_id = 77 WHERE ref = ?", (ref,))
        record_session(
            store, "APP1", T0, 0.0, stopped_at=T0 + timedelta(minutes=30), meter_stop_wh=5000.0,
            transaction_ref=ref, tariff=TARIFF,
        )  # fmt: skip
        ledger = SessionLedger(store, FakeClock(T0), TARIFF)
        assert not ledger.set_backend_cost(ref + 1, Decimal("9.99"))
        assert ledger.set_backend_cost(ref, Decimal("2.4150"), {"priceText": "0.45/kWh"})
    row = rows(tmp_path / "evse.db")[0]
    assert (row["cost"], row["cost_source"]) == ("2.4150", "backend")


def test_recovery_closes_a_session_a_power_cut_left_open(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with Store(tmp_path / "evse.db") as store:
        ledger = SessionLedger(store, clock, TARIFF, update_every_s=1.0)
        ledger.on_session_started(SessionRecord(1, "04A1B2C3", T0, 1000.0))
        clock.advance(60.0)
        ledger.on_reading(reading(2000.0))
    # ... the power goes; at the next start the register reads 2100 Wh (the last second's energy was delivered).
    with Store(tmp_path / "evse.db") as store:
        assert SessionLedger(store, FakeClock(T0 + timedelta(hours=3)), TARIFF).recover(2100.0) == 1
        assert SessionLedger(store, FakeClock(T0), TARIFF).recover(2100.0) == 0  # nothing open any more
    row = rows(tmp_path / "evse.db")[0]
    assert row["stop_reason"] == "PowerLoss"
    assert row["stopped_at"] == (T0 + timedelta(seconds=60)).isoformat()  # its last record, not the restart
    assert (row["meter_stop_wh"], row["energy_wh"]) == (2100.0, 1100.0)
    assert row["cost"] == "0.93"  # 1.1 kWh x 0.39 + 0.50 = 0.929


def test_recovery_with_a_meter_that_reads_less_keeps_the_last_stored_reading(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with Store(tmp_path / "evse.db") as store:
        ledger = SessionLedger(store, clock, None, update_every_s=1.0)
        ledger.on_session_started(SessionRecord(1, "T", T0, 5000.0))
        clock.advance(2.0)
        ledger.on_reading(reading(5600.0))
        ledger.recover(12.0)  # a replaced meter
    row = rows(tmp_path / "evse.db")[0]
    assert (row["meter_stop_wh"], row["energy_wh"], row["stop_reason"]) == (5600.0, 600.0, "PowerLoss")


# ---- summary totals equal the sum of their sessions ------------------------------------------------------
_session = st.tuples(
    st.sampled_from(["04A1B2C3", "DEADBEEF", "APPUSER1"]),
    st.integers(min_value=0, max_value=30 * 24 * 3600),  # start offset (s)
    st.integers(min_value=0, max_value=80_000),  # energy (Wh)
    st.integers(min_value=60, max_value=12 * 3600),  # duration (s)
    st.booleans(),  # still running
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_session, max_size=12), st.integers(min_value=0, max_value=30), st.integers(min_value=1, max_value=31))
def test_summary_totals_equal_the_sum_of_their_sessions(
    sessions: list[tuple[str, int, int, int, bool]], from_day: int, days: int
) -> None:
    work = Path(tempfile.mkdtemp(prefix="evse-ledger-", dir="/tmp"))
    config = work / "c.toml"
    config.write_text(f'[store]\ndir = "{work}"\n')
    month = datetime(2026, 11, 1, tzinfo=UTC)
    with Store(work / "evse.db") as store:
        for tag, offset, wh, duration, running in sessions:
            start = month + timedelta(seconds=offset)
            stop = None if running else start + timedelta(seconds=duration)
            record_session(
                store, tag, start, 100_000.0, stopped_at=stop, meter_stop_wh=None if running else 100_000.0 + wh,
                reason=None if running else "Local", tariff=TARIFF,
            )  # fmt: skip
    since = month + timedelta(days=from_day)
    until = since + timedelta(days=days)
    argv = ["sessions", "--config", str(config), "--from", since.isoformat(), "--to", until.isoformat()]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*argv, "--summary", "--json"]) == 0
    *cards, total = json.loads(out.getvalue())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*argv, "--json"]) == 0
    listed = json.loads(out.getvalue())
    finished = [r for r in listed if not r["running"]]
    assert total["sessions"] == len(listed) == sum(c["sessions"] for c in cards)
    assert total["running"] == len(listed) - len(finished)
    exact_revenue = sum((Decimal(r["cost"]) for r in finished), Decimal(0))
    assert Decimal(total["revenue"].get("EUR", "0")) == exact_revenue
    assert sum((Decimal(c["revenue"].get("EUR", "0")) for c in cards), Decimal(0)) == exact_revenue
    exact_wh = sum((Decimal(repr(r["energy_wh"])) for r in finished), Decimal(0))
    assert Decimal(total["energy_kwh"]) == (exact_wh / 1000).quantize(Decimal("0.001"), rounding="ROUND_HALF_UP")
    for card in cards:
        mine = [r for r in finished if r["id_tag"] == card["id_tag"]]
        assert Decimal(card["revenue"].get("EUR", "0")) == sum((Decimal(r["cost"]) for r in mine), Decimal(0))
    # Every listed session started inside the period.
    for r in listed:
        assert since <= datetime.fromisoformat(r["started_at"]) < until


def test_summary_and_csv_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\ndir = "{tmp_path}"\n')
    with Store(tmp_path / "evse.db") as store:
        day = datetime(2026, 11, 26, 18, 0, tzinfo=UTC)
        record_session(store, "04A1B2C3", day, 0.0, stopped_at=day + timedelta(hours=2), meter_stop_wh=11340.5,
                       reason="EVDisconnected", tariff=TARIFF)  # fmt: skip
        record_session(store, "APPUSER1", day + timedelta(hours=3), 11340.5, stopped_at=day + timedelta(hours=4),
                       meter_stop_wh=21340.5, reason="Remote", tariff=TARIFF, auth="remote start (csms)")  # fmt: skip
        record_session(store, "04A1B2C3", day + timedelta(days=1), 21340.5, tariff=TARIFF)  # running, next day
    assert (
        cli.main(["sessions", "--config", str(config), "--summary", "--from", "2026-11-26", "--to", "2026-11-26"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "sessions started from 2026-11-26T00:00:00+00:00 to 2026-11-27T00:00:00+00:00",
        "CARD      SESSIONS      ENERGY  REVENUE",
        "04A1B2C3         1  11.341 kWh  4.92 EUR",
        "APPUSER1         1  10.000 kWh  4.40 EUR",
        "--------  --------  ----------  --------",
        "total            2  21.341 kWh  9.32 EUR",
    ]
    assert cli.main(["sessions", "--config", str(config), "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    assert {"id", "id_tag", "auth", "meter_start_wh", "meter_stop_wh", "energy_wh", "cost", "currency"} <= set(header)
    assert len(lines) == 4 and lines[2].split(",")[header.index("auth")] == "remote start (csms)"
    assert cli.main(["sessions", "--config", str(config), "--from", "2026-11-27", "--to", "2026-11-26"]) == 2
    assert "--to is not after --from" in capsys.readouterr().err
    assert cli.main(["sessions", "--config", str(config), "--from", "yesterday-ish"]) == 2


# ---- kill -9 mid-session ----------------------------------------------------------------------------------
def _start_daemon(config: Path, sock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*EVSE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def test_the_ledger_survives_kill_9_mid_session(tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="evse-k9-", dir="/tmp"))
    sock = work / "control.sock"
    config = work / "config.toml"
    config.write_text(
        f'[hal]\nbackend = "sim"\n[store]\ndir = "{work}"\nledger_interval_s = 1\n[control]\nsocket = "{sock}"\n'
        '[auth]\nmode = "free"\n[tariff]\nenergy_per_kwh = "0.39"\nsession_fee = "0.50"\n'
    )
    proc = _start_daemon(config, sock)
    try:
        assert cli.main(["sim", "plug", "--socket", str(sock)]) == 0
        deadline = time.monotonic() + 20
        row: dict[str, object] = {}
        while True:  # charging, and the ledger row rewritten with some energy and its cost
            assert time.monotonic() < deadline, row
            got = rows(work / "evse.db") if (work / "evse.db").exists() else []
            row = got[0] if got else {}
            if isinstance(row.get("energy_wh"), float) and float(row["energy_wh"]) > 0 and row.get("cost"):  # type: ignore[arg-type]
                break
            time.sleep(0.1)
        status = ApiClient(str(sock)).request("status")
        assert status["transaction"]["cost"]["source"] == "local"
        assert status["payment"]["tariff"] is not None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    (cut,) = rows(work / "evse.db")
    assert cut["stopped_at"] is None and cut["id_tag"] == "FREEVEND"
    energy_at_cut = float(cut["energy_wh"])  # type: ignore[arg-type]

    sock.unlink(missing_ok=True)
    proc = _start_daemon(config, sock)  # the next boot closes it
    try:
        deadline = time.monotonic() + 10
        while rows(work / "evse.db")[0]["stopped_at"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    (closed, *later) = rows(work / "evse.db")
    assert closed["stop_reason"] == "PowerLoss" and closed["stopped_at"] == cut["updated_at"]
    assert float(closed["energy_wh"]) >= energy_at_cut > 0  # type: ignore[arg-type]
    assert Decimal(str(closed["cost"])) >= Decimal(str(cut["cost"]))
    # The EV is still plugged in after the restart (simulated), so free vend starts a new session: a new row.
    assert all(r["id"] != closed["id"] for r in later)


# ---- ad-hoc payment link -----------------------------------------------------------------------------------
def test_status_carries_the_ad_hoc_payment_link(tmp_path: Path) -> None:
    from dataclasses import replace

    from firmware.app import ChargePointApp
    from firmware.config import PaymentSettings, Settings

    base = Settings()
    settings = replace(
        base,
        charger=replace(base.charger, id="CP-9"),
        hal=replace(base.hal, backend="sim"),
        store=replace(base.store, dir=str(tmp_path)),
        control=replace(base.control, socket=str(tmp_path / "c.sock")),
        payment=PaymentSettings(adhoc_url="https://pay.example.com/{charger_id}/{connector_id}?src=qr"),
    )
    app = ChargePointApp(settings)
    try:
        payment = app.status()["payment"]
    finally:
        app.store.close()
    assert payment == {"adhoc_url": "https://pay.example.com/CP-9/1?src=qr", "tariff": None, "last_authorization": None}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://pay.example.com/{station}", "unknown placeholder {station}"),
        ("ftp://pay.example.com/{charger_id}", "must be an http:// or https:// URL"),
        ("https://pay.example.com/{charger_id", "is not a valid template"),
    ],
)
def test_a_bad_payment_link_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    from firmware.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text(f'[payment]\nadhoc_url = "{value}"\n[tariff]\nenergy_per_kwh = 0.39\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = info.value.errors
    assert any(line.startswith("payment.adhoc_url:") and message in line for line in lines), lines
    assert any(line.startswith("tariff.energy_per_kwh:") for line in lines), lines  # a float price is refused
