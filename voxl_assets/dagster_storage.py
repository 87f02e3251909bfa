"""Dagster's SQLite event log, with its SQLAlchemy engines kept between events.

Dagster's ``SqliteEventLogStorage`` makes a new engine for every event it writes (two for an
asset materialisation: the run's shard and the cross-run index), so SQLAlchemy's compiled
statement cache, which lives on the engine, is empty every time: each insert is compiled anew,
and the index's connection is opened, checkpointed and closed per event. That was most of the
~4.5 ms of CPU a materialisation cost; a study writes three. ``keep_event_log_engines`` makes its
``_connect`` keep one engine per shard (the most recently used ones): a run's shard still opens
and closes a connection per write (``NullPool``), so its file is checkpointed and the UI's file
watcher (which watches run files, not the index) sees each event as before; the index keeps a
pooled connection. Engines are dropped in a forked child: a SQLite connection must not cross a
fork. It is a method patch, not a storage class in ``dagster.yaml``: a configured class is not
told the instance's folder, and VOXL opens instances by folder as well as by ``DAGSTER_HOME``.
PostgreSQL storage keeps its engine already.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

# Shards whose engines a storage keeps: the index, and the runs its process writes (one at a time
# in a run worker; a few in a process that runs several in-process runs).
KEPT_ENGINES = 8


def _engines_of(storage: Any) -> OrderedDict[str, Engine]:
    """``storage``'s kept engines in this process: a forked child starts with none (the
    parent's connections stay the parent's)."""
    owner, engines = storage.__dict__.get("_voxl_engines", (None, None))
    if owner != os.getpid() or engines is None:
        for engine in (engines or {}).values():
            engine.dispose(close=False)
        engines = OrderedDict()
        storage._voxl_engines = (os.getpid(), engines)
    return engines


def _kept_engine(storage: Any, shard: str) -> Engine:
    """``storage``'s engine for ``shard`` (called under its ``_db_lock``)."""
    engines = _engines_of(storage)
    engine = engines.get(shard)
    if engine is None:
        engine = create_engine(
            storage.conn_string_for_shard(shard),
            # The index is read by query only; a run's file is watched for changes, which a
            # connection kept open would hold back in its write-ahead log.
            poolclass=QueuePool if shard == INDEX_SHARD_NAME else NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
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


def _let_engines_go(storage: Any) -> None:
    """When the storage is disposed: no connection kept to its files."""
    for engine in _engines_of(storage).values():
        engine.dispose()
    storage.__dict__.pop("_voxl_engines", None)


def keep_event_log_engines() -> None:
    """Patch ``SqliteEventLogStorage`` in this process (once)."""
    if getattr(SqliteEventLogStorage, "_voxl_keeps_engines", False):
        return
    dispose = SqliteEventLogStorage.dispose

    def dispose_letting_engines_go(self: Any) -> None:
        _let_engines_go(self)
        dispose(self)

    SqliteEventLogStorage._connect = _connect_keeping_engines  # type: ignore[method-assign]
    SqliteEventLogStorage.dispose = dispose_letting_engines_go  # type: ignore[method-assign]
    SqliteEventLogStorage._voxl_keeps_engines = True  # type: ignore[attr-defined]
