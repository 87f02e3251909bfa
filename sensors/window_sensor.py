"""Sensor: studies waiting for an archive's time window are started when the window opens.

A study that needs, say, the clinical PACS while it is closed to VOXL is marked ``waiting`` with
the time the window opens (``not_before``). This sensor finds waiting studies whose time has come
and requests runs over them; the runs skip every other study in their partition range.
"""

import os
from datetime import UTC, datetime

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.study_sensor import batch_size, project_priorities
from voxl_assets.imaging.batches import STUDY_ASSETS, due_waiting_studies, waiting_batch_requests
from voxl_assets.partitions import STUDIES


@sensor(
    name="archive_window_sensor",
    asset_selection=STUDY_ASSETS,
    minimum_interval_seconds=int(os.environ.get("VOXL_WINDOW_SENSOR_INTERVAL", "300")),
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts studies that waited for an archive's time window once it has opened.",
)
def archive_window_sensor(
    context: SensorEvaluationContext,
    voxl_db: VoxlDatabaseResource,
    projects: ProjectRegistryResource,
) -> SensorResult:
    now = datetime.now(UTC).replace(tzinfo=None)
    due = due_waiting_studies(voxl_db.database, now)
    if not due:
        return SensorResult(run_requests=[])
    keys = context.instance.get_dynamic_partitions(STUDIES)
    requests = waiting_batch_requests(
        keys, due, batch_size(), project_priorities(context, projects)
    )
    context.log.info(f"{len(due)} waiting studies are due: {len(requests)} run(s)")
    return SensorResult(run_requests=requests)
