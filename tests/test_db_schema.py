"""The migrations build exactly the tables the models describe, on SQLite and PostgreSQL, and
0002 carries existing extracts over as ingested registrations."""

from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select, text

from voxl_assets.db import ExtractRegistration, VoxlDatabase
from voxl_assets.db.engine import MIGRATIONS_DIR
from voxl_assets.db.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'voxl.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_migrations_match_the_models(database_url: str) -> None:
    database = VoxlDatabase(database_url)
    try:
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        database.dispose()
    assert differences == []


def test_0002_registers_existing_extracts_as_ingested(database_url: str) -> None:
    engine = create_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO extracts (project, extract_datetime, source_path, registered_at) "
                "VALUES ('p', '2026-11-01 12:00:00', '/data/e1', '2026-11-02 08:00:00')"
            )
        )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()
    database = VoxlDatabase(database_url)
    try:
        with database.session() as session:
            [row] = session.scalars(select(ExtractRegistration))
            assert (row.project, row.extract_datetime, row.source_path, row.state) == (
                "p",
                datetime(2026, 11, 1, 12, 0),
                "/data/e1",
                "ingested",
            )
    finally:
        database.dispose()
