"""FTPS uploads against pyftpdlib's TLS server (TLS required on control and data channels)."""

from __future__ import annotations

import ftplib
import shutil
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.peers import free_port
from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    export_count,
    leftovers,
    zip_names,
)
from tests.peers.ftps import FtpServer, start_ftp
from tests.peers.orthanc import OrthancServer
from voxl_assets import settings
from voxl_assets.cli import main as voxl_main
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import VoxlDatabase
from voxl_assets.demo.scenario import build_scenario
from voxl_assets.project_config import Destinations, FtpsDestination, ProjectDefinition
from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.destinations import DestinationClients, project_destination_builder
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_file_uploader, make_image_uploader
from voxl_assets.upload.ftps import FtpsUploader


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return anonymised_study(tmp_path / "anon")


def _destination(server: FtpServer, **extra: object) -> FtpsDestination:
    return FtpsDestination(
        kind="ftps",
        host=server.host,
        port=server.port,
        username_env="FTPS_USER",
        password_env="FTPS_PASSWORD",
        ca_bundle=str(server.certificate),
        **extra,  # type: ignore[arg-type]
    )


def _env(server: FtpServer, password: str | None = None) -> dict[str, str]:
    return {"FTPS_USER": server.username, "FTPS_PASSWORD": password or server.password}


def test_study_zip_lands_at_the_layout_once(
    ftps_server: FtpServer, tmp_path: Path, study: list[Path]
) -> None:
    uploader = make_image_uploader(
        _destination(ftps_server, remote_root="/exports"), _env(ftps_server)
    )
    assert (
        uploader is not None
        and uploader.describe() == f"ftps://127.0.0.1:{ftps_server.port}/exports"
    )
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, study, TARGET)
    final = ftps_server.root / "exports" / TARGET.relative_zip_path
    assert report is not None and report.instances == 4 and report.bytes == final.stat().st_size
    assert final.parent.name == "dicom" and final.name == "2.25.31415926535897932384.zip"
    assert zip_names(final) == {p.name for p in study}
    assert leftovers(ftps_server.root) == []
    # Re-run: recorded, so nothing is sent (the file is not even touched).
    mtime = final.stat().st_mtime_ns
    assert upload_study_once(database, 1, uploader, study, TARGET) is None
    assert final.stat().st_mtime_ns == mtime and export_count(database) == 1
    # Forced: sent again, replacing the file atomically; still one record.
    assert upload_study_once(database, 1, uploader, study, TARGET, force=True) is not None
    assert export_count(database) == 1 and zip_names(final) == {p.name for p in study}


def test_tree_upload_for_ehr_bundles(ftps_server: FtpServer, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    (bundle / "omop" / "person.parquet").write_bytes(b"PAR1" * 1000)
    (bundle / "provenance.json").write_text("{}")
    uploader = make_file_uploader(_destination(ftps_server), _env(ftps_server))
    assert uploader is not None
    report = uploader.upload_tree(bundle, "demo-project/2026-11-01T12-00-00/ehr")
    remote = ftps_server.root / "demo-project" / "2026-11-01T12-00-00" / "ehr"
    assert report.instances == 2 and report.bytes == 4002
    assert (remote / "omop" / "person.parquet").read_bytes() == b"PAR1" * 1000
    assert (remote / "provenance.json").read_text() == "{}"
    assert leftovers(ftps_server.root) == []


def test_wrong_password_fails_at_once_without_the_secret(
    ftps_server: FtpServer, study: list[Path]
) -> None:
    uploader = make_image_uploader(
        _destination(ftps_server), _env(ftps_server, password="not-the-password-42")
    )
    assert uploader is not None
    with pytest.raises(UploadError, match="refused the credentials") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)  # not retried
    assert "not-the-password-42" not in str(caught.value)


def test_untrusted_certificate_is_refused(ftps_server: FtpServer, study: list[Path]) -> None:
    destination = _destination(ftps_server).model_copy(update={"ca_bundle": None})
    uploader = make_image_uploader(destination, _env(ftps_server))
    assert uploader is not None
    with pytest.raises(UploadError, match="certificate not trusted"):
        uploader.upload_study(study, TARGET)


def test_plain_ftp_server_is_refused(plain_ftp_server: FtpServer, study: list[Path]) -> None:
    uploader = FtpsUploader(
        plain_ftp_server.host, plain_ftp_server.port, "voxl", "s3cret-ftps", verify_tls=False
    )
    with pytest.raises(UploadError, match=r"does not offer TLS \(plain FTP refused\)"):
        uploader.upload_study(study, TARGET)
    assert not any(plain_ftp_server.root.rglob("*"))  # not a byte was sent in clear


def test_server_down_is_transient_after_fast_retries(study: list[Path]) -> None:
    uploader = FtpsUploader("127.0.0.1", free_port(), "u", "p", retry_delay=0.01, attempts=3)
    with pytest.raises(TransientUploadError, match="unreachable"):
        uploader.upload_study(study, TARGET)


def test_upload_cut_midway_is_retried_and_never_looks_complete(
    tmp_path: Path, study: list[Path]
) -> None:
    """The server resets the first transfer after 64 KiB (control and data): the retry succeeds,
    and when the cut happened only the partial name existed."""
    server = start_ftp(tmp_path / "ftps-dropping", tls=True, drop_uploads=1, drop_after=64 * 1024)
    try:
        big_study = anonymised_study(tmp_path / "big", instances=6, size=256)  # ~800 KB zip
        uploader = make_image_uploader(_destination(server), _env(server))
        assert uploader is not None
        uploader.retry_delay = 0.05  # type: ignore[attr-defined]
        database = database_with_study(tmp_path)
        report = upload_study_once(database, 1, uploader, big_study, TARGET)
        assert report is not None
        assert server.drops == [[".2.25.31415926535897932384.zip.part"]]
        final = server.root / TARGET.relative_zip_path
        assert zip_names(final) == {p.name for p in big_study}
        assert leftovers(server.root) == [] and export_count(database) == 1
    finally:
        server.stop()


def test_failed_upload_records_nothing_and_the_rerun_sends_it(
    tmp_path: Path, study: list[Path]
) -> None:
    server = start_ftp(tmp_path / "ftps-dropping", tls=True, drop_uploads=1, drop_after=1)
    try:
        uploader = FtpsUploader(
            server.host,
            server.port,
            server.username,
            server.password,
            ca_bundle=str(server.certificate),
            attempts=1,
        )
        database = database_with_study(tmp_path)
        with pytest.raises(TransientUploadError, match="interrupted"):
            upload_study_once(database, 1, uploader, study, TARGET)
        assert export_count(database) == 0
        assert not (server.root / TARGET.relative_zip_path).exists()
        assert upload_study_once(database, 1, uploader, study, TARGET) is not None
        assert export_count(database) == 1
        assert zip_names(server.root / TARGET.relative_zip_path) == {p.name for p in study}
    finally:
        server.stop()


def test_stopping_one_test_server_leaves_the_others_serving(tmp_path: Path) -> None:
    """The harness itself: pyftpdlib shares its threaded server's stop flag between all servers
    of a process, so stopping one used to make every other one reset its next connection (the
    test just above failed with "dropped the connection" depending on timing)."""
    stopped = start_ftp(tmp_path / "stopped", tls=True)
    kept = start_ftp(tmp_path / "kept", tls=True)
    try:
        stopped.stop()
        assert not stopped.serving.is_alive()
        ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(kept.certificate)))
        ftp.connect(kept.host, kept.port, timeout=10)
        ftp.auth()
        ftp.login(kept.username, kept.password)
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.quit()
    finally:
        kept.stop()


def test_missing_secret_names_the_variable(ftps_server: FtpServer) -> None:
    with pytest.raises(UploadError, match="FTPS_PASSWORD"):
        make_image_uploader(_destination(ftps_server), {"FTPS_USER": "voxl"})


def test_sessions_are_kept_across_studies_and_files_and_renewed_when_dropped(
    tmp_path: Path, study: list[Path]
) -> None:
    """Counted at the server: three studies and a bundle's two files over one login; a kept
    session the server dropped is replaced at once (no retry delay), an expired one is ended;
    close() logs the rest out."""
    server = start_ftp(tmp_path / "ftps-sessions", tls=True)
    try:
        uploader = make_image_uploader(_destination(server), _env(server))
        assert isinstance(uploader, FtpsUploader)
        uploader.retry_delay = 60.0  # a retry would hang the test: there must be none
        targets = [replace(TARGET, pseudo_study_uid=f"2.25.{n}") for n in range(5)]
        for target in targets[:3]:
            uploader.upload_study(study, target)
        bundle = tmp_path / "bundle"
        (bundle / "omop").mkdir(parents=True)
        (bundle / "omop" / "person.parquet").write_bytes(b"PAR1" * 100)
        (bundle / "provenance.json").write_text("{}")
        uploader.upload_tree(bundle, "demo-project/2026-11-01T12-00-00/ehr")
        assert server.logins == ["voxl"] and server.logouts == []

        assert server.drop_sessions() == 1
        uploader.upload_study(study, targets[3])  # the kept session is dead: a new one
        assert len(server.logins) == 2
        uploader.idle_seconds = 0.0  # the kept session has expired: logged out, a new one
        uploader.upload_study(study, targets[4])
        assert len(server.logins) == 3 and len(server.logouts) == 1
        uploader.close()
        assert uploader._idle == [] and len(server.logouts) == 2
    finally:
        server.stop()
    for target in targets:
        assert zip_names(server.root / target.relative_zip_path) == {p.name for p in study}
    assert (server.root / "demo-project/2026-11-01T12-00-00/ehr/provenance.json").exists()
    assert leftovers(server.root) == [] and len(server.received) == 7


def test_a_runs_workers_share_its_clients_one_session_each(
    tmp_path: Path, study: list[Path]
) -> None:
    """A run's destination clients (as ``resources/destinations.py`` holds them): eight studies
    from two worker threads log in at most twice; ending the run logs every session out."""
    server = start_ftp(tmp_path / "ftps-run", tls=True)
    project = ProjectDefinition.model_validate(
        {
            "project": {"slug": "demo-project", "name": "Demo", "modalities": ["CT"]},
            "tag_operations": {"base": ["base.yaml"]},
            "destinations": Destinations(images=_destination(server)).model_dump(),
        }
    )
    clients = DestinationClients(project_destination_builder(tmp_path, _env(server)))
    targets = [replace(TARGET, pseudo_study_uid=f"2.25.{n}") for n in range(8)]

    def deliver(target: object) -> None:
        uploader = clients.images(project)
        assert uploader is not None
        uploader.upload_study(study, target)  # type: ignore[arg-type]

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(deliver, targets))
        assert 1 <= len(server.logins) <= 2 and server.logouts == []
        clients.close()
        assert len(server.logouts) == len(server.logins)
    finally:
        server.stop()
    for target in targets:
        assert zip_names(server.root / target.relative_zip_path) == {p.name for p in study}


def test_a_pipeline_run_logs_in_once_per_worker_and_its_bundle_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orthanc: OrthancServer
) -> None:
    """`voxl backfill --in-process` with images and the EHR bundle going to FTPS: the study run
    (two workers, four delivered studies) logs in at most twice, the export run once for all
    the bundle's files; every session is logged out when its run ends."""
    from dagster import DagsterInstance

    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.orchestration import materialize_cohort

    server = start_ftp(tmp_path / "ftps-pipeline", tls=True)
    slug = "test-extract-uclh-omop-cdm"
    projects = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", projects / "tag-operations"
    )
    ftps = _destination(server).model_dump()
    definition = {
        "project": {"slug": slug, "name": "Test", "modalities": ["CT", "MR", "DX"]},
        "tag_operations": {"base": ["base.yaml", "ct.yaml", "mr.yaml", "dx-cr.yaml"]},
        "destinations": {"images": ftps, "ehr": ftps},
    }
    (projects / f"{slug}.yaml").write_text(yaml.safe_dump(definition))
    home = tmp_path / "voxl"
    for name, value in {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_PROJECTS_DIR": str(projects),
        "VOXL_HASHING_KEY": "ftps-sessions-test-key-0123456789",
        "VOXL_VNA_PORT": str(orthanc.dicom_port),
        "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        "VOXL_VNA_RETRY_DELAY_SECONDS": "0.05",
        "VOXL_STUDY_WORKERS": "2",
        **_env(server),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    try:
        scenario = build_scenario(
            tmp_path / "input", studies=5, missing=0, instances=2, rows_columns=32
        )  # one of the five is ultrasound: filtered
        orthanc.upload_folder(scenario.archive_dir)
        ensure_dagster_home()
        database = VoxlDatabase()
        summary = read_any_summary(scenario.extract_dir)
        materialize_cohort(
            DagsterInstance.get(), register_extract(database, summary, summary.project_slug), "t"
        )
        assert voxl_main(["backfill", slug, "--in-process"]) == 0
        zips = [p for p in server.received if p.endswith(".zip.part")]
        bundle = [p for p in server.received if "/dicom/" not in p]
        assert len(zips) == 4 and len(bundle) >= 2  # the studies, and the bundle's files
        assert 2 <= len(server.logins) <= 3  # <= 2 for the studies' run, 1 for the export's
        assert len(server.logouts) == len(server.logins)  # each run ended its sessions
    finally:
        server.stop()
