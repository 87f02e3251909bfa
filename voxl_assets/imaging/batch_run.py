"""One run's batch of studies through the stages: which studies the run takes, the state a study
that ended early is left in, and the tally the run reports. No Dagster here: the
``study_pipeline`` asset turns what ``StudyBatch.run`` yields into materialisations, and the tally
into check results and log lines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from voxl_assets.db import StudyStatus, VoxlDatabase
from voxl_assets.deid.study import ALLOW_LIST_CHECK, IDENTIFIER_CHECK
from voxl_assets.imaging.batches import only_statuses
from voxl_assets.imaging.pipeline import Stage, StageOutcome, StageResult, run_studies
from voxl_assets.study_state import (
    StudyRequest,
    load_study_requests,
    set_status,
    study_id_from_partition_key,
)

# How a study that ended early is left in the VOXL db.
STATUS_BY_RESULT = {
    StageResult.FAILED: StudyStatus.FAILED,
    StageResult.FILTERED: StudyStatus.FILTERED,
    StageResult.WAITING: StudyStatus.WAITING,
}
PRIVACY_CHECKS = (ALLOW_LIST_CHECK, IDENTIFIER_CHECK)
FAILED_PARTITIONS_SHOWN = 50


def select_requests(
    database: VoxlDatabase, partition_keys: Iterable[str], only_status: str | None
) -> list[StudyRequest]:
    """The studies of the run's partitions, in order, keeping only those in the states the run's
    ``voxl/only-status`` tag allows (all when it has none)."""
    requests = load_study_requests(database, partition_keys)
    allowed = only_statuses(only_status)
    if allowed is None:
        return requests
    return [r for r in requests if r.status.value in allowed]


def record_end(database: VoxlDatabase, outcome: StageOutcome) -> None:
    """Leave a study that ended early failed, filtered or waiting (until ``not_before``), with
    its reason; a failed or filtered retrieval counts as an attempt."""
    study_id = study_id_from_partition_key(outcome.study_key)
    status = STATUS_BY_RESULT[outcome.result]
    if status is StudyStatus.WAITING:
        not_before = outcome.not_before
        if not_before is not None and not_before.tzinfo is not None:  # the db holds naive UTC
            not_before = not_before.astimezone(UTC).replace(tzinfo=None)
        set_status(database, study_id, status, reason=outcome.reason, not_before=not_before)
        return
    set_status(
        database, study_id, status, reason=outcome.reason, count_attempt=outcome.stage is Stage.RAW
    )


@dataclass(frozen=True)
class CheckTally:
    """One privacy check over the batch's anonymised studies."""

    name: str
    studies_checked: int
    failed_partitions: list[str]

    @property
    def passed(self) -> bool:
        return not self.failed_partitions

    def metadata(self) -> dict[str, Any]:
        shown = ", ".join(self.failed_partitions[:FAILED_PARTITIONS_SHOWN])
        return {
            "studies_checked": self.studies_checked,
            "studies_failed": len(self.failed_partitions),
            "failed_partitions": shown or "none",
        }


@dataclass
class BatchTally:
    """What the batch did: outcomes per stage and result, why studies ended early, and which
    studies failed which privacy check. Holds partition keys and reasons, never identifiers."""

    results: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    checked: int = 0
    check_failures: dict[str, list[str]] = field(
        default_factory=lambda: {name: [] for name in PRIVACY_CHECKS}
    )

    def add(self, outcome: StageOutcome) -> None:
        self.results[f"{outcome.stage.value}:{outcome.result.value}"] += 1
        if outcome.checks:
            self.checked += 1
            for name, (passed, _detail) in outcome.checks.items():
                if not passed:
                    self.check_failures.setdefault(name, []).append(outcome.study_key)
        if outcome.result in STATUS_BY_RESULT:
            self.reasons[f"{outcome.stage.value}: {outcome.reason}"] += 1

    def checks(self) -> list[CheckTally]:
        return [
            CheckTally(name, self.checked, failed) for name, failed in self.check_failures.items()
        ]

    def summary(self) -> str:
        return "batch done: " + ", ".join(f"{k}={v}" for k, v in sorted(self.results.items()))

    def ended_early(self) -> str | None:
        """The five commonest reasons studies ended early, or None when none did."""
        if not self.reasons:
            return None
        top = "; ".join(f"{count}x {reason}" for reason, count in self.reasons.most_common(5))
        return f"studies that ended early: {top}"


StageFunction = Callable[[StudyRequest, dict[Stage, StageOutcome]], Any]


@dataclass
class StudyBatch:
    """The studies of one run, through the ``stages`` the run selected (asset keys)."""

    database: VoxlDatabase
    stages: dict[Stage, StageFunction]
    requests: list[StudyRequest]
    tally: BatchTally = field(default_factory=BatchTally)

    @classmethod
    def selecting(
        cls,
        database: VoxlDatabase,
        functions: dict[Stage, StageFunction],
        selected: Collection[str],
        requests: list[StudyRequest],
    ) -> StudyBatch:
        return cls(database, {s: f for s, f in functions.items() if s.value in selected}, requests)

    @property
    def checks_privacy(self) -> bool:
        """Whether the batch anonymises, so its privacy checks have a result to report."""
        return Stage.ANONYMISED in self.stages

    def describe(self, workers: int) -> str:
        stages = sorted(stage.value for stage in self.stages)
        return f"{len(self.requests)} studies, stages {stages}, {workers} workers"

    def run(self, workers: int) -> Iterator[StageOutcome]:
        """Each stage's outcome as it comes, in the calling thread; a study that ends early is
        recorded in the VOXL db before its outcome is yielded."""
        for outcome in run_studies(self.requests, self.stages, workers=workers):
            self.tally.add(outcome)
            if ended_early(outcome):
                record_end(self.database, outcome)
            yield outcome


def ended_early(outcome: StageOutcome) -> bool:
    """The study stopped at this stage: failed, filtered or waiting."""
    return outcome.result in STATUS_BY_RESULT
