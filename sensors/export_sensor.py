"""Sensor: an extract whose studies have all ended (uploaded, filtered, or failed after retries)
gets its export. The run key holds the extract and its end counts, so an unchanged extract is
exported once, and a later change (a failed study retried and uploaded) exports it again."""

import json
import os

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from resources.voxl_database import VoxlDatabaseResource
from voxl_assets.cohort.ingest import study_counts_by_status
from voxl_assets.db import Extract, StudyStatus
from voxl_assets.db.models import extract_partition_key

EXPORT_ASSETS = [AssetKey("mapping_table"), AssetKey("ehr_bundle")]
ENDED = {StudyStatus.UPLOADED.value, StudyStatus.FILTERED.value, StudyStatus.FAILED.value}


def ready_exports(counts: dict[str, int]) -> str | None:
    """A signature of the extract's end state when every study has ended, else None."""
    total = sum(counts.values())
    if total == 0 or any(state not in ENDED for state, n in counts.items() if n):
        return None
    return "-".join(f"{state}{counts.get(state, 0)}" for state in sorted(ENDED))


@sensor(
    name="extract_export_sensor",
    asset_selection=EXPORT_ASSETS,
    minimum_interval_seconds=int(os.environ.get("VOXL_EXPORT_SENSOR_INTERVAL", "30")),
    default_status=DefaultSensorStatus.RUNNING,
    description="Exports each extract (mapping table, EHR bundle) once all its studies have ended.",
)
def extract_export_sensor(
    context: SensorEvaluationContext, voxl_db: VoxlDatabaseResource
) -> SensorResult:
    from sqlalchemy import select

    database = voxl_db.database
    exported: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    with database.session() as session:
        extracts = [(e.id, e.project, e.extract_datetime) for e in session.scalars(select(Extract))]
    counts = study_counts_by_status(database, [e[0] for e in extracts])
    requests = []
    for extract_id, project, extract_datetime in extracts:
        key = extract_partition_key(project, extract_datetime)
        signature = ready_exports(counts.get(extract_id, {}))
        if signature is None or exported.get(key) == signature:
            continue
        requests.append(
            RunRequest(
                run_key=f"export:{key}:{signature}",
                partition_key=key,
                asset_selection=EXPORT_ASSETS,
            )
        )
        exported[key] = signature
    return SensorResult(run_requests=requests, cursor=json.dumps(exported, sort_keys=True))
