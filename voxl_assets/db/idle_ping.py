"""Check a pooled connection before use only when it has been idle.

SQLAlchemy's ``pool_pre_ping`` sends a ``SELECT 1`` at every checkout: a round trip before each
of a study's twenty or so short transactions on PostgreSQL, and two more for every Dagster event
(11% of the Dagster path's time, `benchmarks/orchestration.py`). A connection checked in less than
``idle_seconds`` ago was working then; one idle longer (the server restarted, a firewall dropped
the idle socket) is pinged first and, if it does not answer, replaced before use, as pre-ping
would. What is left is a server lost within that second: its next statement fails and SQLAlchemy
replaces the pool's connections, as it would for a connection lost mid-transaction.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

PING_AFTER_IDLE_SECONDS = 1.0


def ping_when_idle(engine: Engine, idle_seconds: float | None = None) -> None:
    """Make ``engine``'s pool ping a connection at checkout only after ``idle_seconds`` idle
    (default ``PING_AFTER_IDLE_SECONDS``; instead of ``pool_pre_ping=True``, which pings at every
    checkout)."""

    @event.listens_for(engine, "checkin")
    def _note_when_checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["voxl_checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_after_idling(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.pop("voxl_checked_in", None)
        idle = PING_AFTER_IDLE_SECONDS if idle_seconds is None else idle_seconds
        if checked_in is None or time.monotonic() - checked_in < idle:
            return  # new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out a new one.
            raise exc.DisconnectionError(
                "a pooled connection did not answer after idling"
            ) from error
