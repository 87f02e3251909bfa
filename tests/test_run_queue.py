"""The shipped dagster.yaml files, through Dagster's own queued run coordinator daemon: runs are
queued, not started, on submission; one daemon iteration starts at most ``max_concurrent_runs``
of them, higher ``dagster/priority`` first. The runs are the study sensor's run requests for two
projects of different priority. Only the run launcher is replaced, by Dagster's recording test
launcher, so the test sees which runs were started, in order, without executing them. `voxl
backfill` hands the project's priority to the backfill its runs are made from."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_sensor_context
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from sqlalchemy.engine import make_url

from sensors.study_sensor import study_batch_sensor
from tests.helpers.projects import write_project
from voxl_assets import settings
from voxl_assets.partitions import STUDIES

JOB = "__ASSET_JOB"
ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=RegisteredCodeLocationOrigin("voxl"),
        repository_name="__repository__",
    ),
    job_name=JOB,
)
CODE_ORIGIN = JobPythonOrigin(
    JOB,
    RepositoryPythonOrigin(
        sys.executable,
        ModuleCodePointer("voxl_assets.definitions", "defs", str(settings.REPO_ROOT)),
    ),
)
SHIPPED_CAP = {"local": 4, "production": 8}  # concurrency.runs.max_concurrent_runs


def _registry(directory: Path) -> None:
    for slug, priority in (("routine", 0), ("urgent", 5)):
        path = write_project(directory, slug, name=slug)
        definition = yaml.safe_load(path.read_text())
        definition["project"]["priority"] = priority
        path.write_text(yaml.safe_dump(definition))


@pytest.mark.parametrize("deployment", ["local", "production"])
def test_queued_runs_start_by_priority_up_to_the_cap(
    deployment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    config = yaml.safe_load(
        (settings.REPO_ROOT / "deployments" / deployment / "dagster.yaml").read_text()
    )
    config["run_launcher"] = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    config.pop("compute_logs", None)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    if deployment == "production":
        url = make_url(request.getfixturevalue("postgres_url"))
        for name, value in {
            "VOXL_DAGSTER_PG_HOST": url.host or "127.0.0.1",
            "VOXL_DAGSTER_PG_PORT": str(url.port or 5432),
            "VOXL_DAGSTER_PG_DB": url.database or "",
            "VOXL_DAGSTER_PG_USER": url.username or "postgres",
            "VOXL_DAGSTER_PG_PASSWORD": url.password or "",
        }.items():
            monkeypatch.setenv(name, value)
    _registry(tmp_path / "projects")
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("VOXL_STUDY_BATCH_SIZE", "1")  # one run per study: enough runs to queue
    with DagsterInstance.from_config(str(home)) as instance:
        routine = [f"routine/{n}" for n in range(1, 6)]
        urgent = [f"urgent/{n}" for n in range(6, 11)]
        instance.add_dynamic_partitions(STUDIES, routine + urgent)
        from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
        from voxl_assets.db import Study, VoxlDatabase

        voxl_url = f"sqlite:///{tmp_path / 'voxl.db'}"
        with VoxlDatabase(voxl_url).session() as session:  # the studies the sensor finds queued
            for number in range(1, 11):
                project = "routine" if number <= 5 else "urgent"
                session.add(Study(id=number, project=project, mrn=f"M{number}", status="queued"))
        result = study_batch_sensor(
            build_sensor_context(
                instance=instance,
                resources={
                    "voxl_db": VoxlDatabaseResource(url=voxl_url),
                    "projects": ProjectRegistryResource(directory=str(tmp_path / "projects")),
                },
            )
        )
        requests = sorted(
            result.run_requests or [],  # type: ignore[union-attr]
            key=lambda r: int(r.tags["dagster/asset_partition_range_start"].rpartition("/")[2]),
        )
        assert len(requests) == 10
        with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as context:
            workspace = context.create_request_context()
            # Submitted in partition order: the routine project's runs first.
            for run_request in requests:
                run = create_run_for_test(
                    instance,
                    job_name=JOB,
                    tags=dict(run_request.tags),
                    remote_job_origin=ORIGIN,
                    job_code_origin=CODE_ORIGIN,
                )
                instance.submit_run(run.run_id, workspace)
            statuses = {r.status for r in instance.get_runs()}
            assert statuses == {DagsterRunStatus.QUEUED}  # the queued coordinator holds them
            list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(context))
        launched = instance.run_launcher.queue()  # type: ignore[attr-defined]
        cap = SHIPPED_CAP[deployment]
        assert len(launched) == cap
        started = [r.tags["dagster/asset_partition_range_start"] for r in launched]
        assert started == (urgent + routine)[:cap]  # higher priority first, FIFO within one
        waiting = instance.get_runs()
        assert sum(r.status == DagsterRunStatus.QUEUED for r in waiting) == 10 - cap


def test_voxl_backfill_queues_at_the_projects_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.cli import main as voxl_main
    from voxl_assets.db import Extract, ExtractStudy, Study, VoxlDatabase
    from voxl_assets.db.models import study_partition_key

    home = tmp_path / "voxl"
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    _registry(tmp_path / "projects")
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    database = VoxlDatabase()
    from datetime import datetime

    with database.session() as session:
        extract = Extract(
            project="urgent", extract_datetime=datetime(2026, 11, 1, 12, 0), source_path="x"
        )
        study = Study(project="urgent", mrn="M1", accession_number="A1")
        session.add_all([extract, study])
        session.flush()
        session.add(
            ExtractStudy(extract_id=extract.id, study_id=study.id, procedure_occurrence_id=1)
        )
        key = study_partition_key("urgent", study.id)
    from voxl_assets.dagster_home import ensure_dagster_home

    ensure_dagster_home()
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(STUDIES, [key])
    assert voxl_main(["backfill", "urgent"]) == 0
    (backfill,) = instance.get_backfills()
    assert backfill.tags["dagster/priority"] == "5"
    assert backfill.tags.get("voxl/top-up-cache") is None
    assert voxl_main(["backfill", "urgent", "--top-up-cache"]) == 0
    top_up = next(b for b in instance.get_backfills() if b.backfill_id != backfill.backfill_id)
    assert top_up.tags["dagster/priority"] == "5" and top_up.tags["voxl/top-up-cache"] == "true"
    shutil.rmtree(home, ignore_errors=True)
