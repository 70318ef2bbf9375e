"""The session ledger (the store's ``sessions`` table), read without the daemon and without blocking it.

A read-only SQLite connection: in WAL mode readers never block the daemon's writes. Columns are read by name
(``SELECT *``), so columns added later (payment, ...) simply appear in the CSV and JSON output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
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


_LEDGER_SQL = (
    "SELECT s.*, t.transaction_id AS transaction_id FROM sessions s"
    " LEFT JOIN transactions t ON t.ref = s.transaction_ref"
)


def parse_moment(text: Any) -> datetime | None:
    """A stored ISO timestamp as an aware datetime (UTC when it has no offset); None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rows(conn: sqlite3.Connection, newest_first: bool) -> list[dict[str, Any]]:
    """The ledger (``sessions``, written by firmware.ledger); stores from before it show their OCPP transactions."""
    if _table_exists(conn, "sessions"):
        sql = _LEDGER_SQL + (" ORDER BY s.id DESC" if newest_first else " ORDER BY s.id")
    elif _table_exists(conn, "transactions"):
        sql = "SELECT * FROM transactions" + (" ORDER BY ref DESC" if newest_first else " ORDER BY ref")
    else:
        return []
    try:
        cursor = conn.execute(sql)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the session ledger: {exc}") from None
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _in_window(row: dict[str, Any], since: datetime | None, until: datetime | None) -> bool:
    started = parse_moment(row.get("started_at"))
    if started is None:
        return since is None and until is None
    return (since is None or started >= since) and (until is None or started < until)


def sessions(
    conn: sqlite3.Connection,
    *,
    limit: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """The ledger rows as dicts keyed by column name, newest first; ``since``/``until`` bound the start time."""
    rows = [row for row in _rows(conn, newest_first=True) if _in_window(row, since, until)]
    return rows if limit is None else rows[:limit]


def sessions_csv(conn: sqlite3.Connection, *, since: datetime | None = None, until: datetime | None = None) -> str:
    """The ledger as CSV, oldest first, every column the table has (header row first)."""
    rows = [row for row in _rows(conn, newest_first=False) if _in_window(row, since, until)]
    if not rows and not (_table_exists(conn, "sessions") or _table_exists(conn, "transactions")):
        return ""
    if not rows:
        table = "sessions" if _table_exists(conn, "sessions") else "transactions"
        names = [d[0] for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
        if table == "sessions":
            names.append("transaction_id")
    else:
        names = list(rows[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if row.get(n) is None else row.get(n) for n in names])
    return out.getvalue()


@dataclass
class CardTotals:
    """One card's (or the whole ledger's) sessions, energy and revenue over a period."""

    id_tag: str
    sessions: int = 0
    running: int = 0
    #: Energy of the finished sessions, exact (each stored Wh value taken as written).
    energy_wh: Decimal = Decimal(0)
    #: Revenue per currency, exact: the sum of the billed (rounded) session costs.
    revenue: dict[str, Decimal] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        self.sessions += 1
        if row.get("stopped_at") is None:
            self.running += 1
            return  # a running session is counted, but its energy and cost are not final
        energy = row.get("energy_wh")
        if isinstance(energy, int | float) and not isinstance(energy, bool):
            self.energy_wh += Decimal(repr(energy))
        cost, currency = row.get("cost"), row.get("currency")
        if isinstance(cost, str) and isinstance(currency, str):
            try:
                amount = Decimal(cost)
            except InvalidOperation:
                return
            self.revenue[currency] = self.revenue.get(currency, Decimal(0)) + amount

    @property
    def energy_kwh(self) -> Decimal:
        """kWh to the Wh, rounded half-up once from the exact sum."""
        return (self.energy_wh / 1000).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


def summary(
    conn: sqlite3.Connection, *, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[CardTotals], CardTotals]:
    """Per card (most energy first) and overall: sessions, energy of finished sessions, revenue per currency."""
    cards: dict[str, CardTotals] = {}
    total = CardTotals("total")
    for row in sessions(conn, since=since, until=until):
        tag = str(row.get("id_tag"))
        cards.setdefault(tag, CardTotals(tag)).add(row)
        total.add(row)
    ordered = sorted(cards.values(), key=lambda c: (-c.energy_wh, c.id_tag))
    return ordered, total


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
