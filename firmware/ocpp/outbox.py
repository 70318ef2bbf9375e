"""The durable queue for transaction-related OCPP messages (OCPP 1.6 §3.7, standards §2.3).

StartTransaction, MeterValues and StopTransaction must reach the CSMS, in order, even across power cuts
and long offline periods. Every message is committed to the :class:`~firmware.store.Store` before
:meth:`Outbox.enqueue` returns and leaves the queue only when answered (:meth:`Outbox.delivered`) or
discarded after ``TransactionMessageAttempts`` failed tries (:meth:`Outbox.failed`). Being offline is
not a failure: nothing is counted, messages just wait.

Messages refer to their transaction by the local ``transactions.ref``: a transaction started offline has
no CSMS ``transactionId`` until its StartTransaction is answered, so the id is filled into the payload at
send time (:meth:`Outbox.next_due`), never at enqueue time.

Delivery is at-least-once: a message sent but unanswered when the process dies is sent again after a
restart; an answer for a message no longer queued is ignored, so nothing is recorded twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from firmware.store import Store

__all__ = ["START_TRANSACTION", "Outbox", "OutboxMessage", "TransactionRecord"]

log = logging.getLogger("firmware.ocpp.outbox")

START_TRANSACTION = "StartTransaction"

_COLUMNS = "id, action, payload, transaction_ref, attempts, not_before, created_at, sent_at, last_error"


@dataclass(frozen=True)
class OutboxMessage:
    """One queued (or discarded) message; ``payload`` is a fresh dict the caller may keep."""

    id: int
    action: str
    payload: dict[str, Any]
    transaction_ref: int | None
    attempts: int
    not_before: float | None
    created_at: float
    sent_at: float | None = None  # set by mark_sent: in flight (or was, when the process died)
    last_error: str | None = None  # the reason of the last failed try (the discard reason for dead letters)


@dataclass(frozen=True)
class TransactionRecord:
    """A local transaction; ``transaction_id`` is the CSMS's id, None until StartTransaction is answered."""

    ref: int
    connector_id: int
    id_tag: str
    transaction_id: int | None
    meter_start_wh: float
    started_at: datetime
    stopped_at: datetime | None
    meter_stop_wh: float | None
    stop_reason: str | None
    reservation_id: int | None


def _iso(moment: datetime, name: str) -> str:
    """Timestamps are stored with their zone: a naive one would be ambiguous after a time zone change."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment.isoformat()


def _message(row: sqlite3.Row | tuple[Any, ...]) -> OutboxMessage:
    payload = json.loads(row[2])
    return OutboxMessage(
        id=int(row[0]),
        action=str(row[1]),
        payload=payload if isinstance(payload, dict) else {},
        transaction_ref=None if row[3] is None else int(row[3]),
        attempts=int(row[4]),
        not_before=None if row[5] is None else float(row[5]),
        created_at=float(row[6]),
        sent_at=None if row[7] is None else float(row[7]),
        last_error=row[8],
    )


def _transaction(row: tuple[Any, ...]) -> TransactionRecord:
    return TransactionRecord(
        ref=int(row[0]),
        connector_id=int(row[1]),
        id_tag=str(row[2]),
        transaction_id=None if row[3] is None else int(row[3]),
        meter_start_wh=float(row[4]),
        started_at=datetime.fromisoformat(row[5]),
        stopped_at=None if row[6] is None else datetime.fromisoformat(row[6]),
        meter_stop_wh=None if row[7] is None else float(row[7]),
        stop_reason=row[8],
        reservation_id=None if row[9] is None else int(row[9]),
    )


_TX_COLUMNS = (
    "ref, connector_id, id_tag, transaction_id, meter_start_wh, started_at, stopped_at, meter_stop_wh, "
    "stop_reason, reservation_id"
)


class Outbox:
    """FIFO of transaction-related messages on disk; the head blocks the rest until answered or discarded.

    ``attempts`` and ``retry_interval`` are read at each failure, so a ChangeConfiguration of
    TransactionMessageAttempts / TransactionMessageRetryInterval applies to messages already queued.
    """

    def __init__(
        self,
        store: Store,
        *,
        wall: Callable[[], float] = time.time,
        attempts: Callable[[], int] = lambda: 3,
        retry_interval: Callable[[], float] = lambda: 60.0,
    ) -> None:
        self._store = store
        self._wall = wall
        self._attempts = attempts
        self._retry_interval = retry_interval

    # --- transactions -------------------------------------------------------------------------------

    def begin_transaction(
        self,
        connector_id: int,
        id_tag: str,
        meter_start_wh: float,
        started_at: datetime,
        reservation_id: int | None = None,
    ) -> int:
        """Persist a started transaction (before its StartTransaction is queued) and return its local ref."""
        with self._store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO transactions (connector_id, id_tag, meter_start_wh, started_at, reservation_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (connector_id, id_tag, meter_start_wh, _iso(started_at, "started_at"), reservation_id),
            )
            ref = cur.lastrowid
        assert ref is not None
        return ref

    def end_transaction(self, ref: int, meter_stop_wh: float, stopped_at: datetime, reason: str) -> None:
        """Record the stop; KeyError for an unknown ref, ValueError if it was already stopped."""
        stamp = _iso(stopped_at, "stopped_at")
        with self._store.transaction() as conn:
            row = conn.execute("SELECT stopped_at FROM transactions WHERE ref = ?", (ref,)).fetchone()
            if row is None:
                raise KeyError(f"no transaction with ref {ref}")
            if row[0] is not None:
                raise ValueError(f"transaction ref {ref} was already stopped at {row[0]}")
            conn.execute(
                "UPDATE transactions SET stopped_at = ?, meter_stop_wh = ?, stop_reason = ? WHERE ref = ?",
                (stamp, meter_stop_wh, reason, ref),
            )

    def open_transactions(self) -> list[TransactionRecord]:
        """Started and not stopped: after a restart these are the sessions a power cut interrupted."""
        rows = self._store.conn.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE stopped_at IS NULL ORDER BY ref"
        ).fetchall()
        return [_transaction(r) for r in rows]

    def transaction(self, ref: int) -> TransactionRecord | None:
        row = self._store.conn.execute(f"SELECT {_TX_COLUMNS} FROM transactions WHERE ref = ?", (ref,)).fetchone()
        return None if row is None else _transaction(row)

    def transaction_id(self, ref: int) -> int | None:
        """The CSMS's transactionId for a local ref, None while its StartTransaction is unanswered."""
        row = self._store.conn.execute("SELECT transaction_id FROM transactions WHERE ref = ?", (ref,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # --- queue --------------------------------------------------------------------------------------

    def enqueue(self, action: str, payload: dict[str, Any], *, transaction_ref: int | None = None) -> int:
        """Append a message; it is committed and fsynced when this returns. Returns its id (increasing)."""
        if not action:
            raise ValueError("action must not be empty")
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        with self._store.transaction() as conn:
            try:
                cur = conn.execute(
                    "INSERT INTO outbox (action, payload, transaction_ref, created_at) VALUES (?, ?, ?, ?)",
                    (action, text, transaction_ref, self._wall()),
                )
            except sqlite3.IntegrityError as e:
                raise KeyError(f"no transaction with ref {transaction_ref}") from e
            msg_id = cur.lastrowid
        assert msg_id is not None
        return msg_id

    def peek(self) -> OutboxMessage | None:
        """The head, due or not, with its payload as stored."""
        row = self._store.conn.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else _message(row)

    def next_due(self) -> OutboxMessage | None:
        """The head if it may be sent now, with ``transactionId`` filled in; else None.

        A head whose transaction can never get a transactionId (its StartTransaction was discarded or never
        queued) would block the queue forever; it is moved to the dead letters, logged, and the next one
        is considered.
        """
        while True:
            msg = self.peek()
            if msg is None or not self._is_due(msg):
                return None
            if msg.transaction_ref is None or msg.action == START_TRANSACTION:
                return msg
            tid = self.transaction_id(msg.transaction_ref)
            if tid is not None:
                return _with_transaction_id(msg, tid)
            if self._start_queued(msg.transaction_ref):
                return None  # FIFO makes this impossible; never send a message without its transactionId
            self._discard(msg, "its transaction has no transactionId (StartTransaction discarded or never queued)")

    def mark_sent(self, msg_id: int) -> None:
        """Record that the message is in flight (it stays queued until answered).

        Written without an fsync (WAL + synchronous=NORMAL survives a crash of the process, not a power cut):
        the mark is informational, the message itself is already durable and is resent either way.
        """
        conn = self._store.conn
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._store.transaction() as tx:
                tx.execute("UPDATE outbox SET sent_at = ? WHERE id = ?", (self._wall(), msg_id))
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def delivered(self, msg_id: int, response: dict[str, Any]) -> bool:
        """The CSMS answered: remove the message; for StartTransaction keep the CSMS's transactionId.

        Returns False and changes nothing when the message is no longer queued (a duplicate answer).
        """
        with self._store.transaction() as conn:
            row = conn.execute("SELECT action, transaction_ref FROM outbox WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                log.info("ignoring answer for message #%d: no longer queued (duplicate answer)", msg_id)
                return False
            action, transaction_ref = row
            if action == START_TRANSACTION and transaction_ref is not None:
                tid = response.get("transactionId", response.get("transaction_id"))
                if isinstance(tid, int) and not isinstance(tid, bool):
                    conn.execute("UPDATE transactions SET transaction_id = ? WHERE ref = ?", (tid, transaction_ref))
                else:
                    log.error(
                        "StartTransaction #%d answered without a usable transactionId (%r); "
                        "later messages of transaction ref %d cannot be sent",
                        msg_id,
                        tid,
                        transaction_ref,
                    )
            conn.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))
        return True

    def failed(self, msg_id: int, error: str) -> bool:
        """A try failed (CALLERROR, no answer in time): count it, and retry later or discard.

        Before the n-th retransmission the message waits ``retry_interval() × n`` s; after ``attempts()``
        tries it moves to the dead letters and the next message may go. Returns True if it will be
        retried, False if it was discarded (or is no longer queued).
        """
        with self._store.transaction() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                log.info("ignoring failure of message #%d: no longer queued", msg_id)
                return False
            msg = _message(row)
            tries = msg.attempts + 1
            limit = max(1, self._attempts())
            if tries >= limit:
                self._discard(msg, f"failed {tries} of {limit} attempts, last error: {error}", attempts=tries)
                return False
            conn.execute(
                "UPDATE outbox SET attempts = ?, not_before = ?, last_error = ?, sent_at = NULL WHERE id = ?",
                (tries, self._wall() + self._retry_interval() * tries, error, msg_id),
            )
        log.warning("%s #%d failed (attempt %d of %d), will retry: %s", msg.action, msg_id, tries, limit, error)
        return True

    def __len__(self) -> int:
        return int(self._store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dead_letters(self) -> list[OutboxMessage]:
        """Discarded messages, oldest first; ``last_error`` says why."""
        rows = self._store.conn.execute(f"SELECT {_COLUMNS} FROM outbox_dead ORDER BY id").fetchall()
        return [_message(r) for r in rows]

    # --- internals ----------------------------------------------------------------------------------

    def _is_due(self, msg: OutboxMessage) -> bool:
        """Due once ``not_before`` has passed, or if the wall clock was set back further than any wait.

        The Pi has no RTC: a clock corrected backwards by hours must not hold the queue for hours.
        """
        if msg.not_before is None:
            return True
        now = self._wall()
        return now >= msg.not_before or msg.not_before - now > self._retry_interval() * max(1, msg.attempts)

    def _start_queued(self, ref: int) -> bool:
        row = self._store.conn.execute(
            "SELECT 1 FROM outbox WHERE transaction_ref = ? AND action = ? LIMIT 1", (ref, START_TRANSACTION)
        ).fetchone()
        return row is not None

    def _discard(self, msg: OutboxMessage, reason: str, *, attempts: int | None = None) -> None:
        """Move one message to ``outbox_dead`` (atomically) and log why."""
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO outbox_dead (id, action, payload, transaction_ref, attempts, not_before, created_at, "
                "last_error, sent_at, discarded_at) "
                "SELECT id, action, payload, transaction_ref, ?, not_before, created_at, ?, sent_at, ? "
                "FROM outbox WHERE id = ?",
                (msg.attempts if attempts is None else attempts, reason, self._wall(), msg.id),
            )
            conn.execute("DELETE FROM outbox WHERE id = ?", (msg.id,))
        log.warning("discarded %s #%d (transaction ref %s): %s", msg.action, msg.id, msg.transaction_ref, reason)


def _with_transaction_id(msg: OutboxMessage, transaction_id: int) -> OutboxMessage:
    return replace(msg, payload={**msg.payload, "transactionId": transaction_id})
