"""``study_batch_sensor`` tick by tick on a test instance with a SQLite VOXL database and the
project registry through the ``projects`` resource: the first tick, a tick with nothing new, a
tick with new studies, and a registry that does not load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.study_sensor import study_batch_sensor
from tests.helpers.projects import write_project
from tests.helpers.sensor_tick import Tick, tick
from tests.helpers.studies import add_studies
from voxl_assets.db import StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key
from voxl_assets.partitions import STUDIES

QUEUED = StudyStatus.QUEUED.value
UPLOADED = StudyStatus.UPLOADED.value
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PRIORITY = "dagster/priority"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    folder = tmp_path / "projects"
    write_project(
        folder,
        "urgent",
        extra={"project": {"slug": "urgent", "name": "U", "modalities": ["CT"], "priority": 4}},
    )
    return folder


@pytest.fixture
def resources(tmp_path: Path, projects: Path) -> dict[str, object]:
    return {
        "voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}"),
        "projects": ProjectRegistryResource(directory=str(projects)),
    }


def _database(resources: dict[str, object]) -> VoxlDatabase:
    return resources["voxl_db"].database  # type: ignore[attr-defined]


def _partitions(instance: DagsterInstance, project: str, ids: list[int]) -> None:
    instance.add_dynamic_partitions(STUDIES, [study_partition_key(project, i) for i in ids])


def _ranges(result: Tick) -> list[tuple[str, str, str]]:
    return [
        (r.tags[RANGE_START], r.tags[RANGE_END], r.tags[PRIORITY])
        for r in result.result.run_requests or []
    ]


def test_first_tick_with_nothing_queued_requests_nothing(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    ids = add_studies(_database(resources), "urgent", [UPLOADED, UPLOADED])
    _partitions(instance, "urgent", ids)
    first = tick(instance, resources, None, study_batch_sensor)
    assert first.result.run_requests == []
    assert json.loads(first.result.cursor or "null") == {"after": 0, "above": []}


def test_queued_studies_then_nothing_new_then_new_ones(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    database = _database(resources)
    first_ids = add_studies(database, "urgent", [QUEUED, QUEUED, UPLOADED])
    _partitions(instance, "urgent", first_ids)

    first = tick(instance, resources, None, study_batch_sensor)
    start, end = (
        study_partition_key("urgent", first_ids[0]),
        study_partition_key("urgent", first_ids[1]),
    )
    assert _ranges(first) == [(start, end, "4")]  # the registry's priority, via `projects`
    assert json.loads(first.result.cursor or "") == {"after": first_ids[1], "above": []}

    # Nothing new: the queued studies were requested already (they wait in the run queue).
    again = tick(instance, resources, first.result.cursor, study_batch_sensor)
    assert again.result.run_requests == []
    assert again.result.cursor == first.result.cursor

    # Something new: only the new studies, in a run of their own.
    new_ids = add_studies(database, "urgent", [QUEUED])
    _partitions(instance, "urgent", new_ids)
    third = tick(instance, resources, again.result.cursor, study_batch_sensor)
    key = study_partition_key("urgent", new_ids[0])
    assert _ranges(third) == [(key, key, "4")]
    assert json.loads(third.result.cursor or "") == {"after": new_ids[0], "above": []}


def test_a_registry_that_does_not_load_gives_default_priorities_and_says_why(
    instance: DagsterInstance, resources: dict[str, object], projects: Path
) -> None:
    (projects / "broken.yaml").write_text("project: [\n")
    ids = add_studies(_database(resources), "urgent", [QUEUED])
    _partitions(instance, "urgent", ids)
    result = tick(instance, resources, None, study_batch_sensor)
    key = study_partition_key("urgent", ids[0])
    assert _ranges(result) == [(key, key, "0")]  # started anyway, at the default priority
    warnings = [m for level, m in result.logs if level == "WARNING"]
    assert len(warnings) == 1 and "broken.yaml" in warnings[0]
