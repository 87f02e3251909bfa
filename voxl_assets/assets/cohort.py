"""``cohort_messages``: an OMOP ES extract becomes one message per imaging study in the VOXL db."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.cohort.ingest import RegistrationChanged, ingest_registered
from voxl_assets.cohort.registration import load_registration, record_ingest_failure
from voxl_assets.cohort.values import ExtractError
from voxl_assets.db import RegistrationState
from voxl_assets.distributed import extracts_tags
from voxl_assets.partitions import EXTRACTS, STUDIES, extract_partitions
from voxl_assets.progress import extract_progress_markdown

BAD_INPUT = (
    "bad_input"  # Failure metadata: the extract or its registration is at fault (`voxl` exits 2)
)


@asset(
    partitions_def=extract_partitions,
    group_name="cohort",
    op_tags=extracts_tags(),  # the Celery queue of the host holding the extracts
    kinds={"parquet", "sql"},
    description=(
        "One cohort message per imaging study of an OMOP ES extract (study UID, MRN, accession, "
        "study datetime, project, extract datetime), persisted in the VOXL database; adds the "
        "study partitions. Metadata holds counts only."
    ),
)
def cohort_messages(
    context: AssetExecutionContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
) -> MaterializeResult:
    database = voxl_db.database
    key = context.partition_key
    registration = load_registration(database, key)
    if registration is None:
        raise Failure(
            f"extract {key} is not registered in the VOXL database; "
            "register it with `voxl populate PATH` (the sensor does this for new extracts)",
            metadata={BAD_INPUT: True},
        )

    def failed(reason: str, *, bad_input: bool) -> Failure:
        # Only the reason is kept: it names file, column and row, never a value. A failed
        # extract that was never ingested leaves no partition behind.
        record_ingest_failure(database, key, registration.source_path, reason, bad_input=bad_input)
        if registration.state != RegistrationState.INGESTED.value:
            context.instance.delete_dynamic_partition(EXTRACTS, key)
        return Failure(reason, metadata={BAD_INPUT: bad_input})

    if registration.project not in projects.load():
        raise failed(
            f"project '{registration.project}' has no definition in project_definitions/; "
            "register it by pull request before processing its extracts",
            bad_input=True,
        )
    try:
        counts = ingest_registered(database, registration)
    except ExtractError as exc:
        raise failed(str(exc), bad_input=True) from None
    except RegistrationChanged as exc:
        raise Failure(str(exc)) from None
    except Exception as exc:  # a driver's message may quote identifiers: keep only its type
        raise failed(
            f"ingest of {registration.source_path} failed ({type(exc).__name__}); nothing was "
            "written, run it again",
            bad_input=False,
        ) from None
    context.instance.add_dynamic_partitions(STUDIES, counts.study_partition_keys)
    context.log.info(
        f"{counts.imaging_studies} imaging studies ({counts.new_studies} new, "
        f"{counts.already_known} already known, {counts.skipped_not_imaging} rows not imaging, "
        f"{counts.duplicate_rows_folded} duplicate rows folded)"
    )
    for warning in counts.warnings:
        context.log.warning(f"extract {key}: {warning}")
    return MaterializeResult(
        metadata={
            **counts.as_metadata(),
            "warnings": "; ".join(counts.warnings) or "none",
            "progress": MetadataValue.md(extract_progress_markdown(database, key)),
        }
    )
