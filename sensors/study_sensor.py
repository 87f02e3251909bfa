"""Sensor: new study partitions are started in batches (raw -> anonymised -> upload).

The cursor is the number of study partitions already requested, in the order Dagster keeps them
(the order they were added). Each batch is a contiguous range of one project's partitions,
requested with a run key, so a sensor stopped for a day catches up without launching any batch
twice. Each run carries its project's priority (``dagster/priority``), so the run queue serves
higher-priority projects first.
"""

import os

from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from voxl_assets.imaging.batches import STUDY_ASSETS, study_batch_requests
from voxl_assets.partitions import STUDIES
from voxl_assets.project_config import ProjectConfigError, ProjectRegistry


def batch_size() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_BATCH_SIZE", "100")))


def max_runs_per_tick() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_MAX_RUNS_PER_TICK", "20")))


def project_priorities() -> dict[str, int]:
    try:
        registry = ProjectRegistry.load()
    except ProjectConfigError:
        return {}  # the cohort step reports a broken registry; batches keep the default priority
    return {slug: registry.priority(slug) for slug in registry.slugs()}


@sensor(
    name="study_batch_sensor",
    asset_selection=STUDY_ASSETS,
    minimum_interval_seconds=int(os.environ.get("VOXL_STUDY_SENSOR_INTERVAL", "30")),
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts raw -> anonymised -> upload for new study partitions, in batches.",
)
def study_batch_sensor(context: SensorEvaluationContext) -> SensorResult:
    keys = list(context.instance.get_dynamic_partitions(STUDIES))
    start = int(context.cursor) if context.cursor else 0
    requests, position = study_batch_requests(
        keys, start, batch_size(), max_runs_per_tick(), project_priorities()
    )
    if requests:
        context.log.info(f"{len(requests)} batch(es) for {position - start} new studies")
    return SensorResult(run_requests=requests, cursor=str(position))
