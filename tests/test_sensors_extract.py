"""``new_extract_sensor`` tick by tick on a test instance with a SQLite VOXL database, its folder
and quiet time from the ``extracts`` resource: the first tick, a tick with nothing new, a new
extract (waiting until it settles), and an extracts folder that is not there (yet). The many ways an
extract itself can be bad are in ``test_extract_sensor.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from resources.extracts import ExtractsFolderResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from tests.helpers.projects import write_project
from tests.helpers.sensor_tick import tick
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

KEY = "test-extract-uclh-omop-cdm/2026-11-01T12-00-00"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _resources(tmp_path: Path, folder: Path, quiet_seconds: float = 0) -> dict[str, object]:
    projects = tmp_path / "projects"
    if not projects.exists():
        write_project(projects)
    return {
        "voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}"),
        "projects": ProjectRegistryResource(directory=str(projects)),
        "extracts": ExtractsFolderResource(directory=str(folder), quiet_seconds=quiet_seconds),
    }


def test_first_tick_on_an_empty_folder(tmp_path: Path, instance: DagsterInstance) -> None:
    (tmp_path / "extracts").mkdir()
    first = tick(instance, _resources(tmp_path, tmp_path / "extracts"), None)
    assert first.result.run_requests == [] and not first.logs
    assert json.loads(first.result.cursor or "") == {"seen": [], "reported": {}}


def test_a_new_extract_waits_to_settle_then_runs_once(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    folder = tmp_path / "extracts"
    write_omop_extract(folder / "first", synthetic_extract_rows(3))

    # Just written: younger than the resource's quiet time, so not read yet.
    settling = tick(instance, _resources(tmp_path, folder, quiet_seconds=3600), None)
    assert settling.result.run_requests == []
    assert json.loads(settling.result.cursor or "")["seen"] == []

    resources = _resources(tmp_path, folder)
    first = tick(instance, resources, settling.result.cursor)
    assert first.partition_keys == [KEY]
    assert instance.get_dynamic_partitions("extracts") == [KEY]
    assert json.loads(first.result.cursor or "")["seen"] == ["first"]

    again = tick(instance, resources, first.result.cursor)
    assert again.result.run_requests == [] and again.result.cursor == first.result.cursor


def test_an_extracts_folder_that_is_not_there_is_the_ticks_skip_reason(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    folder = tmp_path / "no-such-folder"
    resources = _resources(tmp_path, folder)
    first = tick(instance, resources, None)
    assert not first.result.run_requests and first.result.cursor is None
    assert first.result.skip_reason is not None
    reason = first.result.skip_reason.skip_message or ""
    assert str(folder) in reason and "VOXL_EXTRACTS_DIR" in reason

    write_omop_extract(folder / "first", synthetic_extract_rows(3))
    second = tick(instance, resources, first.result.cursor)
    assert second.partition_keys == [KEY] and second.errors == []
