"""The exactly-once records without a network peer (the local destination): what is recorded
when, a cut-off attempt making the next one a resend, a failed attempt not being one, force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    export_count,
    top_up,
)
from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import StudyExport, UploadAttempt
from voxl_assets.project_config import LocalDirectoryDestination
from voxl_assets.upload.base import UploadError
from voxl_assets.upload.exactly_once import (
    Delivered,
    already_exported,
    begin_attempt,
    delivered,
    new_instances,
    record_export,
    upload_study_once,
)
from voxl_assets.upload.factory import make_image_uploader


def _attempts(database: VoxlDatabase) -> list[tuple[str | None, bool, bool]]:
    with database.session() as session:
        return [
            (a.outcome, a.resend, a.finished_at is not None)
            for a in session.scalars(select(UploadAttempt).order_by(UploadAttempt.id))
        ]


@pytest.fixture
def uploader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))  # local paths are under VOXL_HOME
    made = make_image_uploader(LocalDirectoryDestination(kind="local", path="out"))
    assert made is not None
    return made


def test_an_upload_is_recorded_once_and_not_repeated(tmp_path: Path, uploader: Any) -> None:
    files = anonymised_study(tmp_path / "anon", instances=3)
    database = database_with_study(tmp_path)
    destination = uploader.describe()
    assert not already_exported(database, 1, destination)
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None and report.instances == 3 and not report.resend
    assert already_exported(database, 1, destination)
    assert not already_exported(database, 1, "elsewhere") and not already_exported(
        database, 2, destination
    )
    with database.session() as session:
        row = session.scalars(select(StudyExport)).one()
        assert (row.instances, row.bytes) == (3, report.bytes) and row.bytes > 0
    assert _attempts(database) == [("sent", False, True)]
    assert upload_study_once(database, 1, uploader, files, TARGET) is None
    assert _attempts(database) == [("sent", False, True)]  # no attempt when nothing is sent
    forced = upload_study_once(database, 1, uploader, files, TARGET, force=True)
    assert forced is not None and not forced.resend
    assert export_count(database) == 1 and len(_attempts(database)) == 2


def test_a_cut_off_attempt_makes_the_next_a_resend(tmp_path: Path, uploader: Any) -> None:
    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    destination = uploader.describe()
    first, resend = begin_attempt(database, 1, destination)  # then the process died
    assert not resend
    other, other_resend = begin_attempt(database, 1, "another destination")
    assert not other_resend and other != first
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None and report.resend
    assert _attempts(database) == [
        ("cut off", False, True),
        (None, False, False),  # the other destination's attempt is not this one's business
        ("sent", True, True),
    ]
    assert export_count(database) == 1


def test_a_failed_attempt_is_closed_and_the_retry_is_no_resend(
    tmp_path: Path, uploader: Any
) -> None:
    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    missing = [*files, tmp_path / "gone.dcm"]
    with pytest.raises((UploadError, OSError)):
        upload_study_once(database, 1, uploader, missing, TARGET)
    assert export_count(database) == 0 and _attempts(database) == [("failed", False, True)]
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None and not report.resend
    assert _attempts(database) == [("failed", False, True), ("sent", False, True)]


def test_a_second_record_refreshes_the_first(tmp_path: Path, uploader: Any) -> None:
    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None
    from dataclasses import replace

    record_export(database, 1, uploader.describe(), replace(report, instances=5, bytes=7))
    with database.session() as session:
        row = session.scalars(select(StudyExport)).one()
        assert (row.instances, row.bytes) == (5, 7)


def test_a_record_written_meanwhile_by_another_run_stands(tmp_path: Path, uploader: Any) -> None:
    """Another run records the same export between this run's check and its insert (the unique
    key refuses the second row): this run's attempt is still closed as sent."""
    from sqlalchemy import event, text

    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    destination = uploader.describe()
    other = VoxlDatabase(database.url)

    done: list[bool] = []

    def the_other_run_records_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO study_exports") and not done:
            done.append(True)
            with other.engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO study_exports (study_id, destination, instances, bytes,"
                        " exported_at) VALUES (1, :d, 2, 99, CURRENT_TIMESTAMP)"
                    ),
                    {"d": destination},
                )

    event.listen(database.engine, "before_cursor_execute", the_other_run_records_first)
    report = upload_study_once(database, 1, uploader, files, TARGET)
    event.remove(database.engine, "before_cursor_execute", the_other_run_records_first)
    assert done and report is not None and not report.resend
    with database.session() as session:
        row = session.scalars(select(StudyExport)).one()
        assert row.bytes == 99  # the other run's record stands
    assert _attempts(database) == [("sent", False, True)]


def test_a_topped_up_study_at_a_local_destination(tmp_path: Path, uploader: Any) -> None:
    """replace: the zip again, with every instance; add: the new ones in ``<uid>.rev2.zip``;
    either once (``test_redeliver_topped_up.py`` does the same against network peers)."""
    import zipfile

    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    assert upload_study_once(database, 1, uploader, files, TARGET, redeliver="add") is not None
    grown = top_up(files, 1)
    assert upload_study_once(database, 1, uploader, grown, TARGET, redeliver="never") is None
    report = upload_study_once(database, 1, uploader, grown, TARGET, redeliver="add")
    assert report is not None and (report.revision, report.instances) == (2, 1)
    folder = uploader.root / TARGET.relative_zip_path
    added = folder.with_name(f"{TARGET.pseudo_study_uid}.rev2.zip")
    with zipfile.ZipFile(added) as archive:
        assert set(archive.namelist()) == {p.name for p in grown} - {p.name for p in files}
    assert upload_study_once(database, 1, uploader, grown, TARGET, redeliver="add") is None
    again = top_up(grown, 1)
    report = upload_study_once(database, 1, uploader, again, TARGET, redeliver="replace")
    assert report is not None and (report.revision, report.instances) == (3, 4)
    with zipfile.ZipFile(folder) as archive:
        assert set(archive.namelist()) == {p.name for p in again}
    record = delivered(database, 1, uploader.describe())
    assert record is not None and (record.revision, record.instances) == (3, 4)
    assert record.names == {p.name for p in again}
    assert len(_attempts(database)) == 3


def test_a_redelivery_recorded_meanwhile_by_another_run_stands(
    tmp_path: Path, uploader: Any
) -> None:
    files = anonymised_study(tmp_path / "anon", instances=2)
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None
    destination = uploader.describe()
    attempt, _ = begin_attempt(database, 1, destination)
    stale = Delivered(revision=0, instances=2, names=frozenset())  # another run moved it on
    record_export(database, 1, destination, report, attempt, held=files, previous=stale)
    record = delivered(database, 1, destination)
    assert record is not None and record.revision == 1
    assert _attempts(database) == [("sent", False, True), ("sent", False, True)]


def test_new_instances_are_those_the_record_does_not_list() -> None:
    files = [Path("a.dcm"), Path("b.dcm"), Path("c.dcm")]
    listed = Delivered(revision=2, instances=2, names=frozenset({"a.dcm", "b.dcm"}))
    assert new_instances(listed, files) == [Path("c.dcm")]
    assert new_instances(listed, files[:2]) == []
    # A record from before instances were listed: same count, nothing new; more, unknown which.
    unlisted = Delivered(revision=1, instances=2, names=frozenset())
    assert new_instances(unlisted, files[:2]) == []
    assert new_instances(unlisted, files) is None
