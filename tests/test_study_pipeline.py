"""Orchestration of per-study stages: order, failures isolated, bounded concurrency, states."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.imaging.pipeline import (
    Stage,
    StageOutcome,
    StageResult,
    run_stage,
    run_studies,
)
from voxl_assets.outcomes import StudyFailure, StudyFiltered
from voxl_assets.study_state import (
    StudyRequest,
    load_study_requests,
    set_status,
    study_id_from_partition_key,
)


def _request(number: int) -> StudyRequest:
    return StudyRequest(
        number,
        "p",
        f"MRN{number}",
        f"ACC{number}",
        f"1.2.{number}",
        "",
        None,
        StudyStatus.QUEUED,
        None,
    )


def test_stages_run_in_order_and_failures_stay_with_their_study() -> None:
    calls: list[tuple[int, Stage]] = []
    lock = threading.Lock()

    def stage(name: Stage, fail_on: int | None = None, filter_on: int | None = None):
        def run(request: StudyRequest, previous: dict[Stage, StageOutcome]) -> dict[str, Any]:
            with lock:
                calls.append((request.study_id, name))
            if request.study_id == fail_on:
                raise StudyFailure("not found on the VNA")
            if request.study_id == filter_on:
                raise StudyFiltered("modality not in the project's list")
            if request.study_id == 4:
                raise KeyError("SECRET-MRN-VALUE")
            return {"instances": 3, "previous": sorted(previous)}

        return run

    stages = {
        Stage.RAW: stage(Stage.RAW, fail_on=2),
        Stage.ANONYMISED: stage(Stage.ANONYMISED, filter_on=3),
        Stage.UPLOAD: stage(Stage.UPLOAD),
    }
    outcomes = list(run_studies([_request(n) for n in range(1, 6)], stages, workers=3))
    by_study: dict[str, list[StageOutcome]] = {}
    for outcome in outcomes:
        by_study.setdefault(outcome.study_key, []).append(outcome)
    assert [o.result for o in by_study["p/1"]] == [StageResult.DONE] * 3
    assert by_study["p/1"][2].metadata["previous"] == ["anonymised_study", "raw_study"]
    assert [o.result for o in by_study["p/2"]] == [
        StageResult.FAILED,
        StageResult.SKIPPED,
        StageResult.SKIPPED,
    ]
    assert by_study["p/2"][0].reason == "not found on the VNA"
    assert [o.result for o in by_study["p/3"]] == [
        StageResult.DONE,
        StageResult.FILTERED,
        StageResult.SKIPPED,
    ]
    unexpected = by_study["p/4"][0]
    assert unexpected.result is StageResult.FAILED
    assert "KeyError" in (unexpected.reason or "") and "SECRET" not in (unexpected.reason or "")
    assert (2, Stage.ANONYMISED) not in calls


def test_concurrency_is_bounded() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow(request: StudyRequest, previous: dict[Stage, StageOutcome]) -> dict[str, Any]:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return {}

    outcomes = list(run_studies([_request(n) for n in range(20)], {Stage.RAW: slow}, workers=4))
    assert len(outcomes) == 20
    assert peak == 4


def test_only_selected_stages_run() -> None:
    seen: list[Stage] = []

    def record(stage: Stage):
        def run(request: StudyRequest, previous: dict[Stage, StageOutcome]) -> dict[str, Any]:
            seen.append(stage)
            return {}

        return run

    list(run_studies([_request(1)], {Stage.ANONYMISED: record(Stage.ANONYMISED)}, workers=1))
    assert seen == [Stage.ANONYMISED]


def test_status_transitions_and_requests(tmp_path: Path) -> None:
    db = VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")
    with db.session() as session:
        session.add_all(
            [
                Study(project="p", mrn="1", accession_number="A"),
                Study(project="p", mrn="2", accession_number="B"),
            ]
        )
    requests = load_study_requests(db, ["p/2", "p/1", "p/99"])
    assert [r.study_id for r in requests] == [2, 1]
    assert "MRN" not in repr(requests[0]) and "A" not in repr(requests[0]).replace(
        "StudyRequest", ""
    )
    set_status(db, 1, StudyStatus.FAILED, reason="not found on the VNA", count_attempt=True)
    set_status(db, 2, StudyStatus.RETRIEVED, details={"instances": 5})
    set_status(db, 2, StudyStatus.UPLOADED, details={"bytes": 10})
    with db.session() as session:
        failed, uploaded = session.get(Study, 1), session.get(Study, 2)
        assert failed is not None and uploaded is not None
        assert (failed.status, failed.failure_reason, failed.attempts) == (
            "failed",
            "not found on the VNA",
            1,
        )
        assert uploaded.retrieved_at is not None and uploaded.exported_at is not None
        assert uploaded.details == {"instances": 5, "bytes": 10}
    set_status(db, 1, StudyStatus.QUEUED)
    with db.session() as session:
        study = session.get(Study, 1)
        assert study is not None and study.failure_reason is None


def test_partition_key_parsing() -> None:
    assert study_id_from_partition_key("my-project/42") == 42
    with pytest.raises(ValueError, match="not a study partition key"):
        study_id_from_partition_key("42")


@pytest.mark.parametrize("returns_outcome", [False, True])
def test_a_stage_is_timed_whatever_it_returns(returns_outcome: bool) -> None:
    """The anonymise stage returns its own outcome (with its checks): its seconds, shown on the
    materialisation, are measured like any other stage's, not left at the placeholder 0."""

    def slow(request: StudyRequest, _previous: dict[Stage, StageOutcome]) -> Any:
        time.sleep(0.03)
        if returns_outcome:
            return StageOutcome(request.partition_key, Stage.ANONYMISED, StageResult.DONE, 0.0)
        return {"instances": 1}

    outcome = run_stage(_request(1), Stage.ANONYMISED, slow, {})
    assert outcome.result is StageResult.DONE and outcome.seconds >= 0.03
