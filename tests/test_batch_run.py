"""A run's batch of studies without Dagster (``voxl_assets/imaging/batch_run.py``): which studies
it takes, the state a study that ended early is left in, and the tally the run reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tests.helpers.studies import add_studies
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key
from voxl_assets.imaging.batch_run import BatchTally, StudyBatch, record_end, select_requests
from voxl_assets.imaging.pipeline import Stage, StageOutcome, StageResult
from voxl_assets.outcomes import StudyFailure, StudyFiltered
from voxl_assets.study_state import StudyRequest


def _database(tmp_path: Path) -> VoxlDatabase:
    return VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")


def _study(database: VoxlDatabase, study_id: int) -> Study:
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        session.expunge(study)
        return study


def test_the_run_takes_the_studies_its_tag_allows_in_partition_order(tmp_path: Path) -> None:
    database = _database(tmp_path)
    queued, uploaded, failed = add_studies(database, "p", ["queued", "uploaded", "failed"])
    keys = [study_partition_key("p", i) for i in (failed, queued, uploaded)]
    assert [r.study_id for r in select_requests(database, keys, None)] == [failed, queued, uploaded]
    assert [r.study_id for r in select_requests(database, keys, "queued,failed")] == [
        failed,
        queued,
    ]


def test_a_waiting_study_keeps_its_opening_in_utc_and_a_failed_retrieval_counts(
    tmp_path: Path,
) -> None:
    database = _database(tmp_path)
    waiting, failed = add_studies(database, "p", ["queued", "queued"])
    opens = datetime(2026, 11, 2, 20, 0, tzinfo=timezone(timedelta(hours=1)))
    record_end(
        database,
        StageOutcome(
            study_partition_key("p", waiting),
            Stage.RAW,
            StageResult.WAITING,
            0.1,
            "archive pacs closed",
            not_before=opens,
        ),
    )
    study = _study(database, waiting)
    assert study.status == StudyStatus.WAITING.value
    assert study.not_before == opens.astimezone(UTC).replace(tzinfo=None)  # naive UTC, 19:00
    record_end(
        database,
        StageOutcome(study_partition_key("p", failed), Stage.RAW, StageResult.FAILED, 0.1, "gone"),
    )
    study = _study(database, failed)
    assert (study.status, study.failure_reason, study.attempts) == ("failed", "gone", 1)


def test_the_batch_records_ends_and_tallies_outcomes_and_checks(tmp_path: Path) -> None:
    database = _database(tmp_path)
    ok, filtered, failed = add_studies(database, "p", ["queued"] * 3)
    checks_passed = {"no_tag_outside_allow_list": (True, ""), "no_identifier_in_output": (True, "")}

    def raw(request: StudyRequest, _previous: Any) -> dict[str, Any]:
        if request.study_id == failed:
            raise StudyFailure("study not found on the VNA")
        return {}

    def anonymise(request: StudyRequest, _previous: Any) -> StageOutcome:
        if request.study_id == filtered:
            raise StudyFiltered("all 3 instances filtered out")
        return StageOutcome(
            request.partition_key, Stage.ANONYMISED, StageResult.DONE, 0.0, checks=checks_passed
        )

    keys = [study_partition_key("p", i) for i in (ok, filtered, failed)]
    batch = StudyBatch.selecting(
        database,
        {Stage.RAW: raw, Stage.ANONYMISED: anonymise, Stage.UPLOAD: raw},
        selected={"raw_study", "anonymised_study"},  # the run did not select the upload
        requests=select_requests(database, keys, None),
    )
    assert batch.checks_privacy and Stage.UPLOAD not in batch.stages
    outcomes = list(batch.run(workers=2))
    assert len(outcomes) == 6
    assert _study(database, failed).status == "failed"
    assert _study(database, filtered).status == "filtered"
    assert _study(database, ok).status == "queued"  # the stages themselves move it on
    tally = batch.tally
    assert tally.results == {
        "raw_study:done": 2,
        "raw_study:failed": 1,
        "anonymised_study:done": 1,
        "anonymised_study:filtered": 1,
        "anonymised_study:skipped": 1,
    }
    assert tally.ended_early() == (
        "studies that ended early: 1x raw_study: study not found on the VNA; "
        "1x anonymised_study: all 3 instances filtered out"
    ) or tally.ended_early() == (
        "studies that ended early: 1x anonymised_study: all 3 instances filtered out; "
        "1x raw_study: study not found on the VNA"
    )
    assert [(c.name, c.passed, c.studies_checked) for c in tally.checks()] == [
        ("no_tag_outside_allow_list", True, 1),
        ("no_identifier_in_output", True, 1),
    ]


def test_a_failed_check_names_its_partitions_and_nothing_else(tmp_path: Path) -> None:
    tally = BatchTally()
    for number in range(120):
        tally.add(
            StageOutcome(
                f"p/{number}",
                Stage.ANONYMISED,
                StageResult.FAILED,
                0.0,
                "privacy check failed",
                checks={"no_identifier_in_output": (number % 2 == 0, "")},
            )
        )
    (allow_list, identifiers) = tally.checks()
    assert allow_list.passed and allow_list.metadata()["failed_partitions"] == "none"
    metadata = identifiers.metadata()
    assert not identifiers.passed and metadata["studies_failed"] == 60
    assert metadata["failed_partitions"].split(", ")[:2] == ["p/1", "p/3"]
    assert len(metadata["failed_partitions"].split(", ")) == 50  # the first 50 shown
    assert tally.reasons == {"anonymised_study: privacy check failed": 120}
