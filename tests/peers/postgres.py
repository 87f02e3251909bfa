"""A throwaway database on the machine's PostgreSQL (127.0.0.1:5432, trust auth, user postgres)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.peers import peer_missing

POSTGRES_ADMIN_URL = os.environ.get(
    "VOXL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    yield from fresh_postgres_database()


def fresh_postgres_database() -> Iterator[str]:
    """A fresh, empty database's URL; dropped when the generator is closed."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"voxl_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        peer_missing(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
