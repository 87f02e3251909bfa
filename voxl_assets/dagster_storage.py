"""Dagster's SQLite event log, with its SQLAlchemy engines kept between events.

Dagster's ``SqliteEventLogStorage`` makes a new engine for every event it writes (two for an
asset materialisation: the run's shard and the cross-run index), so SQLAlchemy's compiled
statement cache, which lives on the engine, is empty every time: each insert is compiled anew.
That is most of the ~4.5 ms of CPU a materialisation cost; a study writes three.
``keep_event_log_engines`` makes its ``_connect`` keep one engine per shard (the most recently
used ones) and changes nothing else: connections are still opened per write and closed after it
(``NullPool``), so a run's file is checkpointed and the UI's file watcher sees each event as
before. It is a method patch, not a storage class in ``dagster.yaml``: a configured class is not
told the instance's folder, and VOXL opens instances by folder as well as by ``DAGSTER_HOME``.
PostgreSQL storage keeps its engine already.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

# Shards whose engines a storage keeps: the index, and the runs its process writes (one at a time
# in a run worker; a few in a process that runs several in-process runs).
KEPT_ENGINES = 8


def _kept_engine(storage: Any, shard: str) -> Engine:
    """``storage``'s engine for ``shard`` (called under its ``_db_lock``)."""
    engines: OrderedDict[str, Engine] = storage.__dict__.setdefault("_voxl_engines", OrderedDict())
    engine = engines.get(shard)
    if engine is None:
        engine = create_engine(
            storage.conn_string_for_shard(shard),
            poolclass=NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        engines[shard] = engine
        while len(engines) > KEPT_ENGINES:
            engines.popitem(last=False)[1].dispose()
    engines.move_to_end(shard)
    return engine


@contextmanager
def _connect_keeping_engines(self: Any, shard: str) -> Iterator[Connection]:
    # Dagster's own _connect, but for where the engine comes from.
    with self._db_lock:
        engine = _kept_engine(self, shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as conn, conn.begin():
            yield conn


def keep_event_log_engines() -> None:
    """Patch ``SqliteEventLogStorage`` in this process (once)."""
    if getattr(SqliteEventLogStorage, "_voxl_keeps_engines", False):
        return
    SqliteEventLogStorage._connect = _connect_keeping_engines  # type: ignore[method-assign]
    SqliteEventLogStorage._voxl_keeps_engines = True  # type: ignore[attr-defined]
