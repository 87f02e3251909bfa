"""The VOXL database schema: the check that lets `voxl` skip Alembic when the database is
current; the migrations build exactly the tables the models describe, on SQLite and PostgreSQL;
0002 carries existing extracts over as ingested registrations."""

from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from voxl_assets.db import ExtractRegistration, VoxlDatabase
from voxl_assets.db.engine import MIGRATIONS_DIR, head_revisions, make_engine, schema_is_current
from voxl_assets.db.models import Base, DeliveredInstance, StudyExport


def test_head_revisions_agree_with_alembic() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revisions() == frozenset(ScriptDirectory.from_config(config).get_heads())


def test_a_new_or_outdated_database_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'voxl.db'}"
    engine = make_engine(url)
    assert not schema_is_current(engine)  # no tables at all
    VoxlDatabase(url).dispose()
    assert schema_is_current(engine) and "studies" in inspect(engine).get_table_names()
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    assert not schema_is_current(engine)
    engine.dispose()


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


def _rows_at_revision_then_head(database_url: str, revision: str, *inserts: str) -> None:
    """Migrate to ``revision``, write rows as that schema held them, then migrate to the head."""
    engine = create_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        for insert in inserts:
            connection.execute(text(insert))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()


def test_0002_registers_existing_extracts_as_ingested(database_url: str) -> None:
    _rows_at_revision_then_head(
        database_url,
        "0001",
        "INSERT INTO extracts (project, extract_datetime, source_path, registered_at) "
        "VALUES ('p', '2026-11-01 12:00:00', '/data/e1', '2026-11-02 08:00:00')",
    )
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


def test_0007_keeps_existing_exports_as_first_deliveries(database_url: str) -> None:
    """Exports recorded before 0007 become revision 1 with no instances listed (their list is
    completed on the study's next run: ``tests/test_redeliver_topped_up.py``)."""
    _rows_at_revision_then_head(
        database_url,
        "0003",
        "INSERT INTO studies (id, project, mrn, accession_number, study_uid, series_uid,"
        " status, status_updated_at, attempts, created_at) VALUES (1, 'p', 'm', 'a',"
        " '', '', 'uploaded', '2026-11-02 08:00:00', 1, '2026-11-02 08:00:00')",
        "INSERT INTO study_exports (study_id, destination, instances, bytes, exported_at)"
        " VALUES (1, 'ftps://h:21/', 3, 99, '2026-11-02 08:00:00')",
    )
    database = VoxlDatabase(database_url)
    try:
        with database.session() as session:
            [row] = session.scalars(select(StudyExport))
            assert (row.revision, row.instances) == (1, 3)
            assert session.scalars(select(DeliveredInstance)).all() == []
    finally:
        database.dispose()
