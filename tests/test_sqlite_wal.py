"""Processes opening a new SQLite file at once (runs a daemon starts together on one host): the
switch to WAL waits for another connection's write instead of failing the process's start-up.
SQLite itself answers "database is locked" at once there, busy timeout or not."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from voxl_assets.db.engine import make_engine
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.sqlite_wal import use_wal
from voxl_assets.vna.cache import RawCache


@contextmanager
def writing_for(path: Path, seconds: float) -> Iterator[None]:
    """Another connection creates ``path`` (rollback-journal mode, as a fresh file is) and holds
    a write transaction on it for ``seconds``, as a process creating an index's table does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE IF NOT EXISTS other_process (x INTEGER)")
    timer = threading.Timer(seconds, lambda: writer.execute("COMMIT"))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        writer.close()


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_sqlite_fails_the_switch_at_once_while_another_connection_writes(tmp_path: Path) -> None:
    """The behaviour the retry is for (if SQLite ever waits here, the retry is moot)."""
    path = tmp_path / "index.sqlite"
    with writing_for(path, 0.3):
        plain = sqlite3.connect(path, timeout=5, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            plain.execute("PRAGMA journal_mode=WAL")
        plain.close()


def test_the_switch_waits_for_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with writing_for(path, 0.3):
        connection = sqlite3.connect(path, isolation_level=None)
        use_wal(connection, timeout_seconds=10)
    assert journal_mode(path) == "wal"


def test_the_switch_gives_up_after_its_timeout_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with writing_for(path, 1.0):
        connection = sqlite3.connect(path, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(connection, timeout_seconds=0.2)


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "index.sqlite")
    connection.close()
    with pytest.raises(sqlite3.ProgrammingError):
        use_wal(connection, timeout_seconds=10)


def test_the_raw_cache_and_the_anonymised_store_open_while_another_process_creates_them(
    tmp_path: Path,
) -> None:
    with writing_for(tmp_path / "raw" / "index.sqlite", 0.3):
        RawCache(tmp_path / "raw", 10**9)
    with writing_for(tmp_path / "anon" / "index.sqlite", 0.3):
        AnonymisedStore(tmp_path / "anon")
    assert journal_mode(tmp_path / "raw" / "index.sqlite") == "wal"
    assert journal_mode(tmp_path / "anon" / "index.sqlite") == "wal"


def test_the_voxl_database_opens_while_another_process_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "voxl.db"
    with writing_for(path, 0.3):
        engine = make_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        engine.dispose()
