"""The database file: pragmas, migrations, refusal of files it cannot safely use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firmware import store as store_module
from firmware.store import MIGRATIONS, Store, StoreError


def test_pragmas_are_really_set(tmp_path: Path) -> None:
    with Store(tmp_path / "sub" / "dir" / "evse.db", busy_timeout_ms=1234) as store:
        conn = store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert conn.isolation_level is None
    assert (tmp_path / "sub" / "dir" / "evse.db").exists()


def test_schema_created(tmp_path: Path) -> None:
    with Store(tmp_path / "evse.db") as store:
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "outbox_dead", "transactions", "kv"} <= tables
        assert store.schema_version == len(MIGRATIONS)


def test_migrations_run_once_and_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "evse.db"
    with Store(path) as store, store.transaction() as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('HeartbeatInterval', '300')")
    with Store(path) as store:  # migration 1 would fail on CREATE TABLE if it ran again
        assert store.schema_version == len(MIGRATIONS)
        assert store.conn.execute("SELECT value FROM kv WHERE key = 'HeartbeatInterval'").fetchone()[0] == "300"


def test_appended_migration_runs_on_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evse.db"
    Store(path).close()
    extra = "CREATE TABLE later (x INTEGER); INSERT INTO later (x) VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, extra])
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS) + 1
        assert store.conn.execute("SELECT COUNT(*) FROM later").fetchone()[0] == 1
    with Store(path) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM later").fetchone()[0] == 1


def test_failing_migration_is_rolled_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evse.db"
    Store(path).close()
    broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(StoreError, match=rf"migration {len(MIGRATIONS) + 1} failed, nothing changed: no such table"):
        Store(path)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evse.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"schema version \d+ is newer than this firmware supports") as info:
        Store(path)
    assert str(path) in str(info.value)
    conn = sqlite3.connect(path)  # untouched: no downgrade
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 5
    conn.close()


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evse.db"
    path.write_bytes(b"this is not an SQLite database, just some bytes\n" * 100)
    with pytest.raises(StoreError, match="not a usable database") as info:
        Store(path)
    assert str(info.value).startswith(f"{path}: not a usable database: ")


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    with Store(tmp_path / "evse.db") as store:
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute("INSERT INTO kv (key, value) VALUES ('a', '1')")
            with store.transaction() as inner:  # nested joins the outer transaction
                inner.execute("INSERT INTO kv (key, value) VALUES ('b', '2')")
            raise RuntimeError("boom")
        assert store.conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 0
        assert not store.conn.in_transaction


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "evse.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        _ = store.conn
