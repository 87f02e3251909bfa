"""``mapping_table`` and ``ehr_bundle`` per extract (the client's ``pixl export``), with the leak
guard as a blocking check: a bundle that holds a private value is never uploaded.

``mapping_table`` returns the extract's tables (``IMAGE_LINKER``, ``IMAGE_EXCLUSIONS``); the
``extract_tables`` IO manager stores them as parquet with their row counts, and ``ehr_bundle``
loads them from there. Both run in one export run (the sensor and `voxl export` select both).
"""

from pathlib import Path

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)

from resources.destinations import DestinationsResource
from resources.imaging import StoresResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.cohort.ingest import find_extract
from voxl_assets.distributed import extracts_tags
from voxl_assets.export.bundle import (
    EXCLUSIONS,
    LINKER,
    mapping_rows,
    mapping_tables,
    private_files,
    public_column_names,
    registered_identifiers,
    write_ehr_bundle,
)
from voxl_assets.export.delivery import deliver_bundle, record_delivery
from voxl_assets.export.leak_guard import private_identifiers, scan_bundle
from voxl_assets.partitions import extract_partitions
from voxl_assets.progress import (
    END_STATE,
    extract_progress,
    extract_progress_markdown,
    ready_exports,
)

LEAK_CHECK = "no_private_value_in_bundle"
EXTRACT_TABLES = "extract_tables"  # the IO manager's resource key


@asset(
    partitions_def=extract_partitions,
    group_name="export",
    op_tags=extracts_tags(),  # the Celery queue of the host holding the extracts
    kinds={"parquet"},
    io_manager_key=EXTRACT_TABLES,
    deps=["cohort_messages", "destination_upload"],
    description=(
        "IMAGE_LINKER (procedure_occurrence_id -> pseudonymous study UID and patient id, for every "
        "exported study) and IMAGE_EXCLUSIONS (the studies not delivered, with the reason)."
    ),
)
def mapping_table(
    context: AssetExecutionContext, voxl_db: VoxlDatabaseResource
) -> Output[dict[str, pa.Table]]:
    database = voxl_db.database
    _, rows = mapping_rows(database, context.partition_key)
    tables = mapping_tables(rows)
    return Output(
        tables,
        metadata={
            "studies_linked": tables[LINKER].num_rows,
            "studies_excluded": tables[EXCLUSIONS].num_rows,
            "progress": MetadataValue.md(
                extract_progress_markdown(database, context.partition_key)
            ),
        },
    )


@asset(
    partitions_def=extract_partitions,
    group_name="export",
    op_tags=extracts_tags(),  # the Celery queue of the host holding the extracts
    kinds={"parquet"},
    check_specs=[
        AssetCheckSpec(
            LEAK_CHECK,
            asset="ehr_bundle",
            blocking=True,
            description="No value of the extract's private files appears in any file of the bundle.",
        )
    ],
    description=(
        "The extract's public EHR files, the mapping table, the de-identification report and "
        "provenance, delivered to the EHR destination."
    ),
)
def ehr_bundle(
    context: AssetExecutionContext,
    mapping_table: dict[str, pa.Table],
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
    stores: StoresResource,
    destinations: DestinationsResource,
):  # a generator of Dagster events (check result, materialisation)
    database = voxl_db.database
    key = context.partition_key
    bundle = write_ehr_bundle(database, key, stores.exports(), mapping_table)
    with database.session() as session:
        extract = find_extract(session, key)
        source = Path(extract.source_path) if extract else None
        project_slug = extract.project if extract else ""
    identifiers = (
        private_identifiers(
            private_files(source),
            public_column_names(source),
            registered_identifiers(database, key),
        )
        if source
        else None
    )
    report = scan_bundle(bundle.directory, identifiers) if identifiers is not None else None
    clean = report is not None and report.clean
    yield AssetCheckResult(
        asset_key="ehr_bundle",
        check_name=LEAK_CHECK,
        passed=clean,
        severity=AssetCheckSeverity.ERROR,
        metadata={"result": report.summary() if report else "extract source missing: not scanned"},
    )
    if not clean:
        raise Failure(
            "leak guard: the bundle holds values from the extract's private files; it was not "
            f"uploaded ({report.summary() if report else 'source missing'})"
        )
    project = projects.load().get(project_slug)
    uploader = destinations.ehr(project) if project else None
    delivery = deliver_bundle(bundle, uploader, stores.exports())
    record_delivery(database, key, delivery)
    # What the export sensor compares, so it does not export this state again.
    end_state = ready_exports(extract_progress(database, key))
    yield MaterializeResult(
        metadata={
            **bundle.metadata(),
            **delivery,
            # The de-identification report (DEID_REPORT.html and .parquet in the bundle).
            "deid_report": MetadataValue.md(bundle.deid_report_markdown()),
            "deid_report_page": MetadataValue.path(str(bundle.deid_report_page)),
            "progress": MetadataValue.md(extract_progress_markdown(database, key)),
            **({END_STATE: end_state} if end_state else {}),
        },
    )
