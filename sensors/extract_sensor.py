"""Sensor: each new complete extract in ``VOXL_EXTRACTS_DIR`` becomes an extract partition and a
``cohort_messages`` run. An extract of an unregistered project is reported once and not processed
(it is picked up if the project is registered later)."""

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

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from voxl_assets import settings
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cohort.discovery import candidate_extracts, is_complete
from voxl_assets.cohort.extract_reader import ExtractError, read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.partitions import EXTRACTS


def _quiet_seconds() -> float:
    return float(os.environ.get("VOXL_EXTRACT_QUIET_SECONDS", "30"))


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
) -> SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: set[str] = set(cursor.get("seen", []))
    reported: set[str] = set(cursor.get("reported", []))
    registry = projects.load()
    root = settings.extracts_dir()
    quiet = _quiet_seconds()

    new_keys: list[str] = []
    run_requests: list[RunRequest] = []
    for path in candidate_extracts(root):
        name = path.name
        if name in seen or not is_complete(path, quiet_seconds=quiet):
            continue
        try:
            summary = read_any_summary(path)
        except ExtractError as exc:
            if name not in reported:
                context.log.error(f"extract {name} cannot be read: {exc}")
                reported.add(name)
            continue
        slug = summary.project_slug
        if slug not in registry:
            if name not in reported:
                context.log.warning(
                    f"extract {name}: project '{slug}' is not registered (no YAML in "
                    "project_definitions/); not processing it"
                )
                reported.add(name)
            continue
        key = register_extract(voxl_db.database, summary, slug)
        seen.add(name)
        reported.discard(name)
        new_keys.append(key)
        run_requests.append(RunRequest(run_key=key, partition_key=key))
        context.log.info(f"new extract {name} registered as partition {key}")

    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [AddDynamicPartitionsRequest(EXTRACTS, new_keys)] if new_keys else []
        ),
        cursor=json.dumps({"seen": sorted(seen), "reported": sorted(reported)}),
    )


__all__ = ["new_extract_sensor"]
