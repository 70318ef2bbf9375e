"""The diagnostics bundle: what is in it, what is kept out of it, and that it is never half-written."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_support import record_session

from firmware.config import MASK, Settings, default_settings
from firmware.diagnostics.bundle import (
    BundleError,
    TimeWindow,
    bundle_name,
    is_security_record,
    newest,
    parse_timestamp,
    select_records,
    write_bundle,
)
from firmware.ocpp.outbox import Outbox
from firmware.store import Store

NOW = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC)
AUTH_KEY = "AKEY-7f3c9e21b04d5a68"  # a real-looking AuthorizationKey (16..40 characters)
MQTT_PASSWORD = "mqtt-pass-91827364"
CSMS_KEY = "csms-set-key-55aa66bb77"


def stamp(minute: int, hour: int = 5) -> str:
    return f"2026-11-27T{hour:02d}:{minute:02d}:00.000+00:00"


def settings_for(store: Path, **diag: int) -> Settings:
    s = default_settings()
    return replace(
        s,
        charger=replace(s.charger, id="CP-DIAG-1"),
        store=replace(s.store, dir=str(store)),
        ocpp=replace(s.ocpp, url="ws://127.0.0.1:9/ocpp", security_profile=1, authorization_key=AUTH_KEY),
        sharing=replace(s.sharing, password=MQTT_PASSWORD),
        diagnostics=replace(s.diagnostics, **diag),
    )


def open_bundle(path: Path) -> tuple[str, dict[str, bytes]]:
    """(top directory, member name -> bytes)."""
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        top = names[0].split("/", 1)[0]
        members = {}
        for info in tar.getmembers():
            assert info.name.startswith(top + "/")
            handle = tar.extractfile(info)
            assert handle is not None
            members[info.name.removeprefix(top + "/")] = handle.read()
    return top, members


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store with two finished sessions and one running, an outbox message, and a rotated log."""
    store_dir = tmp_path / "store"
    with Store(store_dir / "evse.db") as store:
        outbox = Outbox(store, wall=lambda: 0.0, attempts=lambda: 3, retry_interval=lambda: 60.0)
        ref = outbox.begin_transaction(1, "04A1B2C3", 1000.0, NOW - timedelta(hours=5))
        outbox.end_transaction(ref, 12500.5, NOW - timedelta(hours=3), "EVDisconnected")
        record_session(
            store, "04A1B2C3", NOW - timedelta(hours=5), 1000.0, stopped_at=NOW - timedelta(hours=3),
            meter_stop_wh=12500.5, reason="EVDisconnected", transaction_ref=ref,
        )  # fmt: skip
        ref = outbox.begin_transaction(1, "APPUSER1", 12500.5, NOW - timedelta(hours=2))
        outbox.end_transaction(ref, 20000.0, NOW - timedelta(hours=1), "Remote")
        record_session(
            store, "APPUSER1", NOW - timedelta(hours=2), 12500.5, stopped_at=NOW - timedelta(hours=1),
            meter_stop_wh=20000.0, reason="Remote", transaction_ref=ref,
        )  # fmt: skip
        ref = outbox.begin_transaction(1, "04A1B2C3", 20000.0, NOW - timedelta(minutes=10))
        record_session(store, "04A1B2C3", NOW - timedelta(minutes=10), 20000.0, transaction_ref=ref)
        with store.transaction() as conn:
            conn.execute("INSERT INTO kv(key, value) VALUES('ocpp.key.AuthorizationKey', ?)", (CSMS_KEY,))
            conn.execute(
                "INSERT INTO outbox(action, payload, created_at) VALUES('StopTransaction', '{}', 0)",
            )
    (store_dir / "evse.log.1").write_text(
        f"{stamp(0)} INFO firmware.app: started\n"
        f"{stamp(10)} INFO firmware.ocpp.connection: connected to ws://csms (subprotocol ocpp1.6)\n"
    )
    (store_dir / "evse.log").write_text(
        f"{stamp(20)} INFO firmware.charging: state B -> C\n"
        f"{stamp(30)} ERROR firmware.app: something broke\n"
        "Traceback (most recent call last):\n"
        f'  File "x.py", line 1, in <module> key={AUTH_KEY}\n'
        f"{stamp(40)} WARNING firmware.ocpp.connection: TLS handshake failed: certificate verify failed\n"
        f"{stamp(50)} INFO firmware.ocpp: AuthorizationKey changed to {CSMS_KEY}\n"
    )
    return store_dir


def test_bundle_members_and_manifest_hashes(store_dir: Path, tmp_path: Path) -> None:
    bundle = write_bundle(settings_for(store_dir), tmp_path, now=NOW)
    assert bundle.path == tmp_path / "CP-DIAG-1-diagnostics-20261127T060000Z.tar.gz"
    assert bundle.size == bundle.path.stat().st_size
    top, members = open_bundle(bundle.path)
    assert top == "CP-DIAG-1-diagnostics-20261127T060000Z"
    manifest = json.loads(members.pop("manifest.json"))
    listed = {m["name"]: m for m in manifest["members"]}
    assert set(listed) == set(members)
    for name, data in members.items():
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert listed[name]["size"] == len(data)
    assert {"logs/evse.log", "config.json", "sessions.csv", "status.json", "versions.json"} <= set(members)
    # the journal is optional: either it is in, or a note says why not
    assert "journal.txt" in members or any(n.startswith("journal:") for n in manifest["notes"])
    assert manifest["charger_id"] == "CP-DIAG-1" and manifest["created_at"] == "2026-11-27T06:00:00Z"
    assert manifest["log_files"] == ["evse.log.1", "evse.log"]
    versions = json.loads(members["versions.json"])
    assert set(versions) >= {"pievse", "python", "kernel"}
    status = json.loads(members["status.json"])
    assert status["outbox"] == {"queued": 1, "dead": 0}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_no_secret_leaves_in_any_member(store_dir: Path, tmp_path: Path) -> None:
    bundle = write_bundle(settings_for(store_dir), tmp_path, now=NOW)
    raw = bundle.path.read_bytes()
    _, members = open_bundle(bundle.path)
    for name, data in members.items():
        for secret in (AUTH_KEY, MQTT_PASSWORD, CSMS_KEY):
            assert secret.encode() not in data, f"{secret} in {name}"
    config = json.loads(members["config.json"])
    assert config["ocpp"]["authorization_key"] == MASK and config["sharing"]["password"] == MASK
    assert config["ocpp"]["url"] == "ws://127.0.0.1:9/ocpp"  # the rest is there
    assert MASK.encode() in members["logs/evse.log"]  # the leaked key in the traceback was replaced
    import gzip

    assert AUTH_KEY.encode() not in gzip.decompress(raw)


def test_session_ledger_csv_has_every_row_and_column(store_dir: Path, tmp_path: Path) -> None:
    with Store(store_dir / "evse.db") as store, store.transaction() as conn:
        conn.execute("ALTER TABLE sessions ADD COLUMN price_cents INTEGER NULL")  # a later ledger column
        conn.execute("UPDATE sessions SET price_cents = 321 WHERE id = 1")
    _, members = open_bundle(write_bundle(settings_for(store_dir), tmp_path, now=NOW).path)
    rows = list(csv.DictReader(io.StringIO(members["sessions.csv"].decode())))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["id_tag"] == "04A1B2C3" and rows[0]["meter_stop_wh"] == "12500.5"
    assert rows[0]["stop_reason"] == "EVDisconnected" and rows[0]["price_cents"] == "321"
    assert rows[2]["stopped_at"] == "" and rows[2]["started_at"] == (NOW - timedelta(minutes=10)).isoformat()


def test_a_busy_daemon_does_not_block_the_bundle(store_dir: Path, tmp_path: Path) -> None:
    """The daemon holds the write lock (BEGIN IMMEDIATE, uncommitted row): the bundle reads the last commit."""
    with Store(store_dir / "evse.db") as store, store.transaction() as conn:
        conn.execute(
            "INSERT INTO sessions(connector_id, id_tag, started_at, updated_at) VALUES(1, 'PENDING', 'x', 'x')"
        )
        started = time.monotonic()
        _, members = open_bundle(write_bundle(settings_for(store_dir), tmp_path, now=NOW, journal=False).path)
        assert time.monotonic() - started < 2.0
    assert b"PENDING" not in members["sessions.csv"] and b"APPUSER1" in members["sessions.csv"]


def test_time_window_keeps_whole_records(store_dir: Path, tmp_path: Path) -> None:
    window = TimeWindow(parse_timestamp("2026-11-27T05:25:00Z"), parse_timestamp("2026-11-27T05:45:00Z"))
    bundle = write_bundle(settings_for(store_dir), tmp_path, now=NOW, window=window, journal=False)
    _, members = open_bundle(bundle.path)
    lines = members["logs/evse.log"].decode().splitlines()
    assert lines[0].startswith(stamp(30)) and lines[1] == "Traceback (most recent call last):"
    assert lines[-1].startswith(stamp(40))
    assert len(lines) == 4
    manifest = json.loads(members["manifest.json"])
    assert manifest["window"] == {"start": "2026-11-27T05:25:00Z", "stop": "2026-11-27T05:45:00Z"}


def test_size_cap_keeps_the_newest_lines(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    lines = [f"{stamp(i % 60, 5 + i // 60)} INFO firmware.charging: line {i:05d} " + "x" * 100 for i in range(1500)]
    (store_dir / "evse.log").write_text("\n".join(lines) + "\n")  # ~190 KiB
    bundle = write_bundle(settings_for(store_dir, max_log_kib=64), tmp_path, now=NOW, journal=False)
    _, members = open_bundle(bundle.path)
    log = members["logs/evse.log"]
    assert 60 * 1024 < len(log) <= 64 * 1024
    kept = log.decode().splitlines()
    assert kept[-1] == lines[-1] and kept == lines[-len(kept) :]
    assert any("cut to the newest 64 KiB" in n for n in bundle.notes)


def test_security_log_bundle_holds_only_security_records(store_dir: Path, tmp_path: Path) -> None:
    bundle = write_bundle(settings_for(store_dir), tmp_path, now=NOW, kind="securitylog", journal=False)
    assert bundle.path.name == "CP-DIAG-1-securitylog-20261127T060000Z.tar.gz"
    _, members = open_bundle(bundle.path)
    assert set(members) == {"manifest.json", "logs/security.log", "versions.json"}
    text = members["logs/security.log"].decode()
    assert text.splitlines() == [
        f"{stamp(10)} INFO firmware.ocpp.connection: connected to ws://csms (subprotocol ocpp1.6)",
        f"{stamp(40)} WARNING firmware.ocpp.connection: TLS handshake failed: certificate verify failed",
        f"{stamp(50)} INFO firmware.ocpp: AuthorizationKey changed to {MASK}",
    ]


def test_missing_store_and_logs_still_give_a_bundle(tmp_path: Path) -> None:
    bundle = write_bundle(settings_for(tmp_path / "empty"), tmp_path, now=NOW, journal=False)
    _, members = open_bundle(bundle.path)
    manifest = json.loads(members["manifest.json"])
    assert "config.json" in members and "sessions.csv" not in members
    assert any(n.startswith("store: no store file") for n in manifest["notes"])
    assert any(n.startswith("logs: no evse.log") for n in manifest["notes"])


def test_unwritable_output_fails_cleanly(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        write_bundle(settings_for(store_dir), tmp_path / "missing", now=NOW, journal=False)


def test_nothing_half_written_keeps_the_final_name(store_dir: Path, tmp_path: Path) -> None:
    """A failure at the last step (the final name is taken by a directory, so the rename fails) leaves neither a
    bundle under the final name nor the temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    name = bundle_name("CP-DIAG-1", NOW)
    (out / name).mkdir()  # the final name is taken by a directory: the rename must fail
    with pytest.raises(BundleError):
        write_bundle(settings_for(store_dir), out, now=NOW, journal=False)
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert (out / name).is_dir()


def test_bundle_name_follows_ocpp_practice() -> None:
    assert bundle_name("CP-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "CP-1-diagnostics-20260102T030405Z.tar.gz"
    with pytest.raises(ValueError):
        bundle_name("CP-1", NOW, "other")


# --- pure parts, with hypothesis ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T05:00:00Z", datetime(2026, 11, 27, 5, tzinfo=UTC)),
        ("2026-11-27T06:00:00+01:00", datetime(2026, 11, 27, 5, tzinfo=UTC)),
        ("2026-11-27T05:00:00.123Z", datetime(2026, 11, 27, 5, 0, 0, 123000, tzinfo=UTC)),
        ("2026-11-27T05:00:00", datetime(2026, 11, 27, 5, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "27/11/2026", "2026-11-27T25:00Z"])
def test_parse_timestamp_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


@given(st.text(max_size=40))
def test_parse_timestamp_gives_utc_or_value_error(text: str) -> None:
    try:
        parsed = parse_timestamp(text)
    except ValueError:
        return
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


minutes = st.integers(0, 24 * 60 - 1)


@given(
    records=st.lists(st.tuples(minutes, st.integers(0, 2)), max_size=30),
    start=st.one_of(st.none(), minutes),
    stop=st.one_of(st.none(), minutes),
)
def test_window_selection_matches_a_plain_filter(
    records: list[tuple[int, int]], start: int | None, stop: int | None
) -> None:
    """Each record (minute, n continuation lines) is kept whole exactly when its time is in the window."""
    base = datetime(2026, 11, 27, tzinfo=UTC)

    def at(m: int) -> datetime:
        return base + timedelta(minutes=m)

    lines: list[str] = []
    expected: list[str] = []
    for i, (minute, extra) in enumerate(records):
        record = [f"{at(minute).isoformat(timespec='milliseconds')} INFO x: record {i}"]
        record += [f"  continuation {i}.{k}" for k in range(extra)]
        lines += record
        if (start is None or minute >= start) and (stop is None or minute <= stop):
            expected += record
    window = TimeWindow(None if start is None else at(start), None if stop is None else at(stop))
    assert list(select_records(lines, window)) == expected


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=50), max_size=40), minutes)
def test_newest_is_the_longest_fitting_tail(lines: list[str], cap: int) -> None:
    data, cut = newest(lines, cap)
    encoded = [(line + "\n").encode("utf-8", errors="replace") for line in lines]
    fitting = 0
    total = 0
    for chunk in reversed(encoded):
        if total + len(chunk) > cap:
            break
        total += len(chunk)
        fitting += 1
    assert data == b"".join(encoded[len(encoded) - fitting :])
    assert cut == (fitting < len(encoded))


@pytest.mark.parametrize(
    ("line", "security"),
    [
        (f"{stamp(1)} INFO firmware.ocpp.connection: connected to wss://csms", True),
        (f"{stamp(1)} WARNING firmware.ocpp: certificate expires soon", True),
        (f"{stamp(1)} INFO firmware.update: slot B installed", True),
        (f"{stamp(1)} INFO firmware.ocpp: AuthorizationKey changed", True),
        ("2026-11-27T05:01:00.000000+00:00 pi evse[12]: firmware.ocpp.connection: disconnected", True),
        (f"{stamp(1)} INFO firmware.charging: state B -> C", False),
        (f"{stamp(1)} INFO firmware.limits: site limit 16 A", False),
    ],
)
def test_security_record_selection(line: str, security: bool) -> None:
    assert is_security_record(line) is security


def test_file_name_pattern() -> None:
    assert re.fullmatch(r"CP-9-diagnostics-\d{8}T\d{6}Z\.tar\.gz", bundle_name("CP-9", datetime.now(UTC)))
