"""``archive_window_sensor`` tick by tick on a test instance with a SQLite VOXL database and the
registry through the ``projects`` resource. The sensor keeps no cursor: the run key names the
range and the opening, so a repeated tick asks for the same run, which Dagster launches once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.window_sensor import archive_window_sensor
from tests.helpers.projects import write_project
from tests.helpers.sensor_tick import Tick, tick
from tests.helpers.studies import add_studies, update_study
from voxl_assets.db import StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key
from voxl_assets.imaging.batches import ONLY_STATUS_TAG
from voxl_assets.partitions import STUDIES

WAITING = StudyStatus.WAITING.value
PROJECT = "night-pacs"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    folder = tmp_path / "projects"
    definition = {"slug": PROJECT, "name": "N", "modalities": ["CT"], "priority": -2}
    write_project(folder, PROJECT, extra={"project": definition})
    return folder


@pytest.fixture
def resources(tmp_path: Path, projects: Path) -> dict[str, object]:
    return {
        "voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}"),
        "projects": ProjectRegistryResource(directory=str(projects)),
    }


def _database(resources: dict[str, object]) -> VoxlDatabase:
    return resources["voxl_db"].database  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _waiting(instance: DagsterInstance, database: VoxlDatabase, opens: datetime) -> int:
    (study_id,) = add_studies(database, PROJECT, [WAITING])
    update_study(database, study_id, not_before=opens, waiting_for="archive pacs")
    instance.add_dynamic_partitions(STUDIES, [study_partition_key(PROJECT, study_id)])
    return study_id


def _runs(result: Tick) -> list[tuple[str | None, str, str]]:
    return [
        (r.run_key, r.tags[ONLY_STATUS_TAG], r.tags["dagster/priority"])
        for r in result.result.run_requests or []
    ]


def test_nothing_is_due_on_the_first_tick_while_the_window_is_closed(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    _waiting(instance, _database(resources), _now() + timedelta(hours=3))
    first = tick(instance, resources, None, archive_window_sensor)
    assert first.result.run_requests == [] and first.result.cursor is None


def test_a_due_study_then_the_same_run_then_a_new_opening(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    database = _database(resources)
    first_id = _waiting(instance, database, _now() - timedelta(minutes=5))
    later_id = _waiting(instance, database, _now() + timedelta(hours=3))

    first = tick(instance, resources, None, archive_window_sensor)
    runs = _runs(first)
    assert len(runs) == 1 and runs[0][1:] == ("waiting", "-2")  # waiting only, its priority
    (request,) = first.result.run_requests or []
    assert request.tags["dagster/asset_partition_range_end"] == study_partition_key(
        PROJECT, first_id
    )

    # Nothing new: the same run key, so the daemon does not launch it twice.
    assert _runs(tick(instance, resources, None, archive_window_sensor)) == runs

    # Something new: the second study's window opens; its run has another key.
    update_study(database, later_id, not_before=_now() - timedelta(minutes=1))
    both = _runs(tick(instance, resources, None, archive_window_sensor))
    assert len(both) == 1 and both[0][0] != runs[0][0]


def test_a_registry_that_does_not_load_still_starts_due_studies(
    instance: DagsterInstance, resources: dict[str, object], projects: Path
) -> None:
    (projects / f"{PROJECT}.yaml").write_text("project: {slug: NOT A SLUG}\n")
    _waiting(instance, _database(resources), _now() - timedelta(minutes=5))
    result = tick(instance, resources, None, archive_window_sensor)
    assert [run[1:] for run in _runs(result)] == [("waiting", "0")]
    assert any(level == "WARNING" and PROJECT in m for level, m in result.logs)
