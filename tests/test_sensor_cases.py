"""The export, window and study sensors tick by tick on a test instance with a real VOXL database
(the cursor cases: first tick, nothing new, something new), asserting the run requests they make:
an extract is exported only once every study has ended (a waiting study has not); due waiting
studies get runs that process waiting studies only, at their project's priority; study batches
carry their project's priority."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.export_sensor import extract_export_sensor
from sensors.study_sensor import study_batch_sensor
from sensors.window_sensor import archive_window_sensor
from tests.helpers.projects import write_project
from voxl_assets import settings
from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key
from voxl_assets.imaging.batches import ONLY_STATUS_TAG
from voxl_assets.partitions import STUDIES

EXTRACT_KEY = "p/2026-11-01T12-00-00"
PRIORITY = "dagster/priority"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'voxl.db'}"


def _studies(database: VoxlDatabase, project: str, statuses: list[str]) -> list[int]:
    """An extract of ``project`` with one study per status; returns the study ids."""
    with database.session() as session:
        extract = Extract(
            project=project, extract_datetime=datetime(2026, 11, 1, 12, 0), source_path="x"
        )
        session.add(extract)
        session.flush()
        ids = []
        for number, status in enumerate(statuses):
            study = Study(project=project, mrn=f"M{number}", accession_number=f"A{number}")
            study.status = status
            session.add(study)
            session.flush()
            session.add(
                ExtractStudy(
                    extract_id=extract.id, study_id=study.id, procedure_occurrence_id=number
                )
            )
            ids.append(study.id)
    return ids


def _set_status(database: VoxlDatabase, study_id: int, status: str, **values: Any) -> None:
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.status = status
        for name, value in values.items():
            setattr(study, name, value)


def _tick(sensor: Any, instance: DagsterInstance, cursor: str | None, url: str) -> SensorResult:
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "voxl_db": VoxlDatabaseResource(url=url),
            # The registry the test set up (VOXL_PROJECTS_DIR), through the `projects` resource.
            "projects": ProjectRegistryResource(directory=str(settings.projects_dir())),
        },
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


@pytest.mark.parametrize("unfinished", ["queued", "waiting", "retrieved", "anonymised"])
def test_an_extract_is_exported_once_every_study_has_ended(
    instance: DagsterInstance, database_url: str, unfinished: str
) -> None:
    database = VoxlDatabase(database_url)
    ids = _studies(database, "p", ["uploaded", "filtered", "failed", unfinished])
    first = _tick(extract_export_sensor, instance, None, database_url)
    assert list(first.run_requests or []) == []  # a study has not ended: no export yet
    _set_status(database, ids[3], StudyStatus.UPLOADED.value)
    ended = _tick(extract_export_sensor, instance, first.cursor, database_url)
    requests = list(ended.run_requests or [])
    assert [r.partition_key for r in requests] == [EXTRACT_KEY]
    assert {key.to_user_string() for key in requests[0].asset_selection or []} == {
        "mapping_table",
        "ehr_bundle",
    }
    again = _tick(extract_export_sensor, instance, ended.cursor, database_url)
    assert list(again.run_requests or []) == []  # unchanged: exported once
    _set_status(database, ids[2], StudyStatus.UPLOADED.value)  # the failed study was retried
    changed = _tick(extract_export_sensor, instance, again.cursor, database_url)
    assert [r.partition_key for r in changed.run_requests or []] == [EXTRACT_KEY]
    assert changed.run_requests[0].run_key != requests[0].run_key  # type: ignore[index]


def test_each_extract_is_judged_on_its_own(instance: DagsterInstance, database_url: str) -> None:
    database = VoxlDatabase(database_url)
    _studies(database, "a", ["uploaded", "waiting"])  # not ready
    _studies(database, "b", ["uploaded", "failed"])  # ready
    _studies(database, "c", ["queued"])  # not ready
    requests = list(_tick(extract_export_sensor, instance, None, database_url).run_requests or [])
    assert [r.partition_key for r in requests] == ["b/2026-11-01T12-00-00"]


def test_an_extract_without_studies_is_not_exported(
    instance: DagsterInstance, database_url: str
) -> None:
    database = VoxlDatabase(database_url)
    _studies(database, "p", [])
    assert list(_tick(extract_export_sensor, instance, None, database_url).run_requests or []) == []


def test_due_waiting_studies_get_runs_that_process_only_waiting_studies(
    instance: DagsterInstance,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_project(tmp_path / "projects", "p", name="P", extra=None)
    _priority(tmp_path / "projects" / "p.yaml", 4)
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("VOXL_STUDY_BATCH_SIZE", "10")
    database = VoxlDatabase(database_url)
    ids = _studies(database, "p", ["waiting", "uploaded", "waiting", "waiting"])
    keys = [study_partition_key("p", i) for i in ids]
    instance.add_dynamic_partitions(STUDIES, keys)
    now = datetime.utcnow()
    _set_status(database, ids[0], "waiting", not_before=now - timedelta(minutes=5))
    _set_status(database, ids[2], "waiting", not_before=now - timedelta(minutes=1))
    _set_status(database, ids[3], "waiting", not_before=now + timedelta(hours=3))  # not yet
    requests = list(_tick(archive_window_sensor, instance, None, database_url).run_requests or [])
    assert len(requests) == 1
    tags = requests[0].tags
    assert (tags[RANGE_START], tags[RANGE_END]) == (keys[0], keys[2])
    assert tags[ONLY_STATUS_TAG] == StudyStatus.WAITING.value  # the uploaded one in between
    assert tags[PRIORITY] == "4"
    _set_status(database, ids[0], "uploaded")
    _set_status(database, ids[2], "uploaded")
    assert list(_tick(archive_window_sensor, instance, None, database_url).run_requests or []) == []


def _priority(path: Path, priority: int) -> None:
    import yaml

    definition = yaml.safe_load(path.read_text())
    definition["project"]["priority"] = priority
    path.write_text(yaml.safe_dump(definition))


def test_study_batches_carry_their_projects_priority(
    instance: DagsterInstance, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for slug, priority in (("low", -2), ("high", 7)):
        write_project(tmp_path / "projects", slug, name=slug)
        _priority(tmp_path / "projects" / f"{slug}.yaml", priority)
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("VOXL_STUDY_BATCH_SIZE", "2")
    database = VoxlDatabase(database_url)
    low = [study_partition_key("low", i) for i in _studies(database, "low", ["queued"] * 2)]
    high = [study_partition_key("high", i) for i in _studies(database, "high", ["queued"])]
    instance.add_dynamic_partitions(STUDIES, low + high)
    result = _tick(study_batch_sensor, instance, None, database_url)
    by_start = {r.tags[RANGE_START]: r.tags[PRIORITY] for r in result.run_requests or []}
    assert by_start == {low[0]: "-2", high[0]: "7"}
    nothing = _tick(study_batch_sensor, instance, result.cursor, database_url)
    assert list(nothing.run_requests or []) == []


def test_an_extract_exported_in_its_state_by_another_run_is_not_exported_again(
    instance: DagsterInstance, database_url: str
) -> None:
    """A lost cursor (or an export run by hand) does not send an extract twice: the end state the
    last delivered bundle recorded is compared with the extract's; the extracts after it are
    still judged."""
    from dagster import AssetMaterialization

    from voxl_assets.progress import END_STATE

    database = VoxlDatabase(database_url)
    _studies(database, "p", ["uploaded", "filtered"])
    _studies(database, "q", ["uploaded"])
    other = "q/2026-11-01T12-00-00"
    requests = list(_tick(extract_export_sensor, instance, None, database_url).run_requests or [])
    assert [r.partition_key for r in requests] == [EXTRACT_KEY, other]
    signature = requests[0].run_key.rpartition(":")[2]  # type: ignore[union-attr]

    def delivered(state: str) -> None:
        instance.report_runless_asset_event(
            AssetMaterialization("ehr_bundle", partition=EXTRACT_KEY, metadata={END_STATE: state})
        )

    delivered("another state")
    again = _tick(extract_export_sensor, instance, None, database_url)
    assert [r.partition_key for r in again.run_requests or []] == [EXTRACT_KEY, other]
    delivered(signature)
    last = _tick(extract_export_sensor, instance, None, database_url)
    assert [r.partition_key for r in last.run_requests or []] == [other]


@pytest.mark.parametrize("cursor", ["not json", "[1, 2]", "7"])
def test_a_cursor_not_understood_starts_over(
    instance: DagsterInstance, database_url: str, cursor: str
) -> None:
    database = VoxlDatabase(database_url)
    _studies(database, "p", ["uploaded"])
    result = _tick(extract_export_sensor, instance, cursor, database_url)
    assert [r.partition_key for r in result.run_requests or []] == [EXTRACT_KEY]
    assert EXTRACT_KEY in json.loads(result.cursor or "{}")


@pytest.mark.parametrize("value", ["0", "1", "-3"])
def test_batch_size_and_runs_per_tick_are_at_least_one(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from sensors.study_sensor import batch_size, max_runs_per_tick

    monkeypatch.setenv("VOXL_STUDY_BATCH_SIZE", value)
    monkeypatch.setenv("VOXL_STUDY_MAX_RUNS_PER_TICK", value)
    assert batch_size() == max_runs_per_tick() == 1


def test_a_registry_that_does_not_load_gives_default_priorities(
    instance: DagsterInstance, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken project definition under review does not stall every project's studies."""
    write_project(tmp_path / "projects", "p", name="p")
    (tmp_path / "projects" / "broken.yaml").write_text("project: [unclosed\n")
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    database = VoxlDatabase(database_url)
    keys = [study_partition_key("p", i) for i in _studies(database, "p", ["queued"] * 2)]
    instance.add_dynamic_partitions(STUDIES, keys)
    result = _tick(study_batch_sensor, instance, None, database_url)
    assert [(r.tags[RANGE_START], r.tags[PRIORITY]) for r in result.run_requests or []] == [
        (keys[0], "0")
    ]
