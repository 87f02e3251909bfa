"""Run requests for batches of study partitions: the study sensor's new studies, and studies
whose archive window has opened. Plain functions, so tests call them without a Dagster instance.

A batch is a contiguous range of one project's partitions (Dagster runs a partition range as one
run); the run carries the project's priority as ``dagster/priority``, which the queued run
coordinator uses to dequeue higher-priority projects first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from dagster import AssetKey, RunRequest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PRIORITY_TAG,
)
from sqlalchemy import select

from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key

STUDY_ASSETS = [AssetKey("raw_study"), AssetKey("anonymised_study"), AssetKey("destination_upload")]
ONLY_STATUS_TAG = "voxl/only-status"  # the run processes only studies in this state


def project_of(key: str) -> str:
    return key.rpartition("/")[0]


def _range_request(
    run_key: str, chunk: list[str], priority: int, extra_tags: dict[str, str]
) -> RunRequest:
    return RunRequest(
        run_key=run_key,
        asset_selection=STUDY_ASSETS,
        tags={
            ASSET_PARTITION_RANGE_START_TAG: chunk[0],
            ASSET_PARTITION_RANGE_END_TAG: chunk[-1],
            PRIORITY_TAG: str(priority),
            **extra_tags,
        },
    )


def study_batch_requests(
    keys: list[str],
    start: int,
    size: int,
    max_runs: int,
    priorities: dict[str, int] | None = None,
) -> tuple[list[RunRequest], int]:
    """Run requests for ``keys[start:]`` in contiguous one-project batches of at most ``size``,
    highest priority first; returns the new cursor."""
    priorities = priorities or {}
    batches: list[list[str]] = []
    position = start
    while position < len(keys) and len(batches) < max_runs:
        project = project_of(keys[position])
        end = position
        while end < len(keys) and end - position < size and project_of(keys[end]) == project:
            end += 1
        batches.append(keys[position:end])
        position = end
    batches.sort(key=lambda chunk: -priorities.get(project_of(chunk[0]), 0))  # stable
    requests = [
        _range_request(
            f"studies:{chunk[0]}..{chunk[-1]}",
            chunk,
            priorities.get(project_of(chunk[0]), 0),
            {"voxl/batch": f"{len(chunk)} studies"},
        )
        for chunk in batches
    ]
    return requests, position


def due_waiting_studies(database: VoxlDatabase, now: datetime) -> dict[str, datetime]:
    """Partition keys of waiting studies whose ``not_before`` has come, with that time
    (``now`` and the db are naive UTC)."""
    with database.session() as session:
        rows = session.execute(
            select(Study.project, Study.id, Study.not_before).where(
                Study.status == StudyStatus.WAITING.value,
                Study.not_before.is_not(None),
                Study.not_before <= now,
            )
        ).all()
    due: dict[str, datetime] = {}
    for project, study_id, not_before in rows:
        if not_before is not None:
            due[study_partition_key(project, study_id)] = not_before
    return due


def waiting_batch_requests(
    all_keys: Iterable[str],
    due: dict[str, datetime],
    size: int,
    priorities: dict[str, int] | None = None,
) -> list[RunRequest]:
    """Range runs over the due waiting studies, tagged to skip every other study in the range.

    The run key names the range and the latest ``not_before`` in it: a run already requested for
    this opening is not requested again, and a study that waits again (the window closed before
    its run) gets a new key at the next opening.
    """
    priorities = priorities or {}
    ordered = [key for key in all_keys if key in due]
    requests = []
    chunk: list[str] = []

    def flush() -> None:
        if not chunk:
            return
        opening = max(due[key] for key in chunk)
        requests.append(
            _range_request(
                f"window:{opening:%Y%m%dT%H%M%S}:{chunk[0]}..{chunk[-1]}",
                list(chunk),
                priorities.get(project_of(chunk[0]), 0),
                {
                    ONLY_STATUS_TAG: StudyStatus.WAITING.value,
                    "voxl/batch": f"{len(chunk)} waiting studies",
                },
            )
        )
        chunk.clear()

    for key in ordered:
        if chunk and (len(chunk) >= size or project_of(chunk[0]) != project_of(key)):
            flush()
        chunk.append(key)
    flush()
    requests.sort(key=lambda r: -int(r.tags[PRIORITY_TAG]))
    return requests
