"""One SQLite database per charge point: outbox, transactions, settings (DESIGN §Persistence).

Anything that must survive a power cut goes through here: WAL journal with ``synchronous=FULL`` so a
committed transaction is on disk before the call returns, explicit transactions only, and a schema that
is versioned (``PRAGMA user_version``) and migrated forward on open, never backward.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

__all__ = ["MIGRATIONS", "Store", "StoreError"]


class StoreError(Exception):
    """The database cannot be used (corrupt, from a newer firmware, closed); the message says which."""


# Append-only: migration n (1-based) is MIGRATIONS[n - 1]; a released entry is never edited or removed,
# because ``user_version`` on deployed chargers counts how many of these already ran.
MIGRATIONS: list[str] = [
    # 1: outbox (OCPP 1.6 §3.7 transaction-related messages), dead letters, local transactions, settings.
    """
    CREATE TABLE transactions (
        ref             INTEGER PRIMARY KEY AUTOINCREMENT,
        connector_id    INTEGER NOT NULL,
        id_tag          TEXT NOT NULL,
        transaction_id  INTEGER NULL,
        meter_start_wh  REAL NOT NULL,
        started_at      TEXT NOT NULL,
        stopped_at      TEXT NULL,
        meter_stop_wh   REAL NULL,
        stop_reason     TEXT NULL,
        reservation_id  INTEGER NULL
    );
    CREATE INDEX transactions_open ON transactions(stopped_at);

    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        action           TEXT NOT NULL,
        payload          TEXT NOT NULL,
        transaction_ref  INTEGER NULL REFERENCES transactions(ref),
        attempts         INTEGER NOT NULL DEFAULT 0,
        not_before       REAL NULL,
        created_at       REAL NOT NULL,
        last_error       TEXT NULL,
        sent_at          REAL NULL
    );
    CREATE INDEX outbox_transaction_ref ON outbox(transaction_ref);

    CREATE TABLE outbox_dead (
        id               INTEGER PRIMARY KEY,
        action           TEXT NOT NULL,
        payload          TEXT NOT NULL,
        transaction_ref  INTEGER NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        not_before       REAL NULL,
        created_at       REAL NOT NULL,
        last_error       TEXT NULL,
        sent_at          REAL NULL,
        discarded_at     REAL NOT NULL
    );

    CREATE TABLE kv (
        key    TEXT PRIMARY KEY,
        value  TEXT
    );
    """,
    # 2: OCPP 1.6 smart charging profiles (§3.13), kept across restarts. chargingProfileId is unique on the
    # charge point; a TxProfile names the local transaction it belongs to and is deleted when that one ends.
    """
    CREATE TABLE charging_profiles (
        profile_id       INTEGER PRIMARY KEY,
        connector_id     INTEGER NOT NULL,
        purpose          TEXT NOT NULL,
        stack_level      INTEGER NOT NULL,
        transaction_ref  INTEGER NULL,
        profile          TEXT NOT NULL,
        installed_at     TEXT NOT NULL
    );
    """,
    # 3: the session ledger (billing record of every session, with or without a CSMS). A row is written when the
    # session starts and updated while it runs, so a power cut loses at most the last update interval.
    """
    CREATE TABLE sessions (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        connector_id     INTEGER NOT NULL,
        id_tag           TEXT NOT NULL,
        auth             TEXT NULL,
        transaction_ref  INTEGER NULL,
        started_at       TEXT NOT NULL,
        stopped_at       TEXT NULL,
        updated_at       TEXT NOT NULL,
        meter_start_wh   REAL NULL,
        meter_stop_wh    REAL NULL,
        meter_last_wh    REAL NULL,
        energy_wh        REAL NULL,
        duration_s       REAL NULL,
        cost             TEXT NULL,
        currency         TEXT NULL,
        cost_source      TEXT NULL,
        cost_detail      TEXT NULL,
        tariff           TEXT NULL,
        stop_reason      TEXT NULL,
        signed_start     TEXT NULL,
        signed_stop      TEXT NULL
    );
    CREATE INDEX sessions_started ON sessions(started_at);
    CREATE INDEX sessions_open ON sessions(stopped_at);
    """,
]


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements so it can run inside our own transaction.

    ``executescript`` would commit any open transaction first, so a migration and its ``user_version``
    bump could not be atomic; ``sqlite3.complete_statement`` knows about quotes and trigger bodies.
    """
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                yield buf
            buf = ""
    if buf.strip(" \t\r\n;"):
        raise StoreError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")


class Store:
    """The charge point's database file; open it once and share it (one thread at a time)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: not a usable database: {e}") from e
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: not a usable database: cannot enable WAL journal (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"{self.path}: not a usable database: {e}") from e
        except BaseException:
            self.close()
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for reads; writes go through :meth:`transaction`."""
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    @property
    def schema_version(self) -> int:
        """How many :data:`MIGRATIONS` this file has run."""
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; a nested call joins the outer transaction.

        IMMEDIATE takes the write lock up front, so a read-then-write inside cannot fail half way with
        SQLITE_BUSY; COMMIT returns only after the WAL is fsynced (``synchronous=FULL``).
        """
        conn = self.conn
        if self._depth:
            self._depth += 1
            try:
                yield conn
            finally:
                self._depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield conn
        except BaseException:
            self._depth = 0
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        """Run the missing migrations, one transaction each; refuse files from a newer firmware."""
        while True:
            with self.transaction() as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"{self.path}: database schema version {version} is newer than this firmware supports "
                        f"({len(MIGRATIONS)}); refusing to open it (no downgrade)"
                    )
                if version == len(MIGRATIONS):
                    return
                try:
                    for statement in _statements(MIGRATIONS[version]):
                        conn.execute(statement)
                except sqlite3.Error as e:
                    raise StoreError(f"{self.path}: migration {version + 1} failed, nothing changed: {e}") from e
                conn.execute(f"PRAGMA user_version = {version + 1}")

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
