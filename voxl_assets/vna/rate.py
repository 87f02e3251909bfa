"""The query rate of each archive, global to the deployment.

The archive sees the sum of every VOXL process's queries, so its rate is one token bucket per
archive kept in the VOXL database (``archive_rate_limits``): on PostgreSQL each query takes a token
under a row lock (``SELECT ... FOR UPDATE``), so workers on several hosts share one rate. On SQLite
(one machine, one process at a time in practice) the bucket stays in the process and only reads
its rate from the row, every few seconds.

The rate is the configured one (``queries_per_second``) unless an operator set another with
`voxl archives rate NAME QPS`, which running workers pick up at their next query. The shared limiter
hands out evenly spaced slots in the order workers ask: across hosts the archive gets an even
stream, never a burst, and no worker starves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import ArchiveRateLimit, utcnow
from voxl_assets.retry import TokenBucket
from voxl_assets.states import ArchiveRate

# How often a process-local bucket (SQLite) looks for a rate set by `voxl archives rate`.
LOCAL_REFRESH_SECONDS = 2.0


def _check_rate(qps: float) -> float:
    if not qps > 0:
        raise ValueError(f"a rate must be a positive number of queries per second (got {qps})")
    return float(qps)


def _is_postgresql(database: VoxlDatabase) -> bool:
    return database.engine.dialect.name == "postgresql"


def _insert(database: VoxlDatabase) -> Any:
    return (pg_insert if _is_postgresql(database) else sqlite_insert)(ArchiveRateLimit)


def register_archive_rate(database: VoxlDatabase, archive: str, configured_qps: float) -> None:
    """Record the configured rate of ``archive`` (a worker's start); an operator's rate stays."""
    statement = _insert(database).values(
        archive=archive,
        configured_qps=_check_rate(configured_qps),
        override_qps=None,
        tokens=1.0,
        updated_at=utcnow(),
    )
    statement = statement.on_conflict_do_update(
        index_elements=["archive"], set_={"configured_qps": statement.excluded.configured_qps}
    )
    with database.engine.begin() as connection:
        connection.execute(statement)


def set_archive_rate(database: VoxlDatabase, archive: str, qps: float | None) -> ArchiveRate:
    """Set (or with None, clear) the operator's rate of ``archive``; running workers follow it.

    Raises:
        ValueError: ``qps`` is not positive, or clearing an archive that has no rate recorded.
    """
    with database.session() as session:
        row = session.get(ArchiveRateLimit, archive, with_for_update=True)
        if row is None:
            if qps is None:
                raise ValueError(f"archive {archive} has no rate recorded: nothing to clear")
            row = ArchiveRateLimit(
                archive=archive,
                configured_qps=_check_rate(qps),
                tokens=1.0,
                updated_at=utcnow(),
            )
            session.add(row)
        row.override_qps = None if qps is None else _check_rate(qps)
        return ArchiveRate(row.archive, row.configured_qps, row.override_qps)


def archive_rates(database: VoxlDatabase) -> list[ArchiveRate]:
    """Every archive's recorded rate, by name."""
    with database.session() as session:
        rows = session.scalars(select(ArchiveRateLimit).order_by(ArchiveRateLimit.archive))
        return [ArchiveRate(r.archive, r.configured_qps, r.override_qps) for r in rows]


class SharedTokenBucket:
    """One archive's rate in the PostgreSQL row, shared by every process under a row lock.

    Each query reserves the next free slot (``updated_at``, the last slot granted, plus 1/rate;
    now if that has passed) in one short transaction, then sleeps until its slot: the generic cell
    rate algorithm. Slots go out in the order the row lock is taken, so no worker starves (a
    bucket polled until a token appears favours whoever wakes first, and one process can take
    every token while another waits), and a burst is at most one query. Time is the database's
    clock (``clock_timestamp()`` in UTC), so hosts whose clocks differ still share one rate.
    """

    _TAKE = text(
        "SELECT COALESCE(override_qps, configured_qps) AS rate, updated_at AS last_slot, "
        "CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp) AS now "
        "FROM archive_rate_limits WHERE archive = :archive FOR UPDATE"
    )
    _PUT = text(
        "UPDATE archive_rate_limits SET tokens = 0, updated_at = :slot WHERE archive = :archive"
    )

    def __init__(
        self,
        database: VoxlDatabase,
        archive: str,
        configured_qps: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.database = database
        self.archive = archive
        self.configured_qps = configured_qps
        self._sleep = sleep
        self.last_grant: datetime | None = None  # the database's time of the last slot granted
        register_archive_rate(database, archive, configured_qps)

    def acquire(self) -> float:
        """Reserve the next slot and wait for it; returns the seconds waited."""
        while True:
            with self.database.engine.begin() as connection:
                row = connection.execute(self._TAKE, {"archive": self.archive}).one_or_none()
                if row is not None:
                    spacing = timedelta(seconds=1.0 / float(row.rate))
                    slot = max(row.now, row.last_slot + spacing)
                    connection.execute(self._PUT, {"slot": slot, "archive": self.archive})
            if row is None:  # the row was removed by hand: record it again
                register_archive_rate(self.database, self.archive, self.configured_qps)
                continue
            self.last_grant = slot
            wait = (slot - row.now).total_seconds()
            if wait > 0:
                self._sleep(wait)
            return wait


class LocalTokenBucket:
    """The process's own bucket (SQLite), at the rate recorded for the archive: an operator's
    `voxl archives rate` reaches it within ``LOCAL_REFRESH_SECONDS``."""

    def __init__(
        self,
        database: VoxlDatabase,
        archive: str,
        configured_qps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.archive = archive
        register_archive_rate(database, archive, configured_qps)
        self._clock = clock
        self._bucket = TokenBucket(self._recorded_rate(configured_qps))
        self._checked = clock()
        self._lock = threading.Lock()

    def _recorded_rate(self, fallback: float) -> float:
        with self.database.session() as session:
            row = session.get(ArchiveRateLimit, self.archive)
            if row is None:
                return fallback
            return ArchiveRate(row.archive, row.configured_qps, row.override_qps).effective_qps

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def acquire(self) -> float:
        with self._lock:
            now = self._clock()
            if now - self._checked >= LOCAL_REFRESH_SECONDS:
                self._checked = now
                rate = self._recorded_rate(self._bucket.rate)
                if rate != self._bucket.rate:
                    self._bucket.set_rate(rate)
        return self._bucket.acquire()


def archive_rate_limiter(
    database: VoxlDatabase, archive: str, configured_qps: float
) -> SharedTokenBucket | LocalTokenBucket:
    """The rate limiter of ``archive``: shared through PostgreSQL, else the process's own."""
    if _is_postgresql(database):
        return SharedTokenBucket(database, archive, configured_qps)
    return LocalTokenBucket(database, archive, configured_qps)
