"""``raw_study`` -> ``anonymised_study`` -> ``destination_upload``, one partition per study.

One multi-asset processes a batch of study partitions: each study flows through the selected
stages in a bounded thread pool (``voxl_assets/imaging``), and each finished stage is reported as
a per-partition materialisation. Failed, filtered and waiting studies are recorded in the VOXL db
with their reason and do not stop the batch. Metadata holds counts and pseudonymous values only.
"""

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    BackfillPolicy,
    MetadataValue,
    multi_asset,
)

from resources.hashing import HashingResource
from resources.imaging import StoresResource, VnaResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.db import StudyStatus, VoxlDatabase
from voxl_assets.deid.study import ALLOW_LIST_CHECK, IDENTIFIER_CHECK
from voxl_assets.imaging.batches import ONLY_STATUS_TAG, only_statuses
from voxl_assets.imaging.pipeline import Stage, StageOutcome, StageResult, run_studies
from voxl_assets.imaging.stages import StudyStages
from voxl_assets.partitions import study_partitions
from voxl_assets.study_state import (
    load_study_requests,
    set_status,
    study_id_from_partition_key,
)

STATUS_BY_RESULT = {
    StageResult.FAILED: StudyStatus.FAILED,
    StageResult.FILTERED: StudyStatus.FILTERED,
    StageResult.WAITING: StudyStatus.WAITING,
}


TOP_UP_TAG = "voxl/top-up-cache"  # "true": check cached studies for instances added since


def _workers() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_WORKERS", "4")))


def _closing(stages: StudyStages, outcomes: Iterator[StageOutcome]) -> Iterator[StageOutcome]:
    """``outcomes`` as they come; then (or on failure) the stages' sessions are closed."""
    try:
        yield from outcomes
    finally:
        stages.close()


@multi_asset(
    name="study_pipeline",
    specs=[
        AssetSpec(
            "raw_study",
            skippable=True,
            group_name="imaging",
            kinds={"dicom"},
            deps=[AssetDep("cohort_messages", partition_mapping=AllPartitionMapping())],
            description="The study retrieved from the VNA into the local raw cache (identifiable).",
        ),
        AssetSpec(
            "anonymised_study",
            skippable=True,
            group_name="imaging",
            kinds={"dicom"},
            deps=["raw_study"],
            description="The study de-identified with the project's allow-list and salted hashing.",
        ),
        AssetSpec(
            "destination_upload",
            skippable=True,
            group_name="imaging",
            deps=["anonymised_study"],
            description="The anonymised study delivered, exactly once, to the project's destination.",
        ),
    ],
    check_specs=[
        AssetCheckSpec(
            ALLOW_LIST_CHECK,
            asset="anonymised_study",
            description="No tag outside the project's allow-list in any output instance.",
        ),
        AssetCheckSpec(
            IDENTIFIER_CHECK,
            asset="anonymised_study",
            description="No MRN, accession, name, birth date or source UID in any output value.",
        ),
    ],
    partitions_def=study_partitions,
    can_subset=True,
    pool="vna",
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=200),
)
def study_pipeline(
    context: AssetExecutionContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
    hashing: HashingResource,
    vna: VnaResource,
    stores: StoresResource,
):  # a generator of Dagster events (materialisations, check results)
    database = voxl_db.database
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    stages = StudyStages(
        database=database,
        registry=projects.load(),
        hashing=hashing.backend(database),
        archives=vna.archives(),
        raw_cache=stores.raw_cache(),
        anonymised=stores.anonymised(),
        retry_delay=float(os.environ.get("VOXL_VNA_RETRY_DELAY_SECONDS", "2")),
        top_up_cached=context.run.tags.get(TOP_UP_TAG) == "true",
    )
    functions = {s: f for s, f in stages.functions().items() if s.value in selected}
    requests = load_study_requests(database, context.partition_keys)
    allowed = only_statuses(context.run.tags.get(ONLY_STATUS_TAG))
    if allowed is not None:
        requests = [r for r in requests if r.status.value in allowed]
    context.log.info(f"{len(requests)} studies, stages {sorted(selected)}, {_workers()} workers")
    results: Counter[str] = Counter()
    check_failures: dict[str, list[str]] = {ALLOW_LIST_CHECK: [], IDENTIFIER_CHECK: []}
    checked = 0
    reasons: Counter[str] = Counter()
    for outcome in _closing(stages, run_studies(requests, functions, workers=_workers())):
        results[f"{outcome.stage.value}:{outcome.result.value}"] += 1
        if outcome.checks:
            checked += 1
            for name, (passed, _detail) in outcome.checks.items():
                if not passed:
                    check_failures[name].append(outcome.study_key)
        if outcome.result is StageResult.DONE:
            yield AssetMaterialization(
                asset_key=AssetKey(outcome.stage.value),
                partition=outcome.study_key,
                metadata={**outcome.metadata, "seconds": round(outcome.seconds, 3)},
            )
        elif outcome.result in STATUS_BY_RESULT:
            _record_end(database, outcome)
            reasons[f"{outcome.stage.value}: {outcome.reason}"] += 1
            context.log.warning(
                f"study {outcome.study_key} {outcome.result.value} in {outcome.stage.value}: {outcome.reason}"
            )
    if Stage.ANONYMISED in functions:
        for name, failed in check_failures.items():
            yield AssetCheckResult(
                asset_key="anonymised_study",
                check_name=name,
                passed=not failed,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "studies_checked": checked,
                    "studies_failed": len(failed),
                    "failed_partitions": MetadataValue.text(", ".join(failed[:50]) or "none"),
                },
            )
    summary = ", ".join(f"{k}={v}" for k, v in sorted(results.items()))
    context.log.info(f"batch done: {summary}")
    if reasons:
        top = "; ".join(f"{count}x {reason}" for reason, count in reasons.most_common(5))
        context.log.info(f"studies that ended early: {top}")


def _record_end(database: VoxlDatabase, outcome: StageOutcome) -> None:
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
