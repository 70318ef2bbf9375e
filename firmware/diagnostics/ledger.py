"""The session ledger (the store's ``transactions`` table), read without the daemon and without blocking it.

A read-only SQLite connection: in WAL mode readers never block the daemon's writes. Columns are read by name
(``SELECT *``), so columns added later (payment, ...) simply appear in the CSV and JSON output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DB_FILE_NAME = "evse.db"


class LedgerError(Exception):
    """The store file is missing or cannot be read; the message says which and where."""


@contextlib.contextmanager
def read_only(db_path: str | Path, *, timeout_s: float = 5.0) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file.

    ``mode=ro`` still creates the WAL index (``-shm``) when it is missing, which needs a writable directory; when
    that fails and no ``-wal`` file exists (no daemon has the file open), ``immutable=1`` reads it as it is.
    """
    path = Path(db_path)
    if not path.is_file():
        raise LedgerError(f"no store file at {path}")
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout_s)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        if Path(f"{path}-wal").exists():
            raise LedgerError(f"cannot read {path}: {exc}") from None
        try:
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout_s)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc2:
            raise LedgerError(f"cannot read {path}: {exc2}") from None
    try:
        yield conn
    finally:
        conn.close()


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def sessions(conn: sqlite3.Connection, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The ledger rows as dicts keyed by column name, newest first (highest ``ref``)."""
    if not _table_exists(conn, "transactions"):
        return []
    sql = "SELECT * FROM transactions ORDER BY ref DESC"
    params: tuple[int, ...] = ()
    if limit is not None:
        sql += " LIMIT ?"
        params = (limit,)
    try:
        cursor = conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the session ledger: {exc}") from None
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def sessions_csv(conn: sqlite3.Connection) -> str:
    """The whole ledger as CSV, oldest first, every column the table has (header row first)."""
    if not _table_exists(conn, "transactions"):
        return ""
    cursor = conn.execute("SELECT * FROM transactions ORDER BY ref")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([d[0] for d in cursor.description])
    for row in cursor:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def outbox_depth(conn: sqlite3.Connection) -> dict[str, int]:
    """How many OCPP messages wait in the outbox, and how many were given up (dead letters)."""
    depth: dict[str, int] = {}
    for table, key in (("outbox", "queued"), ("outbox_dead", "dead")):
        if _table_exists(conn, table):
            depth[key] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return depth


def stored_authorization_key(conn: sqlite3.Connection) -> str | None:
    """An AuthorizationKey the CSMS set (kept in the store); only used to scrub it from text in a bundle."""
    if not _table_exists(conn, "kv"):
        return None
    row = conn.execute("SELECT value FROM kv WHERE key = 'ocpp.key.AuthorizationKey'").fetchone()
    return str(row[0]) if row and row[0] else None
