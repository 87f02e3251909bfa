"""Pooled connections are checked before use only after idling (``voxl_assets/db/idle_ping.py``):
none of a busy run's checkouts pays a round trip, and a connection the server dropped while it
idled is replaced before a statement meets it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from voxl_assets.db.engine import make_engine
from voxl_assets.db.idle_ping import ping_when_idle


def _counting_pings(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, fail: bool = False
) -> list[Any]:
    pinged: list[Any] = []

    def do_ping(dbapi_connection: Any) -> bool:
        pinged.append(dbapi_connection)
        if fail:
            raise OSError("server closed the connection unexpectedly")
        return True

    monkeypatch.setattr(engine.dialect, "do_ping", do_ping)
    return pinged


def _dbapi(engine: Engine) -> Any:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        return connection.connection.dbapi_connection


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    made = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool, pool_size=1)
    ping_when_idle(made, idle_seconds=0.2)
    return made


def test_a_connection_in_steady_use_is_not_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinged = _counting_pings(engine, monkeypatch)
    first = _dbapi(engine)
    for _ in range(20):
        assert _dbapi(engine) is first
    assert pinged == []


def test_a_connection_idle_longer_is_pinged_once_then_used(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinged = _counting_pings(engine, monkeypatch)
    first = _dbapi(engine)
    time.sleep(0.3)
    assert _dbapi(engine) is first
    assert pinged == [first]
    assert _dbapi(engine) is first and pinged == [first]  # in use a moment ago


def test_a_connection_that_does_not_answer_is_replaced_before_use(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _dbapi(engine)
    pinged = _counting_pings(engine, monkeypatch, fail=True)
    time.sleep(0.3)
    replacement = _dbapi(engine)  # no error reaches the caller
    assert pinged == [first] and replacement is not first


def test_postgres_a_backend_killed_while_idle_is_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real case: the server ends the connection's backend (a restart, an idle timeout)."""
    import voxl_assets.db.idle_ping as idle_ping

    monkeypatch.setattr(idle_ping, "PING_AFTER_IDLE_SECONDS", 0.2)
    engine = make_engine(postgres_url)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        time.sleep(0.3)
        with engine.connect() as connection:  # would raise without the check
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != backend
    finally:
        engine.dispose()
        admin.dispose()
