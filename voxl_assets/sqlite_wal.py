"""Switching a SQLite database to write-ahead logging when several processes open it at once."""

from __future__ import annotations

import sqlite3
import time


def use_wal(connection: sqlite3.Connection | sqlite3.Cursor, timeout_seconds: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried for up to ``timeout_seconds``.

    On a database still in rollback-journal mode, SQLite answers "database is locked" at once,
    without waiting its busy timeout, while another connection holds a write transaction (it
    would otherwise have to upgrade a shared lock, which could deadlock). That is the moment
    runs started together on a host meet: one creating an index's table, another switching the
    new file to WAL; the second failed its start-up. The mode is stored in the file, so once any
    connection has switched it the pragma takes no lock."""
    deadline = time.monotonic() + timeout_seconds
    delay = 0.005
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
