"""``evse sessions`` and ``evse diag``: straight from the store directory, no daemon."""

from __future__ import annotations

import json
import re
import tarfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from ledger_support import record_session

from firmware import cli
from firmware.ocpp.outbox import Outbox
from firmware.payment.tariff import Tariff
from firmware.store import Store

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
KEY = "AKEY-0f1e2d3c4b5a6978"
#: 0.40 EUR/kWh and a 1.00 EUR session fee.
TARIFF = Tariff(currency="EUR", energy_per_kwh=Decimal("0.40"), session_fee=Decimal("1.00"))


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVSE_CONFIG", raising=False)
    store = tmp_path / "store"
    path = tmp_path / "evse.toml"
    path.write_text(
        f'[charger]\nid = "CP-CLI-1"\n[store]\ndir = "{store}"\n'
        f'[ocpp]\nurl = "ws://127.0.0.1:9/ocpp"\nsecurity_profile = 1\nauthorization_key = "{KEY}"\n'
    )
    return path


@pytest.fixture
def ledger(config: Path) -> Path:
    """Three sessions: two finished (one with a CSMS transaction id), the newest still running."""
    store_dir = config.parent / "store"
    with Store(store_dir / "evse.db") as store:
        outbox = Outbox(store, wall=lambda: 0.0, attempts=lambda: 3, retry_interval=lambda: 60.0)
        t1, t2 = datetime(2026, 11, 26, 18, 2, 11, tzinfo=UTC), datetime(2026, 11, 26, 20, 16, 14, tzinfo=UTC)
        first = outbox.begin_transaction(1, "04A1B2C3", 12500.0, t1)
        outbox.end_transaction(first, 23840.5, t2, "EVDisconnected")
        record_session(
            store, "04A1B2C3", t1, 12500.0, stopped_at=t2, meter_stop_wh=23840.5, reason="EVDisconnected",
            transaction_ref=first, tariff=TARIFF,
        )  # fmt: skip
        t3, t4 = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC), datetime(2026, 11, 27, 6, 0, 42, tzinfo=UTC)
        second = outbox.begin_transaction(1, "APPUSER1", 23840.5, t3)
        outbox.end_transaction(second, 24000.5, t4, "Remote")
        record_session(
            store, "APPUSER1", t3, 23840.5, stopped_at=t4, meter_stop_wh=24000.5, reason="Remote",
            transaction_ref=second, tariff=TARIFF, auth="remote start (csms)",
        )  # fmt: skip
        t5 = NOW - timedelta(minutes=75, seconds=30)
        third = outbox.begin_transaction(1, "04A1B2C3", 24000.5, t5)
        record_session(store, "04A1B2C3", t5, 24000.5, transaction_ref=third, tariff=TARIFF)
        with store.transaction() as conn:
            conn.execute("UPDATE transactions SET transaction_id = 41 WHERE ref = ?", (first,))
    (store_dir / "evse.log").write_text(
        "2026-11-27T07:00:00.000+00:00 INFO firmware.app: started\n"
        "2026-11-27T09:55:00.000+00:00 INFO firmware.charging: state B -> C\n"
    )
    return store_dir


@pytest.fixture(autouse=True)
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_utcnow", lambda: NOW)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sessions_newest_first(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "sessions", "--config", str(config))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "REF  TX  IDTAG     START                 STOP                  DURATION      ENERGY      COST  REASON",
        "  3   -  04A1B2C3  2026-11-27 08:44:30Z  running                  1h15m   0.000 kWh         -  -",
        "  2   -  APPUSER1  2026-11-27 06:00:00Z  2026-11-27 06:00:42Z       42s   0.160 kWh  1.06 EUR  Remote",
        "  1  41  04A1B2C3  2026-11-26 18:02:11Z  2026-11-26 20:16:14Z     2h14m  11.341 kWh  5.54 EUR  EVDisconnected",
    ]


def test_sessions_limit(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(config), "sessions", "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["REF", "3", "2"]


def test_sessions_json(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sessions", "--json", "--config", str(config))
    assert code == 0
    rows = json.loads(out)
    assert [r["ref"] for r in rows] == [3, 2, 1]
    assert rows[0]["running"] is True and rows[0]["stopped_at"] is None and rows[0]["energy_kwh"] == 0.0
    assert rows[0]["duration_s"] == 4530.0
    first = rows[2]
    assert {k: first[k] for k in ("ref", "id", "connector_id", "id_tag", "transaction_id", "auth")} == {
        "ref": 1,
        "id": 1,
        "connector_id": 1,
        "id_tag": "04A1B2C3",
        "transaction_id": 41,
        "auth": "card (csms)",
    }
    assert (first["meter_start_wh"], first["meter_stop_wh"], first["energy_wh"]) == (12500.0, 23840.5, 11340.5)
    assert (first["started_at"], first["stopped_at"]) == ("2026-11-26T18:02:11+00:00", "2026-11-26T20:16:14+00:00")
    assert (first["stop_reason"], first["running"], first["duration_s"], first["energy_kwh"]) == (
        "EVDisconnected",
        False,
        8043.0,
        11.341,
    )
    # Money as exact decimal strings: 11.3405 kWh x 0.40 + 1.00 = 5.5362 -> 5.54 (half-up, once).
    assert (first["cost"], first["currency"], first["cost_source"]) == ("5.54", "EUR", "local")
    assert json.loads(first["cost_detail"])["energy"] == "4.54"


def test_sessions_shows_later_ledger_columns_in_json(
    ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(ledger / "evse.db") as store, store.transaction() as conn:
        conn.execute("ALTER TABLE sessions ADD COLUMN vat_rate TEXT NULL")
        conn.execute("UPDATE sessions SET vat_rate = '0.19' WHERE id = 1")
    code, out, _ = run(capsys, "sessions", "--json", "--limit", "3", "--config", str(config))
    assert code == 0 and json.loads(out)[2]["vat_rate"] == "0.19"
    code, out, _ = run(capsys, "sessions", "--config", str(config))
    assert code == 0 and len(out.splitlines()) == 4  # the table keeps its columns


def test_sessions_while_the_daemon_writes(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A writer holding the database lock (uncommitted) neither blocks nor shows through."""
    with Store(ledger / "evse.db") as store, store.transaction() as conn:
        conn.execute("INSERT INTO sessions(connector_id, id_tag, started_at, updated_at) VALUES(1, 'NOTYET', 'x', 'x')")
        code, out, _ = run(capsys, "sessions", "--config", str(config))
    assert code == 0 and "NOTYET" not in out and len(out.splitlines()) == 4


def test_sessions_empty_ledger(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Store(config.parent / "store" / "evse.db").close()
    code, out, err = run(capsys, "sessions", "--config", str(config))
    assert (code, out, err) == (0, f"no sessions in {config.parent / 'store' / 'evse.db'}\n", "")
    code, out, _ = run(capsys, "sessions", "--json", "--config", str(config))
    assert (code, out) == (0, "[]\n")


def test_sessions_without_a_store(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "sessions", "--config", str(config))
    assert (code, out) == (1, "")
    assert err == f"evse sessions: no store file at {config.parent / 'store' / 'evse.db'}\n"


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_sessions_bad_limit_is_a_usage_error(config: Path, limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "sessions", "--limit", limit, "--config", str(config))
    assert code == 2 and "--limit" in err


def test_diag_writes_the_bundle(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = config.parent / "out"
    out_dir.mkdir()
    code, out, err = run(capsys, "diag", "--output", str(out_dir), "--no-journal", "--config", str(config))
    assert (code, err) == (0, "")
    match = re.fullmatch(r"(\S+) \((\d+) bytes, (\d+) files\)\n", out)
    assert match, out
    path = Path(match[1])
    assert path.parent == out_dir and re.fullmatch(r"CP-CLI-1-diagnostics-\d{8}T\d{6}Z\.tar\.gz", path.name)
    assert path.stat().st_size == int(match[2])
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames()]
        assert len(names) == int(match[3])
        assert set(names) == {
            "manifest.json",
            "logs/evse.log",
            "config.json",
            "sessions.csv",
            "status.json",
            "versions.json",
        }
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            assert handle is not None and KEY.encode() not in handle.read()
    assert list(out_dir.iterdir()) == [path]


def test_diag_since_filters_the_logs(ledger: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diag", "--since", "2026-11-27T09:00:00+00:00", "--no-journal", "--config", str(config))
    assert code == 0
    path = Path(out.split(" ", 1)[0])
    assert path.parent == config.parent  # the default output directory is the current one
    with tarfile.open(path) as tar:
        log = next(m for m in tar.getmembers() if m.name.endswith("logs/evse.log"))
        handle = tar.extractfile(log)
        assert handle is not None
        assert handle.read().decode() == "2026-11-27T09:55:00.000+00:00 INFO firmware.charging: state B -> C\n"


def test_diag_notes_what_is_missing(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diag", "--no-journal", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[1:] == [
        f"note: store: no store file at {config.parent / 'store' / 'evse.db'}",
        f"note: logs: no evse.log files in {config.parent / 'store'}",
    ]


def test_diag_bad_arguments(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diag", "--since", "last tuesday", "--config", str(config))
    assert (code, out) == (2, "") and err.startswith("evse diag: invalid time 'last tuesday'")
    code, out, err = run(capsys, "diag", "--output", str(config.parent / "nope"), "--config", str(config))
    assert (code, out) == (1, "") and err == f"evse diag: {config.parent / 'nope'} is not a directory\n"
