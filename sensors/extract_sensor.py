"""Sensor: each new complete extract in the extracts folder (the ``extracts`` resource) becomes
an extract partition and a ``cohort_messages`` run (a CSV file may hold several extracts). A source that cannot be registered
(unreadable, an unregistered project, an identity another source holds) is reported once, with the
reason, here and in `voxl status`; the other sources go on in the same tick. A failed extract runs
again when a corrected copy arrives or its files change."""

import json
import os

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from resources.extracts import ExtractsFolderResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cohort.discovery import scan_extracts
from voxl_assets.partitions import EXTRACTS


def _reported(cursor: dict[str, object]) -> dict[str, str]:
    reported = cursor.get("reported", {})
    if isinstance(reported, list):  # cursors written before problems had reasons
        return {str(name): "" for name in reported}
    return {str(k): str(v) for k, v in dict(reported).items()}  # type: ignore[call-overload]


@sensor(
    name="new_extract_sensor",
    asset_selection=[cohort_messages],
    minimum_interval_seconds=int(os.environ.get("VOXL_EXTRACT_SENSOR_INTERVAL", "30")),
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers each new complete OMOP ES extract and materialises its cohort messages.",
)
def new_extract_sensor(
    context: SensorEvaluationContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
    extracts: ExtractsFolderResource,
) -> SensorResult:
    if not extracts.path.is_dir():
        # Shown on every tick in the UI, not stored as a problem of a source: a fresh install
        # may not have the folder yet, and a misconfigured one must not look like "no extracts".
        return SensorResult(
            skip_reason=f"the extracts folder {extracts.path} does not exist (VOXL_EXTRACTS_DIR)",
            cursor=context.cursor,
        )
    cursor = json.loads(context.cursor) if context.cursor else {}
    report = scan_extracts(
        voxl_db.database,
        projects.load(),
        extracts.path,
        quiet_seconds=extracts.quiet_seconds,
        seen=set(cursor.get("seen", [])),
        reported=_reported(cursor),
    )
    for problem in report.problems:
        context.log.error(problem)
    for notice in report.notices:
        context.log.info(notice)
    keys = list(dict.fromkeys(r.key for r in report.to_run))
    return SensorResult(
        run_requests=[RunRequest(run_key=r.run_key, partition_key=r.key) for r in report.to_run],
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(EXTRACTS, keys)] if keys else [],
        cursor=json.dumps({"seen": sorted(report.seen), "reported": report.reported}),
    )


__all__ = ["new_extract_sensor"]
