"""VOXL's processes ask Dagster for one "materialization planned" event per asset of a study-range
run, not one per partition, unless the deployment set the variable itself."""

import os
from pathlib import Path

import pytest

from voxl_assets.dagster_home import (
    PLANNED_EVENTS_VARIABLE,
    ensure_dagster_home,
    one_planned_event_per_run,
)


def test_set_unless_the_deployment_chose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PLANNED_EVENTS_VARIABLE, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("VOXL_DAGSTER_LOGS_DIR", str(tmp_path / "logs"))
    ensure_dagster_home()
    assert os.environ[PLANNED_EVENTS_VARIABLE] == "true"
    monkeypatch.setenv(PLANNED_EVENTS_VARIABLE, "false")
    one_planned_event_per_run()
    assert os.environ[PLANNED_EVENTS_VARIABLE] == "false"


def test_dagster_reads_it_from_the_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as instance:
        storage = instance.event_log_storage
        monkeypatch.setenv(PLANNED_EVENTS_VARIABLE, "true")
        assert storage.supports_partition_subset_in_asset_materialization_planned_events
        monkeypatch.delenv(PLANNED_EVENTS_VARIABLE)
        assert not storage.supports_partition_subset_in_asset_materialization_planned_events
