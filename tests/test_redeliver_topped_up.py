"""Topped-up studies re-delivered as the project says (``redeliver_topped_up``), exactly once per
change, counted at real destinations: Orthanc over DICOMweb (its Lua filter logs every instance
it receives, re-sent copies included) and the FTPS server (every completed upload).

- never: the first delivery stands; the new instances are only counted as held back;
- replace: the whole study again (Orthanc receives every instance once more and holds the full
  study; the FTPS zip is replaced under its name by one holding every instance);
- add: only the new instances (Orthanc receives just those; FTPS gets ``<uid>.rev<N>.zip``);
- each change is delivered once: a re-run sends nothing, the next top-up is the next revision.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from dagster import AssetKey, DagsterInstance
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    top_up,
    zip_names,
)
from tests.peers.ftps import FtpServer
from tests.peers.orthanc import OrthancServer, start_orthanc
from voxl_assets import settings
from voxl_assets.cli import main as voxl_main
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import DeliveredInstance, StudyExport
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.export.bundle import mapping_rows
from voxl_assets.project_config import DicomWebDestination, FtpsDestination
from voxl_assets.upload.base import ImageUploader
from voxl_assets.upload.exactly_once import (
    Redeliver,
    undelivered_instances,
    upload_study_once,
)
from voxl_assets.upload.factory import make_image_uploader

MODES: list[Redeliver] = ["never", "replace", "add"]
SLUG = "test-extract-uclh-omop-cdm"


@pytest.fixture(scope="module")
def counting_orthanc() -> Iterator[OrthancServer]:
    yield from start_orthanc(ae_title="DEST", count_deliveries=True)


class Peer:
    """One destination as the tests see it: an uploader, and what the server received."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, mode: Redeliver) -> None:
        self.kind = kind
        self.target = replace(TARGET, pseudo_study_uid=f"2.25.{MODES.index(mode) + 7001}")
        env: dict[str, str] = {}
        if kind == "dicomweb":
            self.orthanc: OrthancServer = request.getfixturevalue("counting_orthanc")
            self.orthanc.clear()
            destination: Any = DicomWebDestination(
                kind="dicomweb", url=self.orthanc.dicomweb_url, batch_size=2
            )
        else:
            self.ftps: FtpServer = request.getfixturevalue("ftps_server")
            env = {"FTPS_USER": self.ftps.username, "FTPS_PASSWORD": self.ftps.password}
            destination = FtpsDestination(
                kind="ftps",
                host=self.ftps.host,
                port=self.ftps.port,
                username_env="FTPS_USER",
                password_env="FTPS_PASSWORD",
                ca_bundle=str(self.ftps.certificate),
            )
        uploader = make_image_uploader(destination, env)
        assert uploader is not None
        self.uploader: ImageUploader = uploader

    def received(self) -> int:
        """Instances (DICOMweb) or zips (FTPS) of this study the server has received."""
        if self.kind == "dicomweb":
            return sum(self.orthanc.deliveries().values())
        folder = Path(self.target.relative_zip_path).parent.as_posix()
        prefix = f"{folder}/.{self.target.pseudo_study_uid}"
        return sum(p.startswith(prefix) for p in self.ftps.received)

    def holds(self) -> dict[str, set[str]]:
        """What the destination holds: per study UID (DICOMweb) or zip name (FTPS), the
        instances."""
        if self.kind == "dicomweb":
            held: dict[str, set[str]] = {}
            for instance in self.orthanc.get("/instances?expand"):
                tags = self.orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
                held.setdefault(tags["StudyInstanceUID"], set()).add(
                    f"{tags['SOPInstanceUID']}.dcm"
                )
            return held
        folder = self.ftps.root / Path(self.target.relative_zip_path).parent
        return {
            path.name: zip_names(path)
            for path in folder.glob(f"{self.target.pseudo_study_uid}*.zip")
        }


def _record(database: VoxlDatabase) -> tuple[int, int, list[tuple[str, int]]]:
    with database.session() as session:
        row = session.scalars(select(StudyExport)).one()
        listed = session.execute(
            select(DeliveredInstance.name, DeliveredInstance.revision).order_by(
                DeliveredInstance.revision, DeliveredInstance.name
            )
        ).all()
        return row.revision, row.instances, [(name, revision) for name, revision in listed]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["dicomweb", "ftps"])
def test_a_topped_up_study_is_redelivered_once_per_change(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, mode: Redeliver
) -> None:
    peer = Peer(kind, request, mode)
    per_zip = kind == "ftps"  # FTPS counts zips received, DICOMweb instances
    database = database_with_study(tmp_path)
    first = anonymised_study(tmp_path / "anon", instances=4)
    study_uid = str(pydicom.dcmread(first[0]).StudyInstanceUID)
    names = {p.name for p in first}

    def deliver(files: list[Path]) -> Any:
        return upload_study_once(database, 1, peer.uploader, files, peer.target, redeliver=mode)

    report = deliver(first)
    assert report is not None and (report.revision, report.instances) == (1, 4)
    assert peer.received() == (1 if per_zip else 4)
    assert deliver(first) is None  # nothing changed: nothing sent

    grown = top_up(first, 2)
    new = {p.name for p in grown} - names
    report = deliver(grown)
    zip_name = f"{peer.target.pseudo_study_uid}.zip"
    if mode == "never":
        assert report is None
        assert peer.received() == (1 if per_zip else 4)
        assert undelivered_instances(database, 1, peer.uploader.describe(), grown) == 2
        assert peer.holds() == {(zip_name if per_zip else study_uid): names}
        assert _record(database)[:2] == (1, 4)
        return
    assert report is not None and report.revision == 2
    if mode == "replace":
        assert report.instances == 6
        assert peer.received() == (2 if per_zip else 4 + 6)
        assert peer.holds() == {(zip_name if per_zip else study_uid): names | new}
    else:
        assert report.instances == 2
        assert peer.received() == (2 if per_zip else 4 + 2)
        if per_zip:
            added = f"{peer.target.pseudo_study_uid}.rev2.zip"
            assert peer.holds() == {zip_name: names, added: new}
        else:
            assert peer.holds() == {study_uid: names | new}  # one study, same UID
    assert _record(database) == (
        2,
        6,
        sorted((n, 1) for n in names) + sorted((n, 2) for n in new),
    )
    received = peer.received()

    # Exactly once per change: re-runs send nothing; a further top-up is the next revision.
    assert deliver(grown) is None and deliver(grown) is None
    assert peer.received() == received
    again = top_up(grown, 1)
    report = deliver(again)
    assert report is not None and report.revision == 3
    assert report.instances == (7 if mode == "replace" else 1)
    assert deliver(again) is None
    assert _record(database)[:2] == (3, 7)
    if per_zip:
        expected = (
            {zip_name: {p.name for p in again}}
            if mode == "replace"
            else {
                zip_name: names,
                f"{peer.target.pseudo_study_uid}.rev2.zip": new,
                f"{peer.target.pseudo_study_uid}.rev3.zip": {p.name for p in again} - names - new,
            }
        )
        assert peer.holds() == expected
    else:
        assert peer.holds() == {study_uid: {p.name for p in again}}
        assert peer.orthanc.instance_count() == 7


def test_a_record_from_before_instances_were_listed_is_completed_then_compared(
    tmp_path: Path, ftps_server: FtpServer
) -> None:
    """A study delivered before VOXL listed instances: an unchanged study gets its list (and
    is not sent); a grown one cannot say which instances are new, so ``add`` sends it whole
    under its own name, as ``replace`` would."""
    env = {"FTPS_USER": ftps_server.username, "FTPS_PASSWORD": ftps_server.password}
    uploader = make_image_uploader(
        FtpsDestination(
            kind="ftps",
            host=ftps_server.host,
            port=ftps_server.port,
            username_env="FTPS_USER",
            password_env="FTPS_PASSWORD",
            ca_bundle=str(ftps_server.certificate),
            remote_root="/legacy",
        ),
        env,
    )
    assert uploader is not None
    database = database_with_study(tmp_path)
    files = anonymised_study(tmp_path / "anon", instances=3)
    assert upload_study_once(database, 1, uploader, files, TARGET, redeliver="add") is not None
    with database.session() as session:  # as the record was before this version
        for row in session.scalars(select(DeliveredInstance)):
            session.delete(row)
    assert upload_study_once(database, 1, uploader, files, TARGET, redeliver="add") is None
    assert _record(database)[2] == sorted((p.name, 1) for p in files)  # listed now

    with database.session() as session:
        for row in session.scalars(select(DeliveredInstance)):
            session.delete(row)
    grown = top_up(files, 1)
    report = upload_study_once(database, 1, uploader, grown, TARGET, redeliver="add")
    assert report is not None and (report.revision, report.instances) == (2, 4)
    final = ftps_server.root / "legacy" / TARGET.relative_zip_path
    assert zip_names(final) == {p.name for p in grown}
    assert list(final.parent.glob("*.rev*.zip")) == []


def _project_dir(tmp_path: Path, dicomweb_url: str, mode: Redeliver) -> Path:
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
        "destinations": {
            "images": {"kind": "dicomweb", "url": dicomweb_url, "batch_size": 3},
            "redeliver_topped_up": mode,
        },
    }
    (projects / f"{SLUG}.yaml").write_text(yaml.safe_dump(definition))
    return projects


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_the_pipeline_redelivers_a_topped_up_study_and_the_mapping_table_stands(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    counting_orthanc: OrthancServer,
    mode: Redeliver,
) -> None:
    """`voxl backfill --top-up-cache` after the archive gained an instance of a delivered study:
    that study alone is re-delivered (whole, or the one instance), once; the pseudonymous ids and
    so the mapping table are those of the first delivery."""
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.orchestration import materialize_cohort

    counting_orthanc.clear()
    home = tmp_path / "voxl"
    for name, value in {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_PROJECTS_DIR": str(_project_dir(tmp_path, counting_orthanc.dicomweb_url, mode)),
        "VOXL_HASHING_KEY": "redeliver-test-key-0123456789abc",
        "VOXL_VNA_PORT": str(orthanc.dicom_port),
        "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        "VOXL_VNA_RETRY_DELAY_SECONDS": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    scenario = build_scenario(
        tmp_path / "input", studies=3, missing=0, instances=3, rows_columns=32
    )
    orthanc.upload_folder(scenario.archive_dir)
    ensure_dagster_home()
    database = VoxlDatabase()
    summary = read_any_summary(scenario.extract_dir)
    extract_key = register_extract(database, summary, summary.project_slug)
    materialize_cohort(DagsterInstance.get(), extract_key, "test")

    assert voxl_main(["backfill", SLUG, "--in-process"]) == 0
    first = counting_orthanc.deliveries()
    studies_at_destination = counting_orthanc.study_uids()
    assert set(first.values()) == {1} and len(first) == 3 * len(studies_at_destination)
    _, mapping = mapping_rows(database, extract_key)

    source = next(  # an instance of a delivered study (the scenario's ultrasound is filtered)
        p
        for p in sorted(scenario.archive_dir.rglob("*"))
        if p.is_file() and pydicom.dcmread(p, stop_before_pixels=True).Modality != "US"
    )
    extra = pydicom.dcmread(source)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    orthanc.upload(tmp_path / "extra.dcm")
    assert voxl_main(["backfill", SLUG, "--top-up-cache", "--in-process"]) == 0

    after = counting_orthanc.deliveries()
    sent_again = after - first  # each delivery since, by SOP Instance UID
    topped_up_study = {
        counting_orthanc.get(f"/instances/{i['ID']}/simplified-tags")["StudyInstanceUID"]
        for i in counting_orthanc.get("/instances?expand")
        if i["MainDicomTags"]["SOPInstanceUID"] in sent_again
    }
    assert len(topped_up_study) == 1  # one study re-delivered, under its first pseudonymous UID
    assert counting_orthanc.study_uids() == studies_at_destination
    if mode == "replace":
        assert sorted(sent_again.values()) == [1] * 4  # its three instances again, and the new
        assert len(set(sent_again) - set(first)) == 1
    else:
        assert list(sent_again.values()) == [1] and not set(sent_again) & set(first)
    assert counting_orthanc.instance_count() == len(first) + 1
    assert mapping_rows(database, extract_key)[1] == mapping  # same pseudonymous ids
    with database.session() as session:
        revisions = sorted(session.scalars(select(StudyExport.revision)))
    assert revisions == [1] * (len(studies_at_destination) - 1) + [2]

    assert _redeliveries() == [(mode, 2)]  # shown on the asset, once

    # Exactly once per change: the same top-up run again sends nothing.
    assert voxl_main(["backfill", SLUG, "--top-up-cache", "--in-process"]) == 0
    assert counting_orthanc.deliveries() == after
    assert _redeliveries() == [(mode, 2)]


def _redeliveries() -> list[tuple[str, int]]:
    """(mode, revision) of every destination_upload materialisation that re-delivered."""
    records = (
        DagsterInstance.get()
        .fetch_materializations(AssetKey("destination_upload"), limit=100)
        .records
    )
    found = []
    for record in records:
        materialization = record.asset_materialization
        assert materialization is not None
        metadata = materialization.metadata
        if "redelivered" in metadata:
            found.append((str(metadata["redelivered"].value), int(str(metadata["revision"].value))))
    return found
