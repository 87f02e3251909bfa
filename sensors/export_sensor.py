"""Sensor: an extract whose studies have all ended (uploaded, filtered, or failed after retries)
gets its export. The run key holds the extract and its end counts, so an unchanged extract is
exported once, and a later change (a failed study retried and uploaded) exports it again.

An extract already exported in that end state by any run (the demo, `voxl export`, `voxl backfill
--in-process`, a run from the UI) is not exported again: the export records the end state on its
``ehr_bundle`` materialisation (``end_state``), which the sensor reads before requesting a run.
"""

import json
import os

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from resources.voxl_database import VoxlDatabaseResource
from voxl_assets.cohort.ingest import study_counts_by_status
from voxl_assets.db import Extract
from voxl_assets.db.models import extract_partition_key
from voxl_assets.progress import END_STATE, ENDED, ready_exports

EXPORT_ASSETS = [AssetKey("mapping_table"), AssetKey("ehr_bundle")]
__all__ = ["ENDED", "EXPORT_ASSETS", "extract_export_sensor", "ready_exports"]


def exported_end_state(instance: DagsterInstance, extract_key: str) -> str | None:
    """The end state the extract's latest delivered export recorded, if any."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("ehr_bundle"), asset_partitions=[extract_key]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(END_STATE)
    return str(value.value) if value is not None else None


def _exported(context: SensorEvaluationContext) -> dict[str, str]:
    """The cursor: each extract's last requested end state. One that is not understood (set by
    hand) starts over, which is safe: an extract already exported in its state is skipped."""
    if not context.cursor:
        return {}
    try:
        value = json.loads(context.cursor)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        context.log.warning("cursor not understood: starting over (exported extracts are skipped)")
        return {}
    return {str(key): str(state) for key, state in value.items()}


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
    exported = _exported(context)
    with database.session() as session:
        extracts = [(e.id, e.project, e.extract_datetime) for e in session.scalars(select(Extract))]
    counts = study_counts_by_status(database, [e[0] for e in extracts])
    requests = []
    for extract_id, project, extract_datetime in extracts:
        key = extract_partition_key(project, extract_datetime)
        signature = ready_exports(counts.get(extract_id, {}))
        if signature is None or exported.get(key) == signature:
            continue
        exported[key] = signature
        if exported_end_state(context.instance, key) == signature:
            continue  # exported in this state by a run the sensor did not request
        requests.append(
            RunRequest(
                run_key=f"export:{key}:{signature}",
                partition_key=key,
                asset_selection=EXPORT_ASSETS,
            )
        )
    return SensorResult(run_requests=requests, cursor=json.dumps(exported, sort_keys=True))
