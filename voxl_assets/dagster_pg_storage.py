"""Dagster's PostgreSQL event log with its connections kept, for VOXL's production deployments.

dagster-postgres opens a new connection for every statement group it runs outside the webserver
(``NullPool``: a TCP connection, authentication and a server process each time), and an asset
materialisation needs two (the event, then the asset's index rows): six connections a study, which
left a run's thread waiting on PostgreSQL rather than taking the next study's outcome
(`benchmarks/orchestration.py`: 55 ms a study on PostgreSQL against 30 on SQLite). This storage is
dagster-postgres's own with a small pool instead: connections idle for a second are checked before
use (a restarted server costs a reconnect, not a failed event; ``voxl_assets/db/idle_ping.py``)
and recycled hourly, and one checked out in a forked
child is never the parent's. Named in ``deployments/production/dagster.yaml`` (and the distributed
one) as the event log storage; the webserver still swaps in its own pooled engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log.event_log import PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

from voxl_assets.db.idle_ping import ping_when_idle

# A run's thread writes the events; a sensor or the UI in the same process may read meanwhile.
POOL_SIZE = 2
MAX_OVERFLOW = 8
RECYCLE_SECONDS = 3600


def _never_across_a_fork(engine: Engine) -> None:
    """SQLAlchemy's recipe: a pooled connection made by another process is discarded at
    checkout (the pool opens a new one), so a forked child never talks on its parent's socket."""

    @event.listens_for(engine, "connect")
    def _remember_the_process(_dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _refuse_a_parents_connection(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError("connection made by another process")


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres's event log storage, its connections pooled (see the module)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._engine.dispose()
        self._engine = create_pg_engine(
            postgres_url,
            token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_recycle=RECYCLE_SECONDS,
        )
        _never_across_a_fork(self._engine)
        ping_when_idle(self._engine)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()
