"""Sensor: new study partitions are started in batches (raw -> anonymised -> upload).

The cursor is the number of study partitions already requested, in the order Dagster keeps them
(the order they were added). Each batch is a contiguous range of partitions, requested with a
run key, so a sensor stopped for a day catches up without launching any batch twice.
"""

import os

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from voxl_assets.partitions import STUDIES

STUDY_ASSETS = [AssetKey("raw_study"), AssetKey("anonymised_study"), AssetKey("destination_upload")]


def batch_size() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_BATCH_SIZE", "100")))


def max_runs_per_tick() -> int:
    return max(1, int(os.environ.get("VOXL_STUDY_MAX_RUNS_PER_TICK", "20")))


def study_batch_requests(
    keys: list[str], start: int, size: int, max_runs: int
) -> tuple[list[RunRequest], int]:
    """Run requests for ``keys[start:]`` in contiguous batches of ``size``; returns the new cursor."""
    requests: list[RunRequest] = []
    position = start
    while position < len(keys) and len(requests) < max_runs:
        chunk = keys[position : position + size]
        requests.append(
            RunRequest(
                run_key=f"studies:{chunk[0]}..{chunk[-1]}",
                asset_selection=STUDY_ASSETS,
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: chunk[0],
                    ASSET_PARTITION_RANGE_END_TAG: chunk[-1],
                    "voxl/batch": f"{len(chunk)} studies",
                },
            )
        )
        position += len(chunk)
    return requests, position


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
    requests, position = study_batch_requests(keys, start, batch_size(), max_runs_per_tick())
    if requests:
        context.log.info(f"{len(requests)} batch(es) for {position - start} new studies")
    return SensorResult(run_requests=requests, cursor=str(position))
