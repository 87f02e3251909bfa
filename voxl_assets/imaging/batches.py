"""Run requests for batches of study partitions: the study sensor's queued studies, and studies
whose archive window has opened. Plain functions, so tests call them without a Dagster instance.

A batch is a contiguous range of one project's partitions (Dagster runs a partition range as one
run); the run carries the project's priority as ``dagster/priority``, which the queued run
coordinator uses to dequeue higher-priority projects first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
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
ONLY_STATUS_TAG = "voxl/only-status"  # the run processes only studies in these states (a,b,...)
TOP_UP_TAG = "voxl/top-up-cache"  # "true": check cached studies for instances added since
FORCE_UPLOAD_TAG = "voxl/force-upload"  # "true": deliver again studies already delivered
# A study batch works on studies not yet at an end: queued ones, and those a crashed run left half
# done (re-executing the run from the UI finishes them); uploaded, filtered or failed ones are
# skipped, however they got there.
UNFINISHED = ",".join(
    s.value for s in (StudyStatus.QUEUED, StudyStatus.RETRIEVED, StudyStatus.ANONYMISED)
)


def only_statuses(tag: str | None) -> set[str] | None:
    """The states a run's ``voxl/only-status`` tag allows, or None for every state."""
    return set(tag.split(",")) if tag else None


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


@dataclass(frozen=True)
class QueuedCursor:
    """The study sensor's memory: every queued study with an id up to ``after`` has been
    requested, and so have the ids in ``above`` (normally none: studies are requested in id order,
    but a study whose partition is not there yet is left for a later tick)."""

    after: int = 0
    above: frozenset[int] = frozenset()

    def dump(self) -> str:
        return json.dumps({"after": self.after, "above": sorted(self.above)})

    @classmethod
    def load(cls, text: str | None, partition_keys: Callable[[], Sequence[str]]) -> QueuedCursor:
        if not text:
            return cls()
        value = json.loads(text)
        if isinstance(value, int):
            # Before VOXL tracked queued studies the cursor was a position in the partition list:
            # everything before it had been requested.
            done = partition_keys()[:value]
            return cls(max((study_id_of(key) for key in done), default=0))
        return cls(int(value["after"]), frozenset(int(i) for i in value.get("above", [])))


def study_id_of(key: str) -> int:
    return int(key.rpartition("/")[2])


def queued_studies(database: VoxlDatabase) -> list[tuple[int, str]]:
    """(id, project) of every study still queued, by id."""
    with database.session() as session:
        return [
            (study_id, project)
            for study_id, project in session.execute(
                select(Study.id, Study.project)
                .where(Study.status == StudyStatus.QUEUED.value)
                .order_by(Study.id)
            )
        ]


def contiguous_batches(
    keys: Sequence[str], wanted: Collection[str], size: int, max_runs: int
) -> list[list[str]]:
    """The ``wanted`` keys in runs of consecutive ``keys`` (Dagster runs a partition range as one
    run), one project per run, at most ``size`` each and ``max_runs`` runs: a range never spans a
    key it does not want, so a run holds exactly the studies it was requested for."""
    batches: list[list[str]] = []
    chunk: list[str] = []
    for key in keys:
        if key not in wanted:
            if chunk:
                batches.append(chunk)
                chunk = []
        elif chunk and (len(chunk) >= size or project_of(chunk[0]) != project_of(key)):
            batches.append(chunk)
            chunk = [key]
        else:
            chunk.append(key)
        if len(batches) >= max_runs:
            return batches
    if chunk:
        batches.append(chunk)
    return batches


def queued_batch_requests(
    keys: Sequence[str],
    queued: Sequence[tuple[int, str]],
    cursor: QueuedCursor,
    size: int,
    max_runs: int,
    priorities: dict[str, int] | None = None,
) -> tuple[list[RunRequest], QueuedCursor]:
    """Runs for the ``queued`` studies (id, project) not requested yet, over their partitions
    ``keys`` (in Dagster's order), highest priority first; and the new cursor.

    Only studies still queued in the VOXL db are requested, so studies that a run outside the
    sensor has already processed (``voxl backfill --in-process``, the demo, a backfill from the
    UI) are never requested again. The runs carry ``voxl/only-status: queued`` too, so a study
    processed between the request and the run is skipped by the run.
    """
    priorities = priorities or {}
    fresh = [
        (study_id, project)
        for study_id, project in queued
        if study_id > cursor.after and study_id not in cursor.above
    ]
    existing = set(keys)
    wanted = {study_partition_key(project, study_id) for study_id, project in fresh} & existing
    batches = contiguous_batches(keys, wanted, size, max_runs)
    batches.sort(key=lambda chunk: -priorities.get(project_of(chunk[0]), 0))  # stable
    requests = [
        _range_request(
            f"studies:{chunk[0]}..{chunk[-1]}",
            chunk,
            priorities.get(project_of(chunk[0]), 0),
            {ONLY_STATUS_TAG: UNFINISHED, "voxl/batch": f"{len(chunk)} studies"},
        )
        for chunk in batches
    ]
    requested = {study_id_of(key) for chunk in batches for key in chunk} | cursor.above
    left = [study_id for study_id, _ in fresh if study_id not in requested]
    seen = [study_id for study_id, _ in fresh] + [cursor.after, *cursor.above]
    after = left[0] - 1 if left else max(seen)
    return requests, QueuedCursor(after, frozenset(i for i in requested if i > after))


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
