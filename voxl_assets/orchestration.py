"""Launching VOXL's assets in-process against the Dagster instance (CLI, demo, tests).

The UI shows these runs like any other: they go through the same instance and definitions.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
    define_asset_job,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from voxl_assets.assets.cohort import BAD_INPUT
from voxl_assets.dagster_home import one_planned_event_per_run
from voxl_assets.definitions import defs, deployment_resources
from voxl_assets.partitions import EXTRACTS, STUDIES
from voxl_assets.run_log import run_loggers

IN_PROCESS_JOB = "__ephemeral_asset_job__"  # the name Dagster's `materialize` gives its runs


class RunFailed(Exception):
    """A run failed; ``bad_input`` when an asset refused its input (a bad extract, an unregistered
    project) rather than an operation failing."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


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


def _failure(result: Any) -> tuple[str, bool]:
    """The failed step's message (first line: the rest is Dagster's stack) and whether the asset
    refused its input."""
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    if failure is None or not failure.step_failure_data.error:
        return "see the run's logs in the Dagster UI", False
    message = str(failure.step_failure_data.error.message).strip().splitlines()[0]
    user = failure.step_failure_data.user_failure_data
    bad_input = bool(user and user.metadata.get(BAD_INPUT) and user.metadata[BAD_INPUT].value)
    return message.removeprefix("dagster._core.definitions.events.Failure: "), bad_input


def materialize(
    assets: list[AssetsDefinition],
    instance: DagsterInstance,
    tags: dict[str, str],
    partition_key: str | None = None,
    selection: list[str] | None = None,
) -> Any:
    """Dagster's ``materialize`` for VOXL's assets, with VOXL's loggers: the event log goes where
    the `voxl` command sends it (its log file) rather than to the terminal. The resources are
    configured from the environment as it is now (the command may have set variables since the
    definitions were loaded: the demo's VNA port). ``selection`` names the asset keys to run (all
    of ``assets`` when None)."""
    loggers = run_loggers()
    job = define_asset_job(
        name=IN_PROCESS_JOB,
        selection=AssetSelection.assets(*selection) if selection is not None else None,
    )
    in_process = Definitions(
        jobs=[job],
        assets=assets,
        resources=deployment_resources(),
        loggers=loggers,
    )
    return in_process.resolve_job_def(IN_PROCESS_JOB).execute_in_process(
        # A job's loggers run only when the run config names them.
        run_config={"loggers": {name: {} for name in loggers}} if loggers else None,
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        tags=tags,
    )


def _materialize_partition(
    instance: DagsterInstance, assets: list[str], partition_key: str, source: str, what: str
) -> Any:
    reclaim_dead_runs(instance)
    result = materialize(
        [defs.get_assets_def(asset) for asset in assets],
        instance,
        _tags(source),
        partition_key=partition_key,
    )
    if not result.success:
        message, bad_input = _failure(result)
        raise RunFailed(f"{what} failed for {partition_key}: {message}", bad_input=bad_input)
    return result


def materialize_cohort(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    instance.add_dynamic_partitions(EXTRACTS, [extract_key])
    return _materialize_partition(
        instance, ["cohort_messages"], extract_key, source, "cohort_messages"
    )


def materialize_studies(
    instance: DagsterInstance,
    study_keys: list[str],
    source: str,
    batch: int = 200,
    tags: dict[str, str] | None = None,
    stages: list[str] | None = None,
) -> list[Any]:
    """Run raw -> anonymised -> upload (or only the asset keys in ``stages``) over
    ``study_keys`` in contiguous batches."""
    reclaim_dead_runs(instance)
    one_planned_event_per_run()
    all_keys = list(instance.get_dynamic_partitions(STUDIES))
    position = {key: index for index, key in enumerate(all_keys)}
    ordered = sorted((k for k in study_keys if k in position), key=position.__getitem__)
    results = []
    for start in range(0, len(ordered), batch):
        chunk = ordered[start : start + batch]
        result = materialize(
            [defs.get_assets_def("raw_study")],
            instance,
            {
                ASSET_PARTITION_RANGE_START_TAG: chunk[0],
                ASSET_PARTITION_RANGE_END_TAG: chunk[-1],
                **_tags(source),
                **(tags or {}),
            },
            selection=stages,
        )
        if not result.success:
            message, bad_input = _failure(result)
            raise RunFailed(f"study batch failed: {message}", bad_input=bad_input)
        results.append(result)
    return results


def materialize_export(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    # One run: mapping_table's tables go through the IO manager into ehr_bundle and its leak guard.
    return _materialize_partition(
        instance, ["mapping_table", "ehr_bundle"], extract_key, source, "export"
    )
