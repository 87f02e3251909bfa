"""Batches of study partitions: only studies still queued, one project per run, higher-priority
projects first, and runs for waiting studies that skip the rest of their range."""

from datetime import datetime, timedelta
from pathlib import Path

from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.imaging.batches import (
    ONLY_STATUS_TAG,
    QueuedCursor,
    due_waiting_studies,
    only_statuses,
    queued_batch_requests,
    waiting_batch_requests,
)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _ranges(requests: list) -> list[tuple[str, str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END], r.tags["dagster/priority"]) for r in requests]


def _queued(keys: list[str]) -> list[tuple[int, str]]:
    return sorted((int(key.rpartition("/")[2]), key.rpartition("/")[0]) for key in keys)


def test_batches_split_at_projects_and_follow_priority() -> None:
    keys = ["low/1", "low/2", "low/3", "high/4", "high/5", "low/6"]
    requests, cursor = queued_batch_requests(
        keys, _queued(keys), QueuedCursor(), 2, 10, {"high": 5, "low": 0}
    )
    assert cursor == QueuedCursor(6)
    assert _ranges(requests) == [
        ("high/4", "high/5", "5"),
        ("low/1", "low/2", "0"),
        ("low/3", "low/3", "0"),
        ("low/6", "low/6", "0"),
    ]
    assert len({r.run_key for r in requests}) == 4
    # Runs skip studies that end before they start; a re-executed run finishes half-done ones.
    assert all(
        only_statuses(r.tags[ONLY_STATUS_TAG]) == {"queued", "retrieved", "anonymised"}
        for r in requests
    )


def test_batches_stop_at_max_runs_and_resume_from_the_cursor() -> None:
    keys = [f"p/{n}" for n in range(1, 8)]
    queued = _queued(keys)
    first, cursor = queued_batch_requests(keys, queued, QueuedCursor(), 3, 2)
    assert cursor == QueuedCursor(6) and _ranges(first) == [
        ("p/1", "p/3", "0"),
        ("p/4", "p/6", "0"),
    ]
    # Studies 1-6 are still queued (their runs have not started): only 7 is new.
    rest, cursor = queued_batch_requests(keys, queued, cursor, 3, 2)
    assert cursor == QueuedCursor(7) and _ranges(rest) == [("p/7", "p/7", "0")]
    again, same = queued_batch_requests(keys, queued, cursor, 3, 2)
    assert again == [] and same == cursor


def test_only_queued_studies_are_requested_and_ranges_skip_the_others() -> None:
    keys = [f"p/{n}" for n in range(1, 9)]
    # 3, 4 and 7 were processed by a run outside the sensor (`voxl backfill --in-process`).
    queued = _queued(["p/1", "p/2", "p/5", "p/6", "p/8"])
    requests, cursor = queued_batch_requests(keys, queued, QueuedCursor(), 10, 10)
    assert _ranges(requests) == [("p/1", "p/2", "0"), ("p/5", "p/6", "0"), ("p/8", "p/8", "0")]
    assert cursor == QueuedCursor(8)


def test_nothing_is_requested_when_nothing_is_queued() -> None:
    keys = [f"p/{n}" for n in range(1, 5)]
    requests, cursor = queued_batch_requests(keys, [], QueuedCursor(), 10, 10)
    assert requests == [] and cursor == QueuedCursor(0)


def test_a_study_whose_partition_is_not_there_yet_is_requested_later() -> None:
    queued = _queued(["p/1", "p/2", "q/3", "q/4"])
    # q's cohort run has stored its studies but not yet added their partitions.
    first, cursor = queued_batch_requests(["p/1", "p/2"], queued, QueuedCursor(), 10, 10)
    assert _ranges(first) == [("p/1", "p/2", "0")] and cursor == QueuedCursor(2)
    keys = ["p/1", "p/2", "q/3", "q/4"]
    second, cursor = queued_batch_requests(keys, queued, cursor, 10, 10)
    assert _ranges(second) == [("q/3", "q/4", "0")] and cursor == QueuedCursor(4)


def test_a_later_study_requested_first_is_remembered_until_the_earlier_one_is() -> None:
    queued = _queued(["p/1", "q/2"])
    # q/2's partition came first (two cohort runs finishing out of order).
    first, cursor = queued_batch_requests(["q/2"], queued, QueuedCursor(), 10, 10)
    assert _ranges(first) == [("q/2", "q/2", "0")]
    assert cursor == QueuedCursor(0, frozenset({2}))
    second, cursor = queued_batch_requests(["q/2", "p/1"], queued, cursor, 10, 10)
    assert _ranges(second) == [("p/1", "p/1", "0")] and cursor == QueuedCursor(2)


def test_the_positional_cursor_of_earlier_versions_is_understood() -> None:
    keys = ["p/1", "p/2", "p/3", "p/5"]
    cursor = QueuedCursor.load("3", lambda: keys)
    assert cursor == QueuedCursor(3)
    requests, _ = queued_batch_requests(keys, _queued(keys), cursor, 10, 10)
    assert _ranges(requests) == [("p/5", "p/5", "0")]
    assert QueuedCursor.load(cursor.dump(), lambda: []) == cursor
    # a positional cursor of 0 requested nothing: study 1 is still to be requested
    assert QueuedCursor.load("0", lambda: ["p/1", "p/2"]) == QueuedCursor(0)


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
    queued = [(1, "known"), (2, "unlisted"), (3, "urgent")]
    requests, _ = queued_batch_requests(
        keys, queued, QueuedCursor(), 5, 10, {"known": 0, "urgent": 1}
    )
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
