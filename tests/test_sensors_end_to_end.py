"""The whole job driven by the sensors, against real peers: Orthanc as the VNA, a second Orthanc
as the project's DICOMweb destination, a pyftpdlib FTPS server as its EHR destination.

The sensors are evaluated tick by tick and their run requests executed in this process through
the Dagster instance, as the daemon would launch them (no daemon process in the test).
"""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, SensorResult, build_sensor_context, materialize

from tests.helpers.leaks import Identifiers, files_holding
from tests.peers.ftps import FtpServer
from tests.peers.orthanc import OrthancServer, start_orthanc
from voxl_assets import settings
from voxl_assets.cli import main as voxl_main
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.partitions import EXTRACTS, STUDIES


@pytest.fixture
def destination_orthanc() -> Iterator[OrthancServer]:
    yield from start_orthanc(ae_title="DEST")


def _project_dir(tmp_path: Path, dicomweb_url: str, ftps: FtpServer) -> Path:
    projects = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", projects / "tag-operations"
    )
    definition: dict[str, Any] = {
        "project": {
            "slug": "test-extract-uclh-omop-cdm",
            "name": "Test Extract - UCLH OMOP CDM",
            "modalities": ["CT", "MR", "DX"],
        },
        "tag_operations": {"base": ["base.yaml", "ct.yaml", "mr.yaml", "dx-cr.yaml"]},
        "destinations": {
            "images": {"kind": "dicomweb", "url": dicomweb_url, "batch_size": 20},
            "ehr": {
                "kind": "ftps",
                "host": ftps.host,
                "port": ftps.port,
                "username_env": "E2E_FTPS_USER",
                "password_env": "E2E_FTPS_PASSWORD",
                "ca_bundle": str(ftps.certificate),
                "remote_root": "/",
            },
        },
    }
    (projects / "test-extract-uclh-omop-cdm.yaml").write_text(yaml.safe_dump(definition))
    return projects


def _tick(instance: DagsterInstance, name: str, cursors: dict[str, str | None]) -> list[Any]:
    from voxl_assets.definitions import build_definitions

    defs = build_definitions()  # configured from the environment the test set
    sensor = defs.resolve_sensor_def(name)
    with build_sensor_context(
        instance=instance, cursor=cursors.get(name), resources=defs.resources
    ) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys or [])
        )
    cursors[name] = result.cursor
    return list(result.run_requests or [])


def _launch(instance: DagsterInstance, request: Any) -> None:
    """Execute one run request as the daemon would (same assets, partition, tags)."""
    from voxl_assets.definitions import build_definitions

    defs = build_definitions()
    selection = request.asset_selection or [defs.get_assets_def("cohort_messages").key]
    assets = {defs.get_assets_def(key) for key in selection}
    result = materialize(
        list(assets),
        instance=instance,
        partition_key=request.partition_key,
        resources=defs.resources,
        tags=dict(request.tags or {}),
        selection=selection,
    )
    assert result.success


def test_sensors_run_the_whole_job(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    destination_orthanc: OrthancServer,
    ftps_server: FtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "voxl"
    scenario = build_scenario(
        tmp_path / "input", studies=50, missing=3, instances=2, rows_columns=32
    )
    orthanc.upload_folder(scenario.archive_dir)
    env = {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_PROJECTS_DIR": str(
            _project_dir(tmp_path, destination_orthanc.dicomweb_url, ftps_server)
        ),
        "VOXL_EXTRACTS_DIR": str(scenario.extract_dir.parent),
        "VOXL_EXTRACT_QUIET_SECONDS": "0",
        "VOXL_HASHING_KEY": "sensor-end-to-end-key-0123456789",
        "VOXL_VNA_PORT": str(orthanc.dicom_port),
        "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        "VOXL_STUDY_BATCH_SIZE": "20",
        "E2E_FTPS_USER": ftps_server.username,
        "E2E_FTPS_PASSWORD": ftps_server.password,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(
        settings.REPO_ROOT / "deployments" / "local" / "dagster.yaml",
        home / "dagster" / "dagster.yaml",
    )
    monkeypatch.setenv("VOXL_DAGSTER_LOGS_DIR", str(home / "dagster" / "logs"))
    instance = DagsterInstance.get()
    cursors: dict[str, str | None] = {}

    for request in _tick(instance, "new_extract_sensor", cursors):
        _launch(instance, request)
    assert len(instance.get_dynamic_partitions(EXTRACTS)) == 1
    assert _tick(instance, "new_extract_sensor", cursors) == []  # no duplicate
    assert _tick(instance, "extract_export_sensor", cursors) == []  # studies not ended yet

    batches = _tick(instance, "study_batch_sensor", cursors)
    assert len(batches) == 3  # 50 studies in batches of 20
    for request in batches:
        _launch(instance, request)
    assert _tick(instance, "study_batch_sensor", cursors) == []

    exports = _tick(instance, "extract_export_sensor", cursors)
    assert len(exports) == 1
    for request in exports:
        _launch(instance, request)
    assert _tick(instance, "extract_export_sensor", cursors) == []

    uploaded = scenario.expected_uploaded
    assert len(destination_orthanc.study_uids()) == len(uploaded) == 46
    assert len(instance.get_dynamic_partitions(STUDIES)) == 50
    folder = ftps_server.root / "test-extract-uclh-omop-cdm" / "2026-11-01T12-00-00"
    linker = pd.read_parquet(folder / "IMAGE_LINKER.parquet")
    assert sorted(linker["procedure_occurrence_id"]) == uploaded
    assert set(linker["pseudo_study_uid"]) == destination_orthanc.study_uids()
    found_by_fallback = scenario.by_mrn_accession[0]
    assert found_by_fallback in set(linker["procedure_occurrence_id"])

    capsys.readouterr()
    assert voxl_main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)[0]
    assert status["by_state"]["uploaded"] == 46 and status["by_state"]["failed"] == 3
    assert status["by_state"]["filtered"] == 1
    reasons = dict((r, n) for r, n in status["failure_reasons"])
    # Everything VOXL wrote (Dagster's SQLite storage, event logs, compute logs, stores, exports)
    # holds no MRN, accession number or source study UID, apart from its db and the raw cache.
    # The destinations' own storage too: the DICOMweb peer's files and index, the FTPS root.
    needles = Identifiers()
    needles.add_dicom_files(p for p in scenario.archive_dir.rglob("*") if p.is_file())
    for row in scenario.rows:
        needles.add("extract", row.mrn, row.accession_number, row.study_uid)
    scanned, leaking = files_holding(home, needles, [home / "raw-cache"])
    assert scanned > 10 and leaking == []
    for peer_storage in (destination_orthanc.root / "storage", ftps_server.root):
        scanned, leaking = files_holding(peer_storage, needles)
        assert scanned > 0 and leaking == [], peer_storage
    assert reasons["failed: study not found on the VNA by study UID nor by MRN + accession"] == 3
