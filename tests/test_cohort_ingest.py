"""Persisting cohort messages: the db layer on SQLite and on PostgreSQL, and idempotent re-ingest."""

from pathlib import Path

import pytest
from sqlalchemy import func, select

from voxl_assets.cohort.extract_reader import read_extract
from voxl_assets.cohort.ingest import IngestCounts, persist_cohort, register_extract
from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, VoxlDatabase
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> VoxlDatabase:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'voxl.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = VoxlDatabase(url)
    request.addfinalizer(db.dispose)
    return db


def _ingest(db: VoxlDatabase, extract: Path) -> tuple[str, IngestCounts]:
    cohort = read_extract(extract)
    slug = cohort.summary.project_slug
    key = register_extract(db, cohort.summary, slug)
    return key, persist_cohort(db, cohort, slug)


def test_ingest_then_reingest_is_a_no_op(database: VoxlDatabase, tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e1", synthetic_extract_rows(30, seed=1))
    key, first = _ingest(database, extract)
    assert key == "test-extract-uclh-omop-cdm/2026-11-01T12-00-00"
    assert (first.new_studies, first.already_known) == (30, 0)
    assert len(first.study_partition_keys) == 30
    assert all(
        k.startswith("test-extract-uclh-omop-cdm/") and k.split("/")[1].isdigit()
        for k in first.study_partition_keys
    )

    _, second = _ingest(database, extract)
    assert (second.new_studies, second.already_known) == (0, 30)
    assert second.study_partition_keys == first.study_partition_keys
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 30
        assert session.scalar(select(func.count()).select_from(ExtractStudy)) == 30
        assert session.scalar(select(func.count()).select_from(Extract)) == 1
        statuses = set(session.scalars(select(Study.status)))
    assert statuses == {StudyStatus.QUEUED.value}


def test_later_extract_reuses_known_studies(database: VoxlDatabase, tmp_path: Path) -> None:
    rows = synthetic_extract_rows(10, seed=2)
    write_omop_extract(tmp_path / "e1", rows)
    _, first = _ingest(database, tmp_path / "e1")
    # The next extract of the same project: 5 old studies (with new sequential ids) + 3 new ones.
    new = synthetic_extract_rows(3, seed=9)
    for row in new:
        row.person_id += 100
    later = rows[:5] + new
    for index, row in enumerate(later):
        row.procedure_occurrence_id = 100 + index
    from datetime import datetime

    write_omop_extract(tmp_path / "e2", later, extract_datetime=datetime(2026, 12, 1))
    _, second = _ingest(database, tmp_path / "e2")
    assert (second.new_studies, second.already_known) == (3, 5)
    assert set(first.study_partition_keys[:5]) <= set(second.study_partition_keys)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 13
        assert session.scalar(select(func.count()).select_from(ExtractStudy)) == 18


def test_two_procedures_of_one_study_link_to_one_study_row(
    database: VoxlDatabase, tmp_path: Path
) -> None:
    rows = synthetic_extract_rows(3)
    rows[2].person_id, rows[2].mrn = rows[1].person_id, rows[1].mrn
    rows[2].accession_number, rows[2].study_uid = rows[1].accession_number, rows[1].study_uid
    _, counts = _ingest(database, write_omop_extract(tmp_path / "e", rows))
    assert counts.imaging_studies == 3 and counts.new_studies == 2
    assert len(counts.study_partition_keys) == 2


def test_unregistered_extract_is_refused(database: VoxlDatabase, tmp_path: Path) -> None:
    cohort = read_extract(write_omop_extract(tmp_path / "e", synthetic_extract_rows(2)))
    with pytest.raises(LookupError, match="not registered"):
        persist_cohort(database, cohort, cohort.summary.project_slug)


def test_whole_project_scan_path_gives_same_ids(
    database: VoxlDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.cohort import ingest

    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(12, seed=4))
    _, first = _ingest(database, extract)
    monkeypatch.setattr(ingest, "WHOLE_PROJECT_SCAN_ABOVE", 0)
    _, again = _ingest(database, extract)
    assert again.already_known == 12 and again.study_partition_keys == first.study_partition_keys
