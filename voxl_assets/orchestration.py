"""Launching VOXL's assets in-process against the Dagster instance (CLI, demo, tests).

The UI shows these runs like any other: they go through the same instance and definitions.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from voxl_assets.definitions import defs
from voxl_assets.partitions import EXTRACTS, STUDIES


class RunFailed(Exception):
    pass


PID_TAG = "voxl/pid"
HOST_TAG = "voxl/host"


def _tags(source: str) -> dict[str, str]:
    return {"voxl/source": source, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_dead_runs(instance: DagsterInstance) -> int:
    """Fail in-process runs of this machine whose process died (killed worker, power cut) and free
    the pool slots they held; otherwise the `vna` pool would stay blocked. (Runs the daemon
    launches are watched by Dagster's run monitoring instead.)"""
    reclaimed = 0
    records = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
    )
    for run in records:
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if pid is None or host != socket.gethostname() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, "the process running it died; VOXL marked it failed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reclaimed += 1
    return reclaimed


def _failure_detail(result: Any) -> str:
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    if failure and failure.step_failure_data.error:
        return str(failure.step_failure_data.error.message).strip()
    return "see the run's logs in the Dagster UI"


def _materialize_partition(
    instance: DagsterInstance, asset: str, partition_key: str, source: str, what: str
) -> Any:
    reclaim_dead_runs(instance)
    result = materialize(
        [defs.get_assets_def(asset)],
        instance=instance,
        partition_key=partition_key,
        resources=defs.resources,
        raise_on_error=False,
        tags=_tags(source),
    )
    if not result.success:
        raise RunFailed(f"{what} failed for {partition_key}: {_failure_detail(result)}")
    return result


def materialize_cohort(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    instance.add_dynamic_partitions(EXTRACTS, [extract_key])
    return _materialize_partition(
        instance, "cohort_messages", extract_key, source, "cohort_messages"
    )


def materialize_studies(
    instance: DagsterInstance,
    study_keys: list[str],
    source: str,
    batch: int = 200,
    tags: dict[str, str] | None = None,
) -> list[Any]:
    """Run raw -> anonymised -> upload over ``study_keys`` in contiguous batches."""
    reclaim_dead_runs(instance)
    all_keys = list(instance.get_dynamic_partitions(STUDIES))
    position = {key: index for index, key in enumerate(all_keys)}
    ordered = sorted((k for k in study_keys if k in position), key=position.__getitem__)
    results = []
    for start in range(0, len(ordered), batch):
        chunk = ordered[start : start + batch]
        result = materialize(
            [defs.get_assets_def("raw_study")],
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: chunk[0],
                ASSET_PARTITION_RANGE_END_TAG: chunk[-1],
                **_tags(source),
                **(tags or {}),
            },
        )
        if not result.success:
            raise RunFailed(f"study batch failed: {_failure_detail(result)}")
        results.append(result)
    return results


def materialize_export(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    # mapping_table selects its multi-asset, so ehr_bundle and the leak guard run with it.
    return _materialize_partition(instance, "mapping_table", extract_key, source, "export")
