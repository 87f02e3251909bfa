"""``cohort_messages``: an OMOP ES extract becomes one message per imaging study in the VOXL db."""

from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.cohort.extract_reader import ExtractError, read_any_extract
from voxl_assets.cohort.ingest import find_extract, persist_cohort
from voxl_assets.partitions import STUDIES, extract_partitions
from voxl_assets.progress import extract_progress_markdown

BAD_INPUT = (
    "bad_input"  # Failure metadata: the extract or its registration is at fault (`voxl` exits 2)
)


@asset(
    partitions_def=extract_partitions,
    group_name="cohort",
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
    with database.session() as session:
        extract = find_extract(session, context.partition_key)
        if extract is None:
            raise Failure(
                f"extract {context.partition_key} is not registered in the VOXL database; "
                "register it with `voxl populate PATH` (the sensor does this for new extracts)",
                metadata={BAD_INPUT: True},
            )
        source, project = Path(extract.source_path), extract.project
    if project not in projects.load():
        raise Failure(
            f"project '{project}' has no definition in project_definitions/; "
            "register it by pull request before processing its extracts",
            metadata={BAD_INPUT: True},
        )
    try:
        cohort = read_any_extract(source)
    except ExtractError as exc:
        raise Failure(str(exc), metadata={BAD_INPUT: True}) from None
    counts = persist_cohort(database, cohort, project)
    context.instance.add_dynamic_partitions(STUDIES, counts.study_partition_keys)
    context.log.info(
        f"{counts.imaging_studies} imaging studies ({counts.new_studies} new, "
        f"{counts.already_known} already known, {counts.skipped_not_imaging} rows not imaging)"
    )
    return MaterializeResult(
        metadata={
            **counts.as_metadata(),
            "progress": MetadataValue.md(
                extract_progress_markdown(database, context.partition_key)
            ),
        }
    )
