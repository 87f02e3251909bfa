"""The whole job through the Dagster instance, in-process: extract -> cohort messages -> raw
(demo VNA over DIMSE) -> anonymised -> uploaded (local destination) -> mapping table + bundle."""

import os
import zipfile
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from dagster import AssetKey, DagsterInstance

from tests.helpers.leaks import Identifiers, files_holding
from tests.peers import free_port
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.demo.vna import DemoVna


@pytest.fixture
def voxl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "voxl"
    (home / "dagster").mkdir(parents=True)
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("VOXL_HASHING_KEY", "end-to-end-test-key-0123456789abcdef")
    monkeypatch.setenv("VOXL_VNA_AE_TITLE", "DEMOVNA")
    monkeypatch.setenv("VOXL_STUDY_WORKERS", "3")
    for name in list(os.environ):
        if name.startswith("VOXL_DATABASE_URL"):
            monkeypatch.delenv(name)
    return home


def test_extract_to_delivered_files(voxl_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voxl_assets.orchestration import (
        materialize_cohort,
        materialize_export,
        materialize_studies,
    )

    scenario = build_scenario(voxl_env / "demo", studies=9, missing=2)
    port = free_port()
    monkeypatch.setenv("VOXL_VNA_PORT", str(port))
    with DemoVna(scenario.archive_dir, port=port, ae_title="DEMOVNA"):
        database = VoxlDatabase()
        summary = read_any_summary(scenario.extract_dir)
        key = register_extract(database, summary, summary.project_slug)
        instance = DagsterInstance.get()
        cohort = materialize_cohort(instance, key, "test")
        study_keys = cohort.asset_materializations_for_node("cohort_messages")
        assert study_keys
        from voxl_assets.partitions import STUDIES

        keys = list(instance.get_dynamic_partitions(STUDIES))
        assert len(keys) == 9
        materialize_studies(instance, keys, "test")
        materialize_export(instance, key, "test")

    with database.session() as session:
        studies = {s.id: s for s in session.query(Study)}
    statuses = sorted(s.status for s in studies.values())
    assert statuses.count(StudyStatus.UPLOADED.value) == len(scenario.expected_uploaded) == 6
    assert statuses.count(StudyStatus.FAILED.value) == 2
    assert statuses.count(StudyStatus.FILTERED.value) == 1
    failed = [s.failure_reason for s in studies.values() if s.status == StudyStatus.FAILED.value]
    assert all("not found on the VNA" in (r or "") for r in failed)

    delivered = (
        voxl_env
        / "delivered"
        / "images"
        / "test-extract-uclh-omop-cdm"
        / "2026-11-01T12-00-00"
        / "dicom"
    )
    zips = sorted(delivered.glob("*.zip"))
    assert len(zips) == 6
    identifiers = {r.mrn for r in scenario.rows} | {r.accession_number for r in scenario.rows}
    with zipfile.ZipFile(zips[0]) as archive, archive.open(archive.namelist()[0]) as member:
        ds = pydicom.dcmread(member)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientID) not in identifiers

    bundle = voxl_env / "exports" / "test-extract-uclh-omop-cdm" / "2026-11-01T12-00-00"
    linker = pd.read_parquet(bundle / "IMAGE_LINKER.parquet")
    assert sorted(linker["procedure_occurrence_id"]) == scenario.expected_uploaded
    assert {f"{uid}.zip" for uid in linker["pseudo_study_uid"]} == {z.name for z in zips}
    ehr = voxl_env / "delivered" / "ehr" / "test-extract-uclh-omop-cdm" / "2026-11-01T12-00-00"
    assert (ehr / "IMAGE_LINKER.parquet").read_bytes() == (
        bundle / "IMAGE_LINKER.parquet"
    ).read_bytes()

    # The de-identification report, in the bundle, delivered, and on the asset in the UI.
    report = pd.read_parquet(bundle / "DEID_REPORT.parquet")
    summary = report[report["section"] == "summary"].set_index("name")["count"]
    assert summary["studies with instances written"] == 6
    assert summary["studies filtered out entirely"] == 1
    checks = report[report["section"] == "check"]
    assert set(checks["operation"]) == {"6 of 6 studies passed"}
    assert (ehr / "DEID_REPORT.html").read_bytes() == (bundle / "DEID_REPORT.html").read_bytes()
    event = instance.get_latest_materialization_event(AssetKey("ehr_bundle"))
    assert event is not None and event.asset_materialization is not None
    shown = event.asset_materialization.metadata["deid_report"]
    assert "**6** of 9 studies written" in str(shown.value)

    # Nothing VOXL wrote outside its own db and the raw cache holds an identifier: not the
    # Dagster storage (run and event SQLite files, compute logs), not the stores or exports.
    # Decoded: parquet values, zip members, SQLite rows, DICOM values; names, birth dates, series
    # and SOP UIDs too, any case, UTF-16 as well.
    needles = Identifiers()
    needles.add_dicom_files(p for p in scenario.archive_dir.rglob("*") if p.is_file())
    for row in scenario.rows:
        needles.add("extract", row.mrn, row.accession_number, row.study_uid)
    allowed = {voxl_env / "raw-cache", voxl_env / "demo"}  # demo: the inputs (archive, extract)
    scanned, leaking = files_holding(voxl_env, needles, allowed)
    assert not leaking, f"identifiers in {leaking}"
    assert scanned > 20


def test_delivered_studies_leave_the_anonymised_store_and_can_be_delivered_again(
    voxl_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The anonymised store keeps a study only until its destination has it; a forced re-delivery
    afterwards anonymises it again (from the raw cache, then from the archive once the cache let
    it go) and sends the same study under the same pseudonymous name."""
    import shutil

    from voxl_assets.imaging.batches import FORCE_UPLOAD_TAG, ONLY_STATUS_TAG
    from voxl_assets.orchestration import materialize_cohort, materialize_studies
    from voxl_assets.partitions import STUDIES

    scenario = build_scenario(voxl_env / "demo", studies=5, missing=1)
    port = free_port()
    monkeypatch.setenv("VOXL_VNA_PORT", str(port))
    delivered = voxl_env / "delivered" / "images"
    anon_store = voxl_env / "anon-store"
    with DemoVna(scenario.archive_dir, port=port, ae_title="DEMOVNA"):
        database = VoxlDatabase()
        summary = read_any_summary(scenario.extract_dir)
        key = register_extract(database, summary, summary.project_slug)
        instance = DagsterInstance.get()
        materialize_cohort(instance, key, "test")
        keys = list(instance.get_dynamic_partitions(STUDIES))
        materialize_studies(instance, keys, "test")

        with database.session() as session:
            uploaded = [s.id for s in session.query(Study) if s.status == "uploaded"]
        assert len(uploaded) == len(scenario.expected_uploaded) == 3
        zips = sorted(delivered.rglob("*.zip"))
        assert len(zips) == 3
        study_folders = [p for p in anon_store.glob("*/*") if p.is_dir()]
        assert study_folders == [], f"delivered studies left in the store: {study_folders}"

        # Forced re-delivery of the upload stage alone: the store holds nothing, so the upload
        # anonymises again from the raw cache.
        for path in zips:
            path.unlink()
        materialize_studies(
            instance,
            keys,
            "test",
            tags={FORCE_UPLOAD_TAG: "true", ONLY_STATUS_TAG: "uploaded"},
            stages=["destination_upload"],
        )
        assert sorted(p.name for p in delivered.rglob("*.zip")) == [z.name for z in zips]
        assert [p for p in anon_store.glob("*/*") if p.is_dir()] == []

        # And again once the raw cache let the studies go: they come back from the archive.
        evicted = [p for p in (voxl_env / "raw-cache" / "studies").iterdir() if p.is_dir()]
        assert len(evicted) == 4  # the three delivered studies and the filtered one
        for folder in evicted:
            shutil.rmtree(folder)
        for path in delivered.rglob("*.zip"):
            path.unlink()
        materialize_studies(
            instance,
            keys,
            "test",
            tags={FORCE_UPLOAD_TAG: "true", ONLY_STATUS_TAG: "uploaded"},
            stages=["destination_upload"],
        )
        redelivered = sorted(delivered.rglob("*.zip"))
        assert [p.name for p in redelivered] == [z.name for z in zips]
        with zipfile.ZipFile(redelivered[0]) as archive:
            assert len(archive.namelist()) == 3  # the study's three instances
        assert [p for p in anon_store.glob("*/*") if p.is_dir()] == []
    with database.session() as session:
        statuses = sorted(s.status for s in session.query(Study))
    assert statuses.count(StudyStatus.UPLOADED.value) == 3
