"""Dagster's SQLite event log, with its SQLAlchemy engines kept between events.

Dagster's ``SqliteEventLogStorage`` makes a new engine for every event it writes (two for an
asset materialisation: the run's shard and the cross-run index), so SQLAlchemy's compiled
statement cache, which lives on the engine, is empty every time: each insert is compiled anew,
and the index's connection is opened, checkpointed and closed per event. That was most of the
~4.5 ms of CPU a materialisation cost; a study writes three. ``keep_event_log_engines`` makes its
``_connect`` keep one engine per shard (the most recently used ones), each with a pooled
connection. Dagster's own opened and closed a connection for every event, and closing the last
connection of a write-ahead-log file checkpoints it and deletes its log: with the connection
kept, a run shard's transaction is followed by a passive checkpoint instead, so the run's file
itself changes with every event, as the UI's file watcher (which watches that file, not its
log) needs (38 -> 29-30 ms a study on the Dagster path of `benchmarks/orchestration.py`).
Engines are dropped in a forked child (a SQLite connection must not cross a fork) and before a
wipe (which deletes the runs' files). It is a method patch, not a storage class in
``dagster.yaml``: a configured class is not told the instance's folder, and VOXL opens
instances by folder as well as by ``DAGSTER_HOME``.
PostgreSQL storage keeps its engine already.

Three more costs of every asset event are cut the same way (together about 15% of a
materialisation's CPU and 20% of its time, `benchmarks/orchestration.py`): Dagster asks SQLite
whether the index has its asset tags table by making a new engine and connection (every event),
and reads the asset key table's columns (every event): both answers are kept once yes (a
migration adds tables and columns, never drops them); it inserts the asset's key row and, on the
unique-key error that follows for every event but the asset's first, updates it: the update is
tried first. And the shards' connections commit with ``synchronous=NORMAL``, as VOXL's own SQLite
database does: in write-ahead-log mode a commit then no longer waits for the disk (a power cut may
lose the last events, never corrupt the file; VOXL's database, not Dagster's, records deliveries).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.event_log.schema import AssetKeyTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from sqlalchemy import event as sqlalchemy_events
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

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
            poolclass=QueuePool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        sqlalchemy_events.listen(engine, "connect", _commit_without_waiting_for_the_disk)
        engines[shard] = engine
        while len(engines) > KEPT_ENGINES:
            engines.popitem(last=False)[1].dispose()
    engines.move_to_end(shard)
    return engine


def _commit_without_waiting_for_the_disk(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


@contextmanager
def _connect_keeping_engines(self: Any, shard: str) -> Iterator[Connection]:
    # Dagster's own _connect, but for where the engine comes from.
    with self._db_lock:
        engine = _kept_engine(self, shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as conn:
            with conn.begin():
                yield conn
            if shard != INDEX_SHARD_NAME:
                # Into the run's file itself, which the UI's watcher watches (not its log).
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def _let_engines_go(storage: Any) -> None:
    """When the storage is disposed: no connection kept to its files."""
    for engine in _engines_of(storage).values():
        engine.dispose()
    storage.__dict__.pop("_voxl_engines", None)


def _remembering_tables(has_table: Any) -> Any:
    def has_table_remembered(self: Any, table_name: str) -> bool:
        known = self.__dict__.setdefault("_voxl_tables", set())
        if table_name in known:
            return True
        found = bool(has_table(self, table_name))
        if found:
            known.add(table_name)
        return found

    return has_table_remembered


def _remembering_asset_key_columns(has_columns: Any) -> Any:
    def has_columns_remembered(self: Any, conn: Connection) -> bool:
        if self.__dict__.get("_voxl_asset_key_columns"):
            return True
        found = bool(has_columns(self, conn))
        if found:
            self._voxl_asset_key_columns = True
        return found

    return has_columns_remembered


def _store_asset_event_updating_first(
    self: Any, conn: Connection, event: Any, event_id: int
) -> None:
    # Dagster's _store_asset_event, with its insert and update the other way round.
    if not (event.dagster_event and event.dagster_event.asset_key):
        return
    values = self._get_asset_entry_values(
        event, event_id, self._has_asset_key_index_cols_on_connection(conn)
    )
    if not values:
        return
    key = event.dagster_event.asset_key.to_string()
    updated = conn.execute(
        AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key)
    )
    if updated.rowcount == 0:  # the asset's first event (the index is written under a lock)
        conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))


def keep_event_log_engines() -> None:
    """Patch ``SqliteEventLogStorage`` in this process (once)."""
    if getattr(SqliteEventLogStorage, "_voxl_keeps_engines", False):
        return
    dispose, wipe = SqliteEventLogStorage.dispose, SqliteEventLogStorage.wipe
    SqliteEventLogStorage.has_table = _remembering_tables(  # type: ignore[method-assign]
        SqliteEventLogStorage.has_table
    )
    SqliteEventLogStorage._has_asset_key_index_cols_on_connection = (  # type: ignore[method-assign]
        _remembering_asset_key_columns(SqlEventLogStorage._has_asset_key_index_cols_on_connection)
    )
    SqliteEventLogStorage._store_asset_event = _store_asset_event_updating_first  # type: ignore[method-assign]

    def dispose_letting_engines_go(self: Any) -> None:
        _let_engines_go(self)
        dispose(self)

    def wipe_letting_engines_go(self: Any) -> None:
        _let_engines_go(self)  # the runs' files are deleted: no connection left to them
        wipe(self)

    SqliteEventLogStorage._connect = _connect_keeping_engines  # type: ignore[method-assign]
    SqliteEventLogStorage.dispose = dispose_letting_engines_go  # type: ignore[method-assign]
    SqliteEventLogStorage.wipe = wipe_letting_engines_go  # type: ignore[method-assign]
    SqliteEventLogStorage._voxl_keeps_engines = True  # type: ignore[attr-defined]
