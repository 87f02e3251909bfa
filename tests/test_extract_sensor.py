"""The extract sensor and cohort_messages with a real Dagster instance."""

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    SensorResult,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from sqlalchemy import func, select

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.extract_sensor import new_extract_sensor
from tests.helpers.projects import write_project
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cohort.discovery import is_complete
from voxl_assets.db import ExtractStudy, Study
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    projects = tmp_path / "projects"
    write_project(projects)
    extracts = tmp_path / "extracts"
    extracts.mkdir()
    monkeypatch.setenv("VOXL_EXTRACTS_DIR", str(extracts))
    monkeypatch.setenv("VOXL_EXTRACT_QUIET_SECONDS", "0")
    resources = {
        "voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}"),
        "projects": ProjectRegistryResource(directory=str(projects)),
    }
    return {"extracts": extracts, "resources": resources, "projects": projects}


def _tick(
    instance: DagsterInstance, resources: dict[str, object], cursor: str | None
) -> SensorResult:
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = new_extract_sensor(context)
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys or [])
        )
    return result


def test_sensor_then_asset_over_two_extracts(env: dict[str, object]) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    write_omop_extract(extracts / "first", synthetic_extract_rows(12, seed=1))
    write_omop_extract(
        extracts / "second",
        synthetic_extract_rows(8, seed=2),
        layout="batched",
        extract_datetime=datetime(2026, 11, 2, 9, 0),
    )
    with instance_for_test() as instance:
        first = _tick(instance, resources, None)
        keys = sorted(str(r.partition_key) for r in first.run_requests or [])
        assert keys == [
            "test-extract-uclh-omop-cdm/2026-11-01T12-00-00",
            "test-extract-uclh-omop-cdm/2026-11-02T09-00-00",
        ]
        assert all(r.run_key == r.partition_key for r in first.run_requests or [])
        assert sorted(instance.get_dynamic_partitions("extracts")) == keys

        # Nothing new: no run requests, cursor unchanged.
        again = _tick(instance, resources, first.cursor)
        assert not again.run_requests
        assert again.cursor == first.cursor

        for key in keys:
            result = materialize(
                [cohort_messages], instance=instance, partition_key=key, resources=resources
            )
            assert result.success
            metadata = result.asset_materializations_for_node("cohort_messages")[0].metadata
            assert metadata["imaging_studies"].value in (12, 8)
            assert "| queued |" in str(metadata["progress"].value)

        studies = instance.get_dynamic_partitions("studies")
        assert len(studies) == 20
        db = resources["voxl_db"].database  # type: ignore[attr-defined]
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == 20
            assert session.scalar(select(func.count()).select_from(ExtractStudy)) == 20


def test_unregistered_project_is_reported_once_and_not_processed(
    env: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    write_omop_extract(
        extracts / "other", synthetic_extract_rows(3), project_name="Unknown Project"
    )
    with instance_for_test() as instance:
        first = _tick(instance, resources, None)
        assert not first.run_requests
        assert json.loads(first.cursor or "{}")["reported"] == ["other"]
        second = _tick(instance, resources, first.cursor)
        assert not second.run_requests
        assert second.cursor == first.cursor
        assert not instance.get_dynamic_partitions("extracts")
        # Registering the project later lets the same extract through.
        write_project(env["projects"], "unknown-project", name="Unknown Project")  # type: ignore[arg-type]
        third = _tick(instance, resources, second.cursor)
        assert [r.partition_key for r in third.run_requests or []] == [
            "unknown-project/2026-11-01T12-00-00"
        ]


def test_incomplete_extracts_wait(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(2))
    assert is_complete(extract, quiet_seconds=0)
    assert not is_complete(extract, quiet_seconds=60), "just written: still settling"
    (extract / "extract_summary.json").unlink()
    assert not is_complete(extract, quiet_seconds=0, now=time.time() + 3600)
    old = time.time() - 120
    for path in extract.rglob("*"):
        os.utime(path, (old, old))
    assert not is_complete(extract, quiet_seconds=60)  # still no summary
