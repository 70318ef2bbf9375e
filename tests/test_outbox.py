"""The durable outbox: FIFO, retries and discards (OCPP 1.6 §3.7), offline transactions, crash safety."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from firmware.ocpp.outbox import Outbox, OutboxMessage
from firmware.store import Store

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent


class FakeWall:
    """Wall clock in epoch seconds that only moves when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "evse.db") as s:
        yield s


@pytest.fixture
def outbox(store: Store, wall: FakeWall) -> Outbox:
    return Outbox(store, wall=wall, attempts=lambda: 3, retry_interval=lambda: 60.0)


def due(outbox: Outbox) -> OutboxMessage:
    msg = outbox.next_due()
    assert msg is not None
    return msg


def test_fifo_order_and_head_blocks(outbox: Outbox) -> None:
    ids = [outbox.enqueue("MeterValues", {"n": n}) for n in range(5)]
    assert ids == sorted(ids) and len(outbox) == 5
    head = due(outbox)
    assert head.id == ids[0] and head.payload == {"n": 0}
    outbox.mark_sent(head.id)
    assert due(outbox).id == ids[0]  # in flight: still the head, nothing overtakes it
    assert outbox.failed(head.id, "CALLERROR InternalError")
    assert outbox.next_due() is None  # head waits for its retry, the rest waits behind it
    assert outbox.peek() is not None and outbox.peek().id == ids[0]  # type: ignore[union-attr]
    got = []
    for _ in range(5):
        msg = outbox.peek()
        assert msg is not None
        got.append(msg.id)
        assert outbox.delivered(msg.id, {})
    assert got == ids and len(outbox) == 0
    assert outbox.peek() is None and outbox.next_due() is None


def test_retry_intervals_then_dead_letter_then_next(
    outbox: Outbox, wall: FakeWall, caplog: pytest.LogCaptureFixture
) -> None:
    first = outbox.enqueue("StopTransaction", {"meterStop": 5000, "transactionId": 7})
    second = outbox.enqueue("MeterValues", {"n": 2})
    assert due(outbox).id == first
    outbox.mark_sent(first)
    assert outbox.failed(first, "no answer") is True  # try 1 failed: wait 60 s
    wall.now += 59.9
    assert outbox.next_due() is None
    wall.now += 0.1
    msg = due(outbox)
    assert (msg.id, msg.attempts, msg.sent_at) == (first, 1, None)
    outbox.mark_sent(first)
    assert outbox.failed(first, "no answer") is True  # try 2 failed: wait 120 s
    wall.now += 119.9
    assert outbox.next_due() is None
    wall.now += 0.1
    assert due(outbox).id == first
    with caplog.at_level(logging.WARNING, logger="firmware.ocpp.outbox"):
        assert outbox.failed(first, "CALLERROR FormationViolation") is False  # try 3 of 3: discarded
    assert any(
        "discarded StopTransaction" in r.getMessage() and "FormationViolation" in r.getMessage() for r in caplog.records
    )
    dead = outbox.dead_letters()
    assert [d.id for d in dead] == [first]
    assert dead[0].attempts == 3 and dead[0].last_error is not None and "FormationViolation" in dead[0].last_error
    assert dead[0].payload == {"meterStop": 5000, "transactionId": 7}
    assert due(outbox).id == second
    assert len(outbox) == 1


def test_attempts_and_interval_are_read_at_each_failure(store: Store, wall: FakeWall) -> None:
    config = {"attempts": 5, "interval": 10.0}
    outbox = Outbox(
        store, wall=wall, attempts=lambda: int(config["attempts"]), retry_interval=lambda: config["interval"]
    )
    msg_id = outbox.enqueue("MeterValues", {})
    assert outbox.failed(msg_id, "x")
    config["interval"] = 30.0
    wall.now += 10
    assert outbox.failed(msg_id, "x")  # second failure: 30 s × 2
    wall.now += 59
    assert outbox.next_due() is None
    wall.now += 1
    assert due(outbox).id == msg_id
    config["attempts"] = 2  # lowered by ChangeConfiguration: the third try is over the limit
    assert outbox.failed(msg_id, "x") is False
    assert [d.id for d in outbox.dead_letters()] == [msg_id]


def test_offline_counts_nothing(outbox: Outbox, wall: FakeWall) -> None:
    msg_id = outbox.enqueue("MeterValues", {"n": 1})
    outbox.mark_sent(msg_id)  # sent, then the connection dropped: no answer, no failure reported
    wall.now += 3 * 24 * 3600
    msg = due(outbox)
    assert (msg.id, msg.attempts, msg.not_before) == (msg_id, 0, None)
    assert outbox.dead_letters() == []


def test_wall_clock_set_back_does_not_hold_the_queue(outbox: Outbox, wall: FakeWall) -> None:
    msg_id = outbox.enqueue("MeterValues", {})
    assert outbox.failed(msg_id, "x")
    wall.now -= 6 * 3600  # NTP corrected the clock backwards by hours
    assert due(outbox).id == msg_id


def test_offline_transaction_gets_its_id_when_start_is_answered(outbox: Outbox) -> None:
    ref = outbox.begin_transaction(1, "04A1B2C3", 1000.0, T0)
    assert outbox.transaction_id(ref) is None
    start = outbox.enqueue(
        "StartTransaction", {"connectorId": 1, "idTag": "04A1B2C3", "meterStart": 1000}, transaction_ref=ref
    )
    meter = outbox.enqueue("MeterValues", {"connectorId": 1, "meterValue": []}, transaction_ref=ref)
    outbox.end_transaction(ref, 1500.0, T0 + timedelta(hours=1), "Local")
    stop = outbox.enqueue("StopTransaction", {"meterStop": 1500, "reason": "Local"}, transaction_ref=ref)

    msg = due(outbox)
    assert msg.id == start and "transactionId" not in msg.payload
    outbox.mark_sent(start)
    assert outbox.delivered(start, {"transactionId": 42, "idTagInfo": {"status": "Accepted"}})
    assert outbox.transaction_id(ref) == 42
    msg = due(outbox)
    assert msg.id == meter and msg.payload == {"connectorId": 1, "meterValue": [], "transactionId": 42}
    assert outbox.delivered(meter, {})
    msg = due(outbox)
    assert msg.id == stop and msg.payload["transactionId"] == 42 and msg.payload["meterStop"] == 1500
    assert outbox.delivered(stop, {"idTagInfo": {"status": "Accepted"}})
    rec = outbox.transaction(ref)
    assert rec is not None
    assert (rec.transaction_id, rec.meter_stop_wh, rec.stop_reason, rec.stopped_at) == (
        42,
        1500.0,
        "Local",
        T0 + timedelta(hours=1),
    )
    assert outbox.open_transactions() == []


def test_snake_case_transaction_id_accepted(outbox: Outbox) -> None:
    ref = outbox.begin_transaction(1, "TAG", 0.0, T0)
    start = outbox.enqueue("StartTransaction", {}, transaction_ref=ref)
    assert outbox.delivered(start, {"transaction_id": 9})
    assert outbox.transaction_id(ref) == 9


def test_duplicate_answer_is_ignored(outbox: Outbox) -> None:
    ref = outbox.begin_transaction(1, "TAG", 0.0, T0)
    start = outbox.enqueue("StartTransaction", {}, transaction_ref=ref)
    later = outbox.enqueue("MeterValues", {}, transaction_ref=ref)
    assert outbox.delivered(start, {"transactionId": 42}) is True
    assert outbox.delivered(start, {"transactionId": 43}) is False
    assert outbox.transaction_id(ref) == 42
    assert len(outbox) == 1 and due(outbox).id == later
    assert outbox.failed(start, "late CALLERROR") is False  # nor counted as a failure
    assert outbox.dead_letters() == [] and due(outbox).attempts == 0


def test_messages_of_a_discarded_start_are_discarded_too(outbox: Outbox) -> None:
    ref = outbox.begin_transaction(1, "TAG", 0.0, T0)
    start = outbox.enqueue("StartTransaction", {}, transaction_ref=ref)
    meter = outbox.enqueue("MeterValues", {}, transaction_ref=ref)
    other = outbox.enqueue("MeterValues", {"connectorId": 0})
    for _ in range(3):
        outbox.failed(start, "CALLERROR")
    assert due(outbox).id == other  # the MeterValues could never carry a transactionId
    assert [d.id for d in outbox.dead_letters()] == [start, meter]


def test_transactions_persist_and_open_ones_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "evse.db"
    with Store(path) as store:
        outbox = Outbox(store)
        a = outbox.begin_transaction(1, "A", 10.0, T0, reservation_id=5)
        b = outbox.begin_transaction(2, "B", 20.0, T0 + timedelta(minutes=1))
        outbox.end_transaction(a, 30.0, T0 + timedelta(minutes=2), "EVDisconnected")
        with pytest.raises(ValueError, match="already stopped"):
            outbox.end_transaction(a, 30.0, T0 + timedelta(minutes=3), "Local")
        with pytest.raises(KeyError):
            outbox.end_transaction(999, 0.0, T0, "Local")
        with pytest.raises(ValueError, match="timezone-aware"):
            outbox.begin_transaction(1, "A", 0.0, datetime(2026, 1, 1))
        with pytest.raises(KeyError):
            outbox.enqueue("MeterValues", {}, transaction_ref=999)
    with Store(path) as store:
        outbox = Outbox(store)
        [open_tx] = outbox.open_transactions()
        assert (open_tx.ref, open_tx.connector_id, open_tx.id_tag, open_tx.meter_start_wh) == (b, 2, "B", 20.0)
        assert open_tx.started_at == T0 + timedelta(minutes=1) and open_tx.started_at.tzinfo is not None
        rec = outbox.transaction(a)
        assert rec is not None and rec.reservation_id == 5 and rec.stop_reason == "EVDisconnected"
        assert outbox.transaction(999) is None and outbox.transaction_id(999) is None


def test_queue_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evse.db"
    with Store(path) as store:
        outbox = Outbox(store)
        first = outbox.enqueue("MeterValues", {"n": 1})
        outbox.enqueue("MeterValues", {"n": 2})
        outbox.mark_sent(first)
    with Store(path) as store:
        outbox = Outbox(store)
        msg = due(outbox)
        assert msg.id == first and msg.sent_at is not None  # was in flight: sent again
        assert len(outbox) == 2


# --- property: random interleavings with simulated restarts ---------------------------------------------

OPS = st.lists(
    st.sampled_from(
        ["enqueue", "enqueue", "start", "tx_msg", "ok", "fail", "fail", "lost", "dup", "reopen", "tick", "tick"]
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, attempts=st.integers(min_value=1, max_value=3), interval=st.sampled_from([0.0, 10.0]))
def test_property_order_no_loss_no_duplicates(ops: list[str], attempts: int, interval: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evse.db"
        wall = FakeWall()
        store = Store(path)

        def fresh() -> Outbox:
            return Outbox(store, wall=wall, attempts=lambda: attempts, retry_interval=lambda: interval)

        outbox = fresh()
        enqueued: list[int] = []
        delivered: list[int] = []
        current_ref: int | None = None

        def deliver(msg: OutboxMessage) -> None:
            if msg.transaction_ref is not None and msg.action != "StartTransaction":
                assert msg.payload["transactionId"] == 1000 + msg.transaction_ref
            assert msg.id not in delivered
            assert outbox.delivered(msg.id, {"transactionId": 1000 + (msg.transaction_ref or 0)}) is True
            delivered.append(msg.id)

        for op in ops:
            if op == "enqueue":
                enqueued.append(outbox.enqueue("DataTransfer", {"n": len(enqueued)}))
            elif op == "start":
                current_ref = outbox.begin_transaction(1, "TAG", 0.0, T0)
                enqueued.append(outbox.enqueue("StartTransaction", {}, transaction_ref=current_ref))
            elif op == "tx_msg" and current_ref is not None:
                enqueued.append(outbox.enqueue("MeterValues", {"n": len(enqueued)}, transaction_ref=current_ref))
            elif op in ("ok", "fail", "lost"):
                msg = outbox.next_due()
                if msg is None:
                    continue
                outbox.mark_sent(msg.id)
                if op == "ok":
                    deliver(msg)
                elif op == "fail":
                    outbox.failed(msg.id, "CALLERROR")
                else:
                    after = outbox.peek()
                    assert after is not None and after.attempts == msg.attempts  # offline counts nothing
            elif op == "dup" and delivered:
                size = len(outbox)
                assert outbox.delivered(delivered[-1], {"transactionId": 1}) is False
                assert len(outbox) == size
            elif op == "reopen":
                store.close()
                store = Store(path)
                outbox = fresh()
            elif op == "tick":
                wall.now += 25.0

        for _ in range(len(enqueued) * (attempts + 1) + 1):  # drain: the CSMS is back and answers everything
            wall.now += 1000.0
            msg = outbox.next_due()
            if msg is None:
                break
            deliver(msg)
        assert len(outbox) == 0
        dead = [d.id for d in outbox.dead_letters()]
        store.close()
    event(f"dead letters: {bool(dead)}, restarts: {'reopen' in ops}, transactions: {'start' in ops}")

    assert delivered == [i for i in enqueued if i not in dead]  # enqueue order minus dead letters
    assert sorted(delivered + dead) == sorted(enqueued)  # nothing lost, nothing twice
    assert len(set(delivered)) == len(delivered)


# --- kill -9 in the middle of writing --------------------------------------------------------------------


@pytest.mark.parametrize("kill_after_s", [0.0, 0.05, 0.2, 0.5])
def test_kill_9_mid_write_loses_nothing_committed(tmp_path: Path, kill_after_s: float) -> None:
    db = tmp_path / "evse.db"
    out = tmp_path / "child.out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with out.open("wb") as sink:
        child = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "outbox_killer.py"), str(db), "5"],
            stdout=sink,
            stderr=subprocess.PIPE,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while b"running\n" not in out.read_bytes():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "child never reported running"
            time.sleep(0.01)
        time.sleep(kill_after_s)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr:
            child.stderr.close()

    lines = out.read_text().split("\n")[:-1]  # a torn last line (no newline yet) reports nothing
    committed = [int(line.split()[1]) for line in lines if line.startswith("committed ")]
    [inflight] = [int(line.split()[1]) for line in lines if line.startswith("inflight ")]
    assert len(committed) >= 6

    with Store(db) as store:
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        outbox = Outbox(store)
        queued = [r[0] for r in store.conn.execute("SELECT id FROM outbox ORDER BY id")]
        assert queued[: len(committed)] == committed  # every reported message is there, in order
        assert len(queued) - len(committed) <= 1  # at most one committed but killed before it was reported
        head = due(outbox)
        assert head.id == inflight == committed[0] and head.action == "StartTransaction"
        assert head.sent_at is not None  # was in flight, unanswered: will be sent again
        assert len(outbox.open_transactions()) == 1


def test_mark_sent_leaves_the_store_fully_synchronous(store: Store, outbox: Outbox) -> None:
    """The in-flight mark skips the fsync; everything after it must be durable again (synchronous=FULL)."""
    msg_id = outbox.enqueue("Heartbeat", {})
    outbox.mark_sent(msg_id)
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert outbox.peek() is not None and outbox.peek().sent_at is not None  # type: ignore[union-attr]
