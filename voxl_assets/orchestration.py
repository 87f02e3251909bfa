"""Launching VOXL's assets in-process against the Dagster instance (CLI, demo, tests).

The UI shows these runs like any other: they go through the same instance and definitions.
"""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from voxl_assets.definitions import defs
from voxl_assets.partitions import EXTRACTS, STUDIES


class RunFailed(Exception):
    pass


def _failure_detail(result: Any) -> str:
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    if failure and failure.step_failure_data.error:
        return str(failure.step_failure_data.error.message).strip()
    return "see the run's logs in the Dagster UI"


def materialize_cohort(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    instance.add_dynamic_partitions(EXTRACTS, [extract_key])
    result = materialize(
        [defs.get_assets_def("cohort_messages")],
        instance=instance,
        partition_key=extract_key,
        resources=defs.resources,
        raise_on_error=False,
        tags={"voxl/source": source},
    )
    if not result.success:
        raise RunFailed(f"cohort_messages failed for {extract_key}: {_failure_detail(result)}")
    return result


def materialize_studies(
    instance: DagsterInstance, study_keys: list[str], source: str, batch: int = 200
) -> list[Any]:
    """Run raw -> anonymised -> upload over ``study_keys`` in contiguous batches."""
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
                "voxl/source": source,
            },
        )
        if not result.success:
            raise RunFailed(f"study batch failed: {_failure_detail(result)}")
        results.append(result)
    return results


def materialize_export(instance: DagsterInstance, extract_key: str, source: str) -> Any:
    result = materialize(
        [defs.get_assets_def("mapping_table")],
        instance=instance,
        partition_key=extract_key,
        resources=defs.resources,
        raise_on_error=False,
        tags={"voxl/source": source},
    )
    if not result.success:
        raise RunFailed(f"export failed for {extract_key}: {_failure_detail(result)}")
    return result
