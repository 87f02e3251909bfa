"""Batches of study partitions: one project per run, higher-priority projects first, and runs for
waiting studies that skip the rest of their range."""

from datetime import datetime, timedelta
from pathlib import Path

from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.imaging.batches import (
    ONLY_STATUS_TAG,
    due_waiting_studies,
    study_batch_requests,
    waiting_batch_requests,
)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _ranges(requests: list) -> list[tuple[str, str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END], r.tags["dagster/priority"]) for r in requests]


def test_batches_split_at_projects_and_follow_priority() -> None:
    keys = ["low/1", "low/2", "low/3", "high/4", "high/5", "low/6"]
    requests, cursor = study_batch_requests(keys, 0, 2, 10, {"high": 5, "low": 0})
    assert cursor == 6
    assert _ranges(requests) == [
        ("high/4", "high/5", "5"),
        ("low/1", "low/2", "0"),
        ("low/3", "low/3", "0"),
        ("low/6", "low/6", "0"),
    ]
    assert len({r.run_key for r in requests}) == 4


def test_batches_stop_at_max_runs_and_resume_from_the_cursor() -> None:
    keys = [f"p/{n}" for n in range(1, 8)]
    first, cursor = study_batch_requests(keys, 0, 3, 2)
    assert cursor == 6 and _ranges(first) == [("p/1", "p/3", "0"), ("p/4", "p/6", "0")]
    rest, cursor = study_batch_requests(keys, cursor, 3, 2)
    assert cursor == 7 and _ranges(rest) == [("p/7", "p/7", "0")]
    again, same = study_batch_requests(keys, cursor, 3, 2)
    assert again == [] and same == 7


def test_waiting_runs_cover_only_due_studies_and_key_on_the_opening() -> None:
    keys = ["a/1", "b/2", "a/3", "a/4", "a/5"]
    opening = datetime(2026, 11, 25, 20, 0)
    due = {"a/1": opening, "b/2": opening, "a/4": opening}
    requests = waiting_batch_requests(keys, due, 10, {"b": 2})
    assert _ranges(requests) == [("b/2", "b/2", "2"), ("a/1", "a/1", "0"), ("a/4", "a/4", "0")]
    assert all(r.tags[ONLY_STATUS_TAG] == "waiting" for r in requests)
    later = {key: datetime(2026, 11, 26, 20, 0) for key in due}
    assert {r.run_key for r in requests}.isdisjoint(
        {r.run_key for r in waiting_batch_requests(keys, later, 10)}
    )


def test_waiting_runs_hold_at_most_the_batch_size() -> None:
    keys = ["a/1", "a/2", "a/3", "a/4", "a/5"]
    opening = datetime(2026, 11, 25, 20, 0)
    requests = waiting_batch_requests(keys, dict.fromkeys(keys, opening), 2)
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests] == [
        ("a/1", "a/2"),
        ("a/3", "a/4"),
        ("a/5", "a/5"),
    ]


def test_a_project_without_a_priority_ranks_as_zero() -> None:
    keys = ["known/1", "unlisted/2", "urgent/3"]
    requests, _ = study_batch_requests(keys, 0, 5, 10, {"known": 0, "urgent": 1})
    assert [r.tags[RANGE_START] for r in requests] == ["urgent/3", "known/1", "unlisted/2"]
    assert requests[2].tags["dagster/priority"] == "0"


def test_a_waiting_study_is_due_from_the_moment_it_may_run(tmp_path: Path) -> None:
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    opening = datetime(2026, 11, 25, 20, 0)
    with database.session() as session:
        session.add(
            Study(
                id=7,
                project="p",
                mrn="m",
                status=StudyStatus.WAITING.value,
                not_before=opening,
            )
        )
        session.add(Study(id=8, project="p", mrn="n", status=StudyStatus.QUEUED.value))
    assert due_waiting_studies(database, opening - timedelta(seconds=1)) == {}
    assert due_waiting_studies(database, opening) == {"p/7": opening}
