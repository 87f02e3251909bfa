"""Faults during a run: the VNA stops mid-run, then `voxl backfill --failed-only` recovers the
failed studies; a worker killed mid-batch, then the batch re-run uploads nothing twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import func, select

from tests.peers.orthanc import OrthancServer
from voxl_assets import settings
from voxl_assets.cli import main as voxl_main
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.partitions import STUDIES


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orthanc: OrthancServer) -> dict[str, str]:
    home = tmp_path / "voxl"
    values = {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_HASHING_KEY": "fault-test-key-0123456789abcdef",
        "VOXL_VNA_PORT": str(orthanc.dicom_port),
        "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        "VOXL_VNA_RETRY_DELAY_SECONDS": "0.05",
        "VOXL_VNA_TIMEOUT_SECONDS": "5",
        "VOXL_STUDY_WORKERS": "2",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    return values


def _statuses(database: VoxlDatabase) -> dict[str, int]:
    with database.session() as session:
        rows = session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
    return {status: count for status, count in rows}


def _populated(
    orthanc: OrthancServer, root: Path, studies: int, instances: int, size: int
) -> tuple[VoxlDatabase, str]:
    """A scenario loaded into Orthanc and its cohort materialised; returns (db, project slug)."""
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.orchestration import materialize_cohort

    scenario = build_scenario(
        root, studies=studies, missing=0, instances=instances, rows_columns=size
    )
    orthanc.upload_folder(scenario.archive_dir)
    ensure_dagster_home()
    database = VoxlDatabase()
    summary = read_any_summary(scenario.extract_dir)
    key = register_extract(database, summary, summary.project_slug)
    materialize_cohort(DagsterInstance.get(), key, "test")
    return database, summary.project_slug


def test_vna_down_mid_run_then_backfill_failed_only(
    env: dict[str, str], orthanc: OrthancServer, tmp_path: Path
) -> None:
    from voxl_assets.orchestration import materialize_studies

    database, project = _populated(orthanc, tmp_path / "input", studies=8, instances=2, size=32)
    instance = DagsterInstance.get()
    keys = list(instance.get_dynamic_partitions(STUDIES))
    materialize_studies(instance, keys[:4], "test")  # the first half goes through
    orthanc.stop()  # the VNA goes away for the rest of the run
    try:
        materialize_studies(instance, keys[4:], "test")
        statuses = _statuses(database)
        assert statuses[StudyStatus.FAILED.value] == 4  # reported, the run itself did not crash
        with database.session() as session:
            reasons = set(
                session.scalars(select(Study.failure_reason).where(Study.status == "failed"))
            )
        assert all("VNA" in (r or "") for r in reasons), reasons
    finally:
        orthanc.start()
    orthanc.upload_folder(tmp_path / "input" / "archive")
    assert voxl_main(["backfill", project, "--failed-only", "--in-process"]) == 0
    statuses = _statuses(database)
    assert statuses.get(StudyStatus.FAILED.value, 0) == 0
    assert statuses[StudyStatus.UPLOADED.value] == 7 and statuses[StudyStatus.FILTERED.value] == 1


def test_worker_killed_mid_batch_then_rerun_uploads_nothing_twice(
    env: dict[str, str], orthanc: OrthancServer, tmp_path: Path
) -> None:
    database, project = _populated(orthanc, tmp_path / "input", studies=20, instances=4, size=128)
    command = [
        sys.executable,
        "-m",
        "voxl_assets.cli",
        "backfill",
        project,
        "--in-process",
    ]
    worker = subprocess.Popen(
        command,
        env={**os.environ},
        cwd=settings.REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it once some, not all, studies are delivered
        with database.session() as session:
            exported = session.scalar(select(func.count()).select_from(StudyExport)) or 0
        if exported >= 3:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    with database.session() as session:
        before = session.scalar(select(func.count()).select_from(StudyExport)) or 0
    assert 3 <= before < 19, "the worker was not killed mid-batch"
    assert voxl_main(["backfill", project, "--in-process"]) == 0  # resume
    with database.session() as session:
        exports = session.execute(
            select(StudyExport.study_id, func.count()).group_by(StudyExport.study_id)
        ).all()
    assert len(exports) == 19 and all(count == 1 for _, count in exports)  # 19: one is US, filtered
    delivered = Path(env["VOXL_HOME"]) / "delivered" / "images" / "test-extract-uclh-omop-cdm"
    zips = list(delivered.rglob("*.zip"))
    assert len(zips) == 19 and not list(delivered.rglob("*.part"))
