"""``extract_export_sensor`` tick by tick on a test instance with a SQLite VOXL database: the
first tick, a tick with nothing new, an extract whose studies have all ended, one whose end
state changed, and a cursor the sensor does not understand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetMaterialization, DagsterInstance

from resources.voxl_database import VoxlDatabaseResource
from sensors.export_sensor import extract_export_sensor
from tests.helpers.sensor_tick import Tick, tick
from tests.helpers.studies import add_studies, update_study
from voxl_assets.db import StudyStatus, VoxlDatabase
from voxl_assets.progress import END_STATE

EXTRACT = "p/2026-11-01T12-00-00"
QUEUED, UPLOADED, FAILED = (
    StudyStatus.QUEUED.value,
    StudyStatus.UPLOADED.value,
    StudyStatus.FAILED.value,
)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def resources(tmp_path: Path) -> dict[str, object]:
    return {"voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}")}


def _database(resources: dict[str, object]) -> VoxlDatabase:
    return resources["voxl_db"].database  # type: ignore[attr-defined]


def _keys(result: Tick) -> list[str | None]:
    return [r.run_key for r in result.result.run_requests or []]


def test_an_extract_with_a_study_still_queued_is_not_exported_on_the_first_tick(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    add_studies(_database(resources), "p", [UPLOADED, QUEUED])
    first = tick(instance, resources, None, extract_export_sensor)
    assert first.result.run_requests == []
    assert json.loads(first.result.cursor or "") == {}


def test_ended_then_nothing_new_then_a_retried_study_exports_again(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    database = _database(resources)
    _uploaded, failed_id = add_studies(database, "p", [UPLOADED, FAILED])

    first = tick(instance, resources, None, extract_export_sensor)
    assert _keys(first) == [f"export:{EXTRACT}:failed1-filtered0-uploaded1"]
    (request,) = first.result.run_requests or []
    assert request.partition_key == EXTRACT
    assert json.loads(first.result.cursor or "") == {EXTRACT: "failed1-filtered0-uploaded1"}

    again = tick(instance, resources, first.result.cursor, extract_export_sensor)
    assert again.result.run_requests == [] and again.result.cursor == first.result.cursor

    update_study(database, failed_id, status=UPLOADED)  # retried and delivered
    third = tick(instance, resources, again.result.cursor, extract_export_sensor)
    assert _keys(third) == [f"export:{EXTRACT}:failed0-filtered0-uploaded2"]


def test_a_cursor_not_understood_starts_over_without_exporting_twice(
    instance: DagsterInstance, resources: dict[str, object]
) -> None:
    add_studies(_database(resources), "p", [UPLOADED])
    add_studies(_database(resources), "q", [UPLOADED])
    # p was exported in this state by a run the sensor did not request (`voxl export`).
    instance.report_runless_asset_event(
        AssetMaterialization(
            "ehr_bundle", partition=EXTRACT, metadata={END_STATE: "failed0-filtered0-uploaded1"}
        )
    )
    for cursor in ("not json", "[1, 2]"):
        result = tick(instance, resources, cursor, extract_export_sensor)
        assert _keys(result) == ["export:q/2026-11-01T12-00-00:failed0-filtered0-uploaded1"]
        warnings = [m for level, m in result.logs if level == "WARNING"]
        assert warnings == ["cursor not understood: starting over (exported extracts are skipped)"]
        assert set(json.loads(result.result.cursor or "")) == {EXTRACT, "q/2026-11-01T12-00-00"}
