"""Run many studies through the imaging stages with bounded concurrency (no Dagster here).

A study flows raw -> anonymised -> upload in one worker, so its cached files stay pinned while
they are read and nothing is held in memory between stages. Each finished stage is reported as a
``StageOutcome`` (non-identifying) for the asset to turn into Dagster events; a study that fails is
marked failed in the VOXL db with its reason and the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from queue import Empty, Queue
from typing import Any

from voxl_assets.outcomes import StudyFailure, StudyFiltered, StudyWaiting, code_location
from voxl_assets.study_state import StudyRequest

log = logging.getLogger(__name__)


class Stage(StrEnum):
    RAW = "raw_study"
    ANONYMISED = "anonymised_study"
    UPLOAD = "destination_upload"


STAGE_ORDER = (Stage.RAW, Stage.ANONYMISED, Stage.UPLOAD)


class StageResult(StrEnum):
    DONE = "done"
    FILTERED = "filtered"  # ended on purpose (modality, series filters): not a failure
    FAILED = "failed"
    WAITING = "waiting"  # e.g. for an archive's time window
    SKIPPED = "skipped"  # an earlier stage ended the study


@dataclass
class StageOutcome:
    """What one stage did for one study. ``metadata`` and ``reason`` never hold identifiers."""

    study_key: str
    stage: Stage
    result: StageResult
    seconds: float
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    not_before: datetime | None = None  # for WAITING: when the study may be tried again


StageFunction = Callable[[StudyRequest, dict[Stage, StageOutcome]], StageOutcome]


def run_stage(
    request: StudyRequest,
    stage: Stage,
    function: Callable[[StudyRequest, dict[Stage, StageOutcome]], dict[str, Any] | StageOutcome],
    previous: dict[Stage, StageOutcome],
) -> StageOutcome:
    """Call ``function`` and turn its result or its exception into a ``StageOutcome``."""
    started = time.monotonic()
    try:
        result = function(request, previous)
    except StudyFiltered as exc:
        return StageOutcome(
            request.partition_key, stage, StageResult.FILTERED, time.monotonic() - started, str(exc)
        )
    except StudyWaiting as exc:
        return StageOutcome(
            request.partition_key,
            stage,
            StageResult.WAITING,
            time.monotonic() - started,
            str(exc),
            not_before=exc.not_before,
        )
    except StudyFailure as exc:
        return StageOutcome(
            request.partition_key, stage, StageResult.FAILED, time.monotonic() - started, str(exc)
        )
    except Exception as exc:  # one study must not stop the batch
        # The exception text may quote a value from a file or a peer: keep its type and where.
        where = code_location(exc)
        log.error(
            "study %s: unexpected %s in %s at %s",
            request.partition_key,
            type(exc).__name__,
            stage.value,
            where,
        )
        reason = f"unexpected {type(exc).__name__} in {stage.value} at {where}"
        return StageOutcome(
            request.partition_key, stage, StageResult.FAILED, time.monotonic() - started, reason
        )
    if isinstance(result, StageOutcome):  # a stage that reports its own checks: timed here too
        result.seconds = time.monotonic() - started
        return result
    return StageOutcome(
        request.partition_key,
        stage,
        StageResult.DONE,
        time.monotonic() - started,
        metadata=dict(result or {}),
    )


def process_study(
    request: StudyRequest,
    stages: Mapping[
        Stage, Callable[[StudyRequest, dict[Stage, StageOutcome]], dict[str, Any] | StageOutcome]
    ],
    emit: Callable[[StageOutcome], None],
) -> None:
    """Run the selected ``stages`` in order for one study, emitting each outcome."""
    previous: dict[Stage, StageOutcome] = {}
    ended: StageOutcome | None = None
    for stage in STAGE_ORDER:
        if stage not in stages:
            continue
        if ended is not None:
            emit(StageOutcome(request.partition_key, stage, StageResult.SKIPPED, 0.0, ended.reason))
            continue
        outcome = run_stage(request, stage, stages[stage], previous)
        previous[stage] = outcome
        emit(outcome)
        if outcome.result is not StageResult.DONE:
            ended = outcome


def run_studies(
    requests: Iterable[StudyRequest],
    stages: Mapping[
        Stage, Callable[[StudyRequest, dict[Stage, StageOutcome]], dict[str, Any] | StageOutcome]
    ],
    *,
    workers: int,
) -> Iterator[StageOutcome]:
    """Process ``requests`` with at most ``workers`` studies in flight; yield outcomes as they come.

    Outcomes are yielded from the calling thread, so the caller may log Dagster events safely.
    """
    outcomes: Queue[StageOutcome] = Queue()
    pending: set[Future[None]] = set()
    queue_of_requests = iter(requests)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="study") as pool:

        def submit_next() -> bool:
            request = next(queue_of_requests, None)
            if request is None:
                return False
            pending.add(pool.submit(process_study, request, stages, outcomes.put))
            return True

        for _ in range(max(1, workers)):
            if not submit_next():
                break
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            yield from _drain(outcomes)
            for future in done:
                pending.discard(future)
                future.result()  # process_study catches per-study errors; re-raise real bugs
                submit_next()
        yield from _drain(outcomes)


def _drain(outcomes: Queue[StageOutcome]) -> Iterator[StageOutcome]:
    while True:
        try:
            yield outcomes.get_nowait()
        except Empty:
            return
