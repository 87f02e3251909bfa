"""``raw_study`` -> ``anonymised_study`` -> ``destination_upload``, one partition per study.

One multi-asset processes a batch of study partitions: each study flows through the selected
stages in a bounded thread pool (``voxl_assets/imaging/batch_run.py``, which also records failed,
filtered and waiting studies in the VOXL db with their reason and tallies the batch), and each
finished stage is reported here as a per-partition materialisation; one study ending early does
not stop the batch. Metadata holds counts and pseudonymous values only.
"""

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
    multi_asset,
)

from resources.destinations import DestinationsResource
from resources.hashing import HashingResource
from resources.imaging import StoresResource, VnaResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.deid.study import ALLOW_LIST_CHECK, IDENTIFIER_CHECK
from voxl_assets.distributed import imaging_tags
from voxl_assets.imaging.batch_run import StudyBatch, ended_early, select_requests
from voxl_assets.imaging.batches import FORCE_UPLOAD_TAG, ONLY_STATUS_TAG, TOP_UP_TAG
from voxl_assets.imaging.pipeline import StageResult
from voxl_assets.imaging.stages import StudyStages
from voxl_assets.partitions import study_partitions

__all__ = ["FORCE_UPLOAD_TAG", "TOP_UP_TAG", "study_pipeline"]


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
    op_tags=imaging_tags(),  # the Celery queue of archive-facing workers, when distributed
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=200),
)
def study_pipeline(
    context: AssetExecutionContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
    hashing: HashingResource,
    vna: VnaResource,
    stores: StoresResource,
    destinations: DestinationsResource,
):  # a generator of Dagster events (materialisations, check results)
    database = voxl_db.database
    stages = StudyStages(
        database=database,
        registry=projects.load(),
        hashing=hashing.backend(database),
        archives=vna.archives(database),
        raw_cache=stores.raw_cache(),
        anonymised=stores.anonymised(),
        destinations=destinations.clients,
        retry_delay=vna.retry_delay_seconds,
        top_up_cached=context.run.tags.get(TOP_UP_TAG) == "true",
        force_upload=context.run.tags.get(FORCE_UPLOAD_TAG) == "true",
    )
    batch = StudyBatch.selecting(
        database,
        stages.functions(),
        selected={key.to_user_string() for key in context.selected_asset_keys},
        requests=select_requests(
            database, context.partition_keys, context.run.tags.get(ONLY_STATUS_TAG)
        ),
    )
    context.log.info(batch.describe(vna.study_workers))
    try:
        for outcome in batch.run(workers=vna.study_workers):
            if outcome.result is StageResult.DONE:
                yield AssetMaterialization(
                    asset_key=AssetKey(outcome.stage.value),
                    partition=outcome.study_key,
                    metadata={**outcome.metadata, "seconds": round(outcome.seconds, 3)},
                )
            elif ended_early(outcome):
                context.log.warning(
                    f"study {outcome.study_key} {outcome.result.value} in "
                    f"{outcome.stage.value}: {outcome.reason}"
                )
    finally:
        stages.archives.release_associations()  # kept open between the batch's studies
    if batch.checks_privacy:
        for check in batch.tally.checks():
            yield AssetCheckResult(
                asset_key="anonymised_study",
                check_name=check.name,
                passed=check.passed,
                severity=AssetCheckSeverity.ERROR,
                metadata=check.metadata(),
            )
    context.log.info(batch.tally.summary())
    ended = batch.tally.ended_early()
    if ended:
        context.log.info(ended)
