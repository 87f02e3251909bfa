"""The extract sensor and cohort_messages with a real Dagster instance: new extracts, CSV files
holding several extracts, and a sensor that never stalls on a bad one."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test, materialize
from sqlalchemy import func, select

from resources.extracts import ExtractsFolderResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from tests.helpers.projects import write_project
from tests.helpers.sensor_tick import tick
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cohort.discovery import is_complete
from voxl_assets.db import ExtractStudy, Study, VoxlDatabase
from voxl_assets.settings import REPO_ROOT
from voxl_assets.status import extract_statuses
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

PROJECT = "test-extract-uclh-omop-cdm"
FIRST, SECOND, THIRD = (
    f"{PROJECT}/2026-11-01T12-00-00",
    f"{PROJECT}/2026-11-02T09-00-00",
    f"{PROJECT}/2026-11-03T10-00-00",
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, object]:
    projects = tmp_path / "projects"
    write_project(projects)
    extracts = tmp_path / "extracts"
    extracts.mkdir()
    resources = {
        "voxl_db": VoxlDatabaseResource(url=f"sqlite:///{tmp_path / 'voxl.db'}"),
        "projects": ProjectRegistryResource(directory=str(projects)),
        "extracts": ExtractsFolderResource(directory=str(extracts), quiet_seconds=0),
    }
    return {"extracts": extracts, "resources": resources, "projects": projects}


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def _database(env: dict[str, object]) -> VoxlDatabase:
    return env["resources"]["voxl_db"].database  # type: ignore[index]


def _two_good_extracts(extracts: Path) -> None:
    write_omop_extract(extracts / "first", synthetic_extract_rows(12, seed=1))
    write_omop_extract(
        extracts / "second",
        synthetic_extract_rows(8, seed=2),
        layout="batched",
        extract_datetime=datetime(2026, 11, 2, 9, 0),
    )


def test_sensor_then_asset_over_two_extracts(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    _two_good_extracts(extracts)
    first = tick(instance, resources, None)
    assert first.partition_keys == [FIRST, SECOND]
    assert first.run_keys == [f"{FIRST}#1", f"{SECOND}#1"]
    assert sorted(instance.get_dynamic_partitions("extracts")) == [FIRST, SECOND]

    # Nothing new: no run requests, cursor unchanged.
    again = tick(instance, resources, first.result.cursor)
    assert not again.result.run_requests
    assert again.result.cursor == first.result.cursor

    for key in (FIRST, SECOND):
        result = materialize(
            [cohort_messages], instance=instance, partition_key=key, resources=resources
        )
        assert result.success
        metadata = result.asset_materializations_for_node("cohort_messages")[0].metadata
        assert metadata["imaging_studies"].value in (12, 8)
        assert "| queued |" in str(metadata["progress"].value)

    assert len(instance.get_dynamic_partitions("studies")) == 20
    with _database(env).session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 20
        assert session.scalar(select(func.count()).select_from(ExtractStudy)) == 20


def test_unregistered_project_is_reported_once_and_not_processed(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    write_omop_extract(
        extracts / "other", synthetic_extract_rows(3), project_name="Unknown Project"
    )
    first = tick(instance, resources, None)
    assert not first.result.run_requests
    assert list(json.loads(first.result.cursor or "{}")["reported"]) == ["other"]
    assert (
        len(first.errors) == 1
        and "project 'unknown-project' is not registered" in (first.errors[0])
    )
    second = tick(instance, resources, first.result.cursor)
    assert not second.result.run_requests and not second.errors
    assert second.result.cursor == first.result.cursor
    assert not instance.get_dynamic_partitions("extracts")
    # Registering the project later lets the same extract through.
    write_project(env["projects"], "unknown-project", name="Unknown Project")  # type: ignore[arg-type]
    third = tick(instance, resources, second.result.cursor)
    assert third.partition_keys == ["unknown-project/2026-11-01T12-00-00"]
    assert not [s for s in extract_statuses(_database(env)) if s.state == "not_registered"]


def _undecodable(extract: Path) -> None:
    (extract / "extract_summary.json").write_bytes(b"\xff\xfe\x00{\x00}")


def _deeply_nested(extract: Path) -> None:
    (extract / "extract_summary.json").write_text("[" * 200_000 + "]" * 200_000)


def _summary_is_a_folder(extract: Path) -> None:
    (extract / "extract_summary.json").unlink()
    (extract / "extract_summary.json").mkdir()


def _not_json(extract: Path) -> None:
    (extract / "extract_summary.json").write_text('{"datetime": "2026-11-03 10:00:00",')


BAD_SUMMARIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "undecodable": (_undecodable, "not UTF-8 text"),
    "deeply nested": (_deeply_nested, "nested"),
    "summary is a folder": (_summary_is_a_folder, "is not a file"),
    "not JSON": (_not_json, "not valid JSON (line 1"),
}


@pytest.mark.parametrize("kind", list(BAD_SUMMARIES))
def test_one_bad_extract_is_reported_once_and_the_others_proceed(
    env: dict[str, object], instance: DagsterInstance, kind: str
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    _two_good_extracts(extracts)
    # "between" sorts between the good ones: the tick must go on past it.
    bad = write_omop_extract(
        extracts / "between",
        synthetic_extract_rows(4, seed=3),
        extract_datetime=datetime(2026, 11, 3, 10, 0),
    )
    damage, reason = BAD_SUMMARIES[kind]
    damage(bad)

    first = tick(instance, resources, None)
    assert first.partition_keys == [FIRST, SECOND]
    assert len(first.errors) == 1
    assert str(bad) in first.errors[0] and reason in first.errors[0]
    problems = [s for s in extract_statuses(_database(env)) if s.state == "not_registered"]
    assert [(p.source, p.reason) for p in problems] == [(str(bad), first.errors[0])]

    second = tick(instance, resources, first.result.cursor)
    assert not second.result.run_requests and not second.errors  # reported once

    # Fixed (a good summary again): the next tick registers it and forgets the problem.
    shutil.rmtree(bad)
    write_omop_extract(
        bad, synthetic_extract_rows(4, seed=3), extract_datetime=datetime(2026, 11, 3, 10, 0)
    )
    third = tick(instance, resources, second.result.cursor)
    assert third.partition_keys == [THIRD] and not third.errors
    assert not [s for s in extract_statuses(_database(env)) if s.state == "not_registered"]


def test_a_csv_with_several_extracts_gets_a_run_per_extract(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    projects: Path = env["projects"]  # type: ignore[assignment]
    write_project(projects, "pre-epic-study", name="Pre Epic Study")
    fixture = (
        Path(__file__).parent / "fixtures" / "escape_hatch" / "two_projects_three_extracts.csv"
    )
    shutil.copy(fixture, extracts / "pre-epic.csv")
    first = tick(instance, resources, None)
    # legacy-mri-cohort is not registered: its extract waits, reported; the others run.
    assert first.partition_keys == [
        "pre-epic-study/2023-01-01T00-00-00",
        "pre-epic-study/2023-06-01T12-00-00",
    ]
    assert len(first.errors) == 1 and "'legacy-mri-cohort' is not registered" in first.errors[0]
    second = tick(instance, resources, first.result.cursor)
    assert not second.result.run_requests and not second.errors

    write_project(projects, "legacy-mri-cohort", name="Legacy MRI Cohort")
    third = tick(instance, resources, second.result.cursor)
    assert third.partition_keys == ["legacy-mri-cohort/2023-01-01T00-00-00"]
    for key in [*first.partition_keys, *third.partition_keys]:
        assert materialize(
            [cohort_messages], instance=instance, partition_key=key, resources=resources
        ).success
    totals = {s.extract: s.total for s in extract_statuses(_database(env))}
    assert totals == {
        "legacy-mri-cohort/2023-01-01T00-00-00": 2,
        "pre-epic-study/2023-01-01T00-00-00": 3,
        "pre-epic-study/2023-06-01T12-00-00": 1,
    }


def test_a_second_copy_of_an_extract_is_refused_once(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    _two_good_extracts(extracts)
    shutil.copytree(extracts / "first", extracts / "first-copy")
    first = tick(instance, resources, None)
    assert first.partition_keys == [FIRST, SECOND]
    assert len(first.errors) == 1
    assert f"extract {FIRST} is already registered from {extracts / 'first'}" in first.errors[0]
    assert str(extracts / "first-copy") in first.errors[0]
    assert not tick(instance, resources, first.result.cursor).errors


def test_a_failed_extract_runs_again_when_corrected(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    rows = synthetic_extract_rows(4, people=4)
    rows[3].mrn = rows[0].mrn  # one MRN on two persons: bad content
    write_omop_extract(extracts / "first", rows)
    first = tick(instance, resources, None)
    assert first.run_keys == [f"{FIRST}#1"]
    failed = materialize(
        [cohort_messages],
        instance=instance,
        partition_key=FIRST,
        resources=resources,
        raise_on_error=False,
    )
    assert not failed.success
    # Nothing left but the failure: no extract row, no partition; status says why.
    assert FIRST not in instance.get_dynamic_partitions("extracts")
    statuses = extract_statuses(_database(env))
    assert [(s.extract, s.state, s.total) for s in statuses] == [(FIRST, "failed", None)]
    assert "more than one person_id" in (statuses[0].reason or "")

    # A corrected copy under another name replaces the failed registration.
    fixed = synthetic_extract_rows(4, people=4)
    write_omop_extract(extracts / "first-fixed", fixed)
    second = tick(instance, resources, first.result.cursor)
    assert second.run_keys == [f"{FIRST}#2"] and not second.errors
    assert materialize(
        [cohort_messages], instance=instance, partition_key=FIRST, resources=resources
    ).success
    statuses = extract_statuses(_database(env))
    assert [(s.extract, s.state, s.total) for s in statuses] == [(FIRST, "ingested", 4)]
    assert statuses[0].source == str(extracts / "first-fixed")


def test_a_failed_extract_fixed_in_place_runs_again(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    rows = synthetic_extract_rows(4, people=4)
    rows[3].mrn = rows[0].mrn
    extract = write_omop_extract(extracts / "first", rows)
    first = tick(instance, resources, None)
    assert not materialize(
        [cohort_messages],
        instance=instance,
        partition_key=FIRST,
        resources=resources,
        raise_on_error=False,
    ).success
    assert not tick(instance, resources, first.result.cursor).result.run_requests
    time.sleep(1.1)  # the fix is newer than the failure
    write_omop_extract(extract, synthetic_extract_rows(4, people=4))
    fixed = tick(instance, resources, first.result.cursor)
    assert fixed.run_keys == [f"{FIRST}#2"]


def test_a_zero_row_extract_is_ingested_with_a_warning(
    env: dict[str, object], instance: DagsterInstance
) -> None:
    extracts: Path = env["extracts"]  # type: ignore[assignment]
    resources: dict[str, object] = env["resources"]  # type: ignore[assignment]
    write_omop_extract(extracts / "empty", [])
    first = tick(instance, resources, None)
    assert first.partition_keys == [FIRST]
    result = materialize(
        [cohort_messages], instance=instance, partition_key=FIRST, resources=resources
    )
    assert result.success
    metadata = result.asset_materializations_for_node("cohort_messages")[0].metadata
    assert metadata["imaging_studies"].value == 0
    assert "0 imaging studies" in str(metadata["warnings"].value)
    [status] = extract_statuses(_database(env))
    assert (status.state, status.total) == ("ingested", 0)
    assert status.warnings == [
        "0 imaging studies: the extract was accepted but has nothing to retrieve"
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


def _as_unprivileged_user() -> list[str]:
    """A command prefix that runs as nobody, where permissions apply (root reads everything)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.mark.slow  # a fresh interpreter imports Dagster
def test_a_folder_that_cannot_be_read_does_not_stall_the_sensor() -> None:
    # Outside pytest's private tmp folder: the unprivileged user must reach the good extracts.
    base = Path(tempfile.mkdtemp(prefix="voxl-sensor-"))
    try:
        extracts, projects = base / "extracts", base / "projects"
        write_project(projects)
        _two_good_extracts(extracts)
        locked = write_omop_extract(
            extracts / "locked",
            synthetic_extract_rows(3, seed=4),
            extract_datetime=datetime(2026, 11, 3, 10, 0),
        )
        for path in [base, *base.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        locked.chmod(0o000)
        url = f"sqlite:///{base / 'voxl.db'}"
        done = subprocess.run(
            [
                *_as_unprivileged_user(),
                sys.executable,
                "-m",
                "tests.helpers.sensor_tick",
                str(extracts),
                str(projects),
                url,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(base), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["partition_keys"] == [FIRST, SECOND]
        assert report["errors"] == [f"{locked}: cannot be read (permission denied)"]
        assert report["second_tick_runs"] == [] and report["second_tick_errors"] == []
        problems = [s for s in extract_statuses(VoxlDatabase(url)) if s.state == "not_registered"]
        assert [(p.source, p.reason) for p in problems] == [
            (str(locked), f"{locked}: cannot be read (permission denied)")
        ]
    finally:
        (base / "extracts" / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
