"""Engine creation and schema migration for the VOXL database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir, make_private_file
from voxl_assets.db.idle_ping import ping_when_idle
from voxl_assets.schema_version import MIGRATIONS_DIR, head_revisions
from voxl_assets.sqlite_wal import use_wal

SQLITE_TIMEOUT_SECONDS = 30


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the sensor read while a run writes; busy_timeout waits instead of failing at once.
    cursor = dbapi_connection.cursor()
    use_wal(cursor, SQLITE_TIMEOUT_SECONDS)
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: ``VOXL_DATABASE_URL`` or SQLite under ``VOXL_HOME``)."""
    url = url or settings.database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # Identifiers live here: 0600 before SQLite creates it (its journals copy the mode).
            database = Path(parsed.database)
            make_private_dir(database.parent, tighten=database.parent == settings.voxl_home())
            make_private_file(database)
        engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url)
    ping_when_idle(engine)
    return engine


def schema_is_current(engine: Engine) -> bool:
    """True when the database records exactly the newest migration(s)."""
    try:
        with engine.connect() as connection:
            applied = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            return frozenset(applied) == head_revisions()
    except DBAPIError:  # no alembic_version table yet: a new database
        return False


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest migration (safe to call on every start; Alembic is loaded
    only when a migration is due)."""
    if schema_is_current(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class VoxlDatabase:
    """The VOXL database: an engine plus a session factory, migrated on first use."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = url or settings.database_url()
        self.engine = make_engine(self.url)
        if migrate:
            upgrade_database(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


_databases: dict[str, VoxlDatabase] = {}
_databases_lock = threading.Lock()


def shared_database(url: str | None = None) -> VoxlDatabase:
    """One engine (and one migration check) per URL and process."""
    url = url or settings.database_url()
    with _databases_lock:
        if url not in _databases:
            _databases[url] = VoxlDatabase(url)
        return _databases[url]
