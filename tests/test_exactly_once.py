"""Exactly once, counted where it matters: at the destination. Orthanc logs every instance it
receives (a Lua ReceivedInstanceFilter, which sees a re-sent copy that Orthanc then stores over
the first), and the FTPS server counts every completed upload.

- a re-run of a project's studies sends nothing again, nor does a `--top-up-cache` re-run that
  fetched an instance the archive gained;
- a process killed between the destination accepting a study and VOXL recording it (the one
  window no system can close) leads to a resend: the destination received the study twice but
  holds it once (idempotent names), and the resend is recorded and reported as such.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from dagster import AssetKey, DagsterInstance
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.peers._upload_study import TARGET, anonymised_study, database_with_study, export_count
from tests.peers.ftps import FtpServer
from tests.peers.orthanc import OrthancServer, start_orthanc
from voxl_assets import settings
from voxl_assets.cli import main as voxl_main
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import UploadAttempt
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.project_config import DicomWebDestination, FtpsDestination
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_image_uploader

SLUG = "test-extract-uclh-omop-cdm"


@pytest.fixture
def counting_orthanc() -> Iterator[OrthancServer]:
    yield from start_orthanc(ae_title="DEST", count_deliveries=True)


def _project_dir(tmp_path: Path, dicomweb_url: str) -> Path:
    projects = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", projects / "tag-operations"
    )
    definition: dict[str, Any] = {
        "project": {
            "slug": SLUG,
            "name": "Test Extract - UCLH OMOP CDM",
            "modalities": ["CT", "MR", "DX"],
        },
        "tag_operations": {"base": ["base.yaml", "ct.yaml", "mr.yaml", "dx-cr.yaml"]},
        "destinations": {"images": {"kind": "dicomweb", "url": dicomweb_url, "batch_size": 3}},
    }
    (projects / f"{SLUG}.yaml").write_text(yaml.safe_dump(definition))
    return projects


def test_a_rerun_sends_nothing_the_destination_counts_each_instance_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    counting_orthanc: OrthancServer,
) -> None:
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.orchestration import materialize_cohort

    home = tmp_path / "voxl"
    for name, value in {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_PROJECTS_DIR": str(_project_dir(tmp_path, counting_orthanc.dicomweb_url)),
        "VOXL_HASHING_KEY": "exactly-once-test-key-0123456789",
        "VOXL_VNA_PORT": str(orthanc.dicom_port),
        "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        "VOXL_VNA_RETRY_DELAY_SECONDS": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    scenario = build_scenario(
        tmp_path / "input", studies=5, missing=0, instances=3, rows_columns=32
    )  # one of the five is ultrasound: filtered
    orthanc.upload_folder(scenario.archive_dir)
    ensure_dagster_home()
    database = VoxlDatabase()
    summary = read_any_summary(scenario.extract_dir)
    materialize_cohort(
        DagsterInstance.get(), register_extract(database, summary, summary.project_slug), "test"
    )

    assert voxl_main(["backfill", SLUG, "--in-process"]) == 0
    first = counting_orthanc.deliveries()
    with database.session() as session:
        statuses = list(session.scalars(select(Study.status)))
    assert sorted(statuses) == ["filtered"] + [StudyStatus.UPLOADED.value] * 4
    assert len(first) == counting_orthanc.instance_count() == 12
    assert set(first.values()) == {1}  # each instance received once

    assert voxl_main(["backfill", SLUG, "--in-process"]) == 0  # everything again
    assert counting_orthanc.deliveries() == first  # ... and nothing reached the destination

    # The archive gains an instance of a delivered study: a plain re-run does not ask for it,
    # `--top-up-cache` fetches it into the cache; the delivered study is not sent again.
    source = next(  # an instance of a delivered study (the scenario's ultrasound is filtered)
        p
        for p in sorted(scenario.archive_dir.rglob("*"))
        if p.is_file() and pydicom.dcmread(p, stop_before_pixels=True).Modality != "US"
    )
    extra = pydicom.dcmread(source)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    orthanc.upload(tmp_path / "extra.dcm")
    cached = home / "raw-cache" / "studies"
    before = sum(1 for p in cached.rglob("*") if p.is_file())
    assert voxl_main(["backfill", SLUG, "--in-process"]) == 0
    assert sum(1 for p in cached.rglob("*") if p.is_file()) == before
    assert voxl_main(["backfill", SLUG, "--top-up-cache", "--in-process"]) == 0
    assert sum(1 for p in cached.rglob("*") if p.is_file()) == before + 1
    assert counting_orthanc.deliveries() == first
    # (redeliver_topped_up: never, the default) The held-back instance is shown on the asset.
    records = DagsterInstance.get().fetch_materializations(AssetKey("destination_upload"), 4)
    held_back = [
        r.asset_materialization.metadata.get("not_redelivered")
        for r in records.records
        if r.asset_materialization is not None
    ]
    assert sorted(int(str(m.value)) for m in held_back if m is not None) == [0, 0, 0, 1]


def _destination(kind: str, orthanc: OrthancServer | None, ftps: FtpServer | None) -> Any:
    if kind == "dicomweb":
        assert orthanc is not None
        return DicomWebDestination(kind="dicomweb", url=orthanc.dicomweb_url, batch_size=2)
    assert ftps is not None
    return FtpsDestination(
        kind="ftps",
        host=ftps.host,
        port=ftps.port,
        username_env="KILLED_FTPS_USER",
        password_env="KILLED_FTPS_PASSWORD",
        ca_bundle=str(ftps.certificate),
    )


@pytest.mark.parametrize("kind", ["dicomweb", "ftps"])
def test_a_kill_between_delivery_and_record_is_a_detected_resend(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    orthanc: OrthancServer | None = None
    ftps: FtpServer | None = None
    if kind == "dicomweb":
        orthanc = request.getfixturevalue("counting_orthanc")
    else:
        ftps = request.getfixturevalue("ftps_server")
        monkeypatch.setenv("KILLED_FTPS_USER", ftps.username)
        monkeypatch.setenv("KILLED_FTPS_PASSWORD", ftps.password)

    def deliveries() -> int:
        if orthanc is not None:
            return sum(orthanc.deliveries().values())
        assert ftps is not None
        # Stored under the temporary name, then renamed into place: count completed stores.
        return sum(p.endswith(f"{Path(TARGET.relative_zip_path).name}.part") for p in ftps.received)

    files = anonymised_study(tmp_path / "anon", instances=4)
    database = database_with_study(tmp_path)
    destination = _destination(kind, orthanc, ftps)
    before = deliveries()
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.killed_upload",
            database.url,
            "1",
            destination.model_dump_json(),
            *map(str, files),
        ],
        cwd=settings.REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    once = 4 if orthanc is not None else 1
    assert deliveries() - before == once  # the destination has the study ...
    assert export_count(database) == 0  # ... and VOXL does not know

    uploader = make_image_uploader(destination)
    assert uploader is not None
    report = upload_study_once(database, 1, uploader, files, TARGET)
    assert report is not None and report.resend  # reported as a resend
    assert deliveries() - before == 2 * once  # a real second send, seen by the destination
    if orthanc is not None:
        assert orthanc.instance_count() == 4  # held once: stored by SOP Instance UID
    else:
        assert ftps is not None
        assert [p for p in ftps.root.rglob("*.zip")] == [ftps.root / TARGET.relative_zip_path]
    with database.session() as session:
        attempts = [(a.outcome, a.resend) for a in session.scalars(select(UploadAttempt))]
    assert attempts == [("cut off", False), ("sent", True)]
    assert export_count(database) == 1
    # Recorded now: the next run sends nothing, and is no resend.
    assert upload_study_once(database, 1, uploader, files, TARGET) is None
    assert deliveries() - before == 2 * once
