"""`voxl status`'s report, read through the plain DB-API driver on SQLite and PostgreSQL: the
counts agree with what the tables hold, whatever the backend, and a database that is missing or
behind is handled."""

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from voxl_assets.cohort.extract_reader import read_extract
from voxl_assets.cohort.ingest import persist_cohort, register_extract
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.status import extract_statuses, read_statuses, render_table
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'voxl.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_status_counts_each_state_and_reason(url: str, tmp_path: Path) -> None:
    database = VoxlDatabase(url)
    try:
        cohort = read_extract(
            write_omop_extract(tmp_path / "e1", synthetic_extract_rows(12, seed=3))
        )
        slug = cohort.summary.project_slug
        key = register_extract(database, cohort.summary, slug)
        persist_cohort(database, cohort, slug)
        with database.session() as session:
            ids = sorted(session.scalars(select(Study.id)))
            moves = {
                StudyStatus.UPLOADED: (ids[:4], None, None),
                StudyStatus.FAILED: (ids[4:7], "study not found on the VNA", None),
                StudyStatus.FILTERED: (ids[7:8], "modality not in the project's list", None),
                StudyStatus.WAITING: (ids[8:10], None, "archive 'night' window"),
            }
            for state, (chosen, reason, waiting_for) in moves.items():
                session.execute(
                    update(Study)
                    .where(Study.id.in_(chosen))
                    .values(status=state.value, failure_reason=reason, waiting_for=waiting_for)
                )
            total = session.scalar(select(func.count()).select_from(Study))
    finally:
        database.dispose()

    [status] = read_statuses(url)
    assert status.extract == key and status.state == "ingested" and status.total == total == 12
    assert status.by_state == {
        "queued": 2,
        "waiting": 2,
        "retrieved": 0,
        "anonymised": 0,
        "uploaded": 4,
        "filtered": 1,
        "failed": 3,
    }
    assert status.failure_reasons == [
        ("failed: study not found on the VNA", 3),
        ("filtered: modality not in the project's list", 1),
    ]
    assert status.waiting == [("archive 'night' window", 2)]
    assert read_statuses(url, "no-such-project") == []
    # The same report through a VoxlDatabase (the demo's and the tests' way in).
    database = VoxlDatabase(url)
    try:
        assert extract_statuses(database) == [status]
    finally:
        database.dispose()
    table = render_table([status])
    assert key in table and "3 x failed: study not found on the VNA" in table


def test_a_missing_database_has_no_extracts_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "home" / "voxl.db"
    assert read_statuses(f"sqlite:///{path}") == []
    assert not path.exists()


def test_a_database_behind_the_code_is_migrated_first(tmp_path: Path) -> None:
    path = tmp_path / "voxl.db"
    path.touch()  # exists, but no schema at all
    assert read_statuses(f"sqlite:///{path}") == []
    database = VoxlDatabase(f"sqlite:///{path}", migrate=False)
    try:
        from voxl_assets.db.engine import schema_is_current

        assert schema_is_current(database.engine)
    finally:
        database.dispose()
