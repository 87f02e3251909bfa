"""Sensor: studies still queued in the VOXL db are started in batches (raw -> anonymised -> upload).

The VOXL db, not Dagster's partition list, says what is left to do: a study that a run outside the
sensor already processed (`voxl backfill --in-process`, the demo, a backfill from the UI) is not
queued any more and is never requested again. The cursor remembers which queued studies were
requested (``QueuedCursor``), so a study waiting in the run queue is not requested twice. Each
batch is a contiguous range of one project's partitions, requested with a run key, so a sensor
stopped for a day catches up without launching any batch twice. Each run carries its project's
priority (``dagster/priority``), so the run queue serves higher-priority projects first.
"""

import os

from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets.imaging.batches import (
    STUDY_ASSETS,
    QueuedCursor,
    queued_batch_requests,
    queued_studies,
)
from voxl_assets.partitions import STUDIES
from voxl_assets.project_config import ProjectConfigError


def batch_size() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_BATCH_SIZE", "100")))


def max_runs_per_tick() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_MAX_RUNS_PER_TICK", "20")))


def project_priorities(
    context: SensorEvaluationContext, projects: ProjectRegistryResource
) -> dict[str, int]:
    """Each registered project's queue priority. A registry that does not load (a definition
    under review is broken) gives every batch the default priority rather than stalling the
    sensor; the reason is logged, and the runs report the broken registry too."""
    try:
        registry = projects.load()
    except ProjectConfigError as exc:
        context.log.warning(f"project registry not loaded, default priorities: {exc}")
        return {}
    return {slug: registry.priority(slug) for slug in registry.slugs()}


@sensor(
    name="study_batch_sensor",
    asset_selection=STUDY_ASSETS,
    minimum_interval_seconds=int(os.environ.get("VOXL_STUDY_SENSOR_INTERVAL", "30")),
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts raw -> anonymised -> upload for studies still queued, in batches.",
)
def study_batch_sensor(
    context: SensorEvaluationContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
) -> SensorResult:
    def partition_keys() -> list[str]:
        return list(context.instance.get_dynamic_partitions(STUDIES))

    cursor = QueuedCursor.load(context.cursor, partition_keys)
    queued = queued_studies(voxl_db.database)
    fresh = any(i > cursor.after and i not in cursor.above for i, _ in queued)
    keys = partition_keys() if fresh else []
    requests, cursor = queued_batch_requests(
        keys,
        queued,
        cursor,
        batch_size(),
        max_runs_per_tick(),
        project_priorities(context, projects),
    )
    if requests:
        context.log.info(f"{len(requests)} batch(es) of queued studies")
    return SensorResult(run_requests=requests, cursor=cursor.dump())
