"""Uploads to real peers: Orthanc (DICOMweb STOW-RS), pyftpdlib FTPS, OpenSSH SFTP, Azurite;
success, wrong credentials, server down, interrupted and retried, no duplicates, refusals."""

import zipfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.storage.blob import BlobServiceClient
from sqlalchemy import func, select

from tests.peers import free_port
from tests.peers.azurite import AzuriteServer
from tests.peers.ftps import FtpServer
from tests.peers.orthanc import OrthancServer
from tests.peers.sftp import SshServer
from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.project_config import (
    AzureBlobDestination,
    AzureDicomDestination,
    DicomWebDestination,
    FtpsDestination,
    LocalDirectoryDestination,
    SftpDestination,
)
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.upload.azure_dicom import CachedToken
from voxl_assets.upload.base import TransientUploadError, UploadError, UploadTarget
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_uploader
from voxl_assets.upload.ftps import FtpsUploader

TARGET = UploadTarget("demo-project", datetime(2026, 11, 1, 12, 0), "2.25.1234567")


@pytest.fixture
def study_files(tmp_path: Path) -> list[Path]:
    spec = StudySpec(patient_id="ANON", accession_number="ANON", series=[SeriesSpec(instances=4)])
    return write_study(spec, tmp_path / "anon")


def _zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


def _exports(database: VoxlDatabase) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(StudyExport)) or 0)


def _database(tmp_path: Path) -> VoxlDatabase:
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    from voxl_assets.db import Study

    with database.session() as session:
        session.add(Study(id=1, project="demo-project", mrn="m", accession_number="a"))
    return database


def test_local_destination_writes_one_zip_per_study_exactly_once(
    tmp_path: Path, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXL_LOCAL_DESTINATION_ROOT", str(tmp_path))
    uploader = make_uploader(LocalDirectoryDestination(kind="local", path="out"))
    database = _database(tmp_path)
    report = upload_study_once(database, 1, uploader, study_files, TARGET)
    assert report is not None and report.instances == 4
    final = tmp_path / "out" / "demo-project" / "2026-11-01T12-00-00" / "dicom" / "2.25.1234567.zip"
    assert _zip_names(final) == {p.name for p in study_files}
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is None  # no duplicate
    assert _exports(database) == 1
    assert upload_study_once(database, 1, uploader, study_files, TARGET, force=True) is not None
    assert _exports(database) == 1


def test_dicomweb_stow_to_orthanc(
    orthanc: OrthancServer, tmp_path: Path, study_files: list[Path]
) -> None:
    uploader = make_uploader(
        DicomWebDestination(kind="dicomweb", url=orthanc.dicomweb_url, batch_size=3)
    )
    database = _database(tmp_path)
    report = upload_study_once(database, 1, uploader, study_files, TARGET)
    assert report is not None and report.instances == 4
    assert orthanc.instance_count() == 4  # checked by the server, not by us
    assert len(uploader.stored_study_uids()) == 1
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is None
    assert orthanc.instance_count() == 4 and _exports(database) == 1


def test_dicomweb_wrong_credentials_and_server_down(
    tmp_path: Path, study_files: list[Path]
) -> None:
    from tests.peers.orthanc import start_orthanc

    server_iter = start_orthanc(users={"researcher": "right-password"})
    server = next(server_iter)
    try:
        env = {"DW_USER": "researcher", "DW_PASS": "wrong"}
        destination = DicomWebDestination(
            kind="dicomweb", url=server.dicomweb_url, username_env="DW_USER", password_env="DW_PASS"
        )
        with pytest.raises(UploadError, match="refused the credentials") as caught:
            make_uploader(destination, env).upload_study(study_files, TARGET)
        assert "wrong" not in str(caught.value)
        env["DW_PASS"] = "right-password"
        assert make_uploader(destination, env).upload_study(study_files, TARGET).instances == 4
    finally:
        next(server_iter, None)
    down = make_uploader(
        DicomWebDestination(kind="dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    )
    down.retry_delay = 0.01
    with pytest.raises(TransientUploadError, match="unreachable"):
        down.upload_study(study_files, TARGET)


def test_azure_dicom_token_is_cached_and_refreshed(
    orthanc: OrthancServer, study_files: list[Path]
) -> None:
    """The Azure AD token endpoint cannot run here: a fake credential stands in for it (the only
    mock in these tests); STOW-RS goes to a real DICOMweb server (Orthanc)."""
    issued: list[str] = []

    class FakeCredential:
        def get_token(self, *scopes: str) -> SimpleNamespace:
            assert scopes == ("https://dicom.healthcareapis.azure.com/.default",)
            issued.append(f"token-{len(issued)}")
            return SimpleNamespace(token=issued[-1], expires_on=now[0] + 3600)

    now = [1_000_000.0]
    token = CachedToken(
        FakeCredential(), "https://dicom.healthcareapis.azure.com/.default", clock=lambda: now[0]
    )
    assert token() == token() == "token-0"
    now[0] += 3600 - 299  # within five minutes of expiry: refreshed
    assert token() == "token-1" and len(issued) == 2
    destination = AzureDicomDestination(
        kind="azure_dicom",
        url=orthanc.dicomweb_url,
        tenant_id_env="T",
        client_id_env="C",
        client_secret_env="S",
    )
    uploader = make_uploader(destination, {}, credential=FakeCredential())
    assert uploader.kind == "azure_dicom"
    assert uploader.upload_study(study_files, TARGET).instances == 4
    assert orthanc.instance_count() == 4


def test_ftps_upload_with_atomic_rename(
    ftps_server: FtpServer, tmp_path: Path, study_files: list[Path]
) -> None:
    env = {"FTP_USER": ftps_server.username, "FTP_PASS": ftps_server.password}
    destination = FtpsDestination(
        kind="ftps",
        host=ftps_server.host,
        port=ftps_server.port,
        username_env="FTP_USER",
        password_env="FTP_PASS",
        ca_bundle=str(ftps_server.certificate),
    )
    database = _database(tmp_path)
    uploader = make_uploader(destination, env)
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is not None
    final = ftps_server.root / TARGET.relative_zip_path
    assert _zip_names(final) == {p.name for p in study_files}
    assert not [p for p in final.parent.iterdir() if p.name.endswith(".part")]
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is None
    final.unlink()  # the server is shared by this module's tests


def test_ftps_refuses_wrong_password_and_plain_ftp(
    ftps_server: FtpServer, plain_ftp_server: FtpServer, study_files: list[Path]
) -> None:
    wrong = FtpsUploader(
        ftps_server.host, ftps_server.port, "voxl", "nope", ca_bundle=str(ftps_server.certificate)
    )
    with pytest.raises(UploadError, match="refused the credentials"):
        wrong.upload_study(study_files, TARGET)
    plain = FtpsUploader(
        plain_ftp_server.host, plain_ftp_server.port, "voxl", "s3cret-ftps", verify_tls=False
    )
    with pytest.raises(UploadError, match="plain FTP refused"):
        plain.upload_study(study_files, TARGET)
    assert not any(plain_ftp_server.root.rglob("*.zip"))


def test_ftps_server_down(study_files: list[Path]) -> None:
    uploader = FtpsUploader("127.0.0.1", free_port(), "u", "p", retry_delay=0.01)
    with pytest.raises(TransientUploadError, match="unreachable"):
        uploader.upload_study(study_files, TARGET)


def _sftp_destination(server: SshServer, known_host: str | None = None) -> SftpDestination:
    return SftpDestination(
        kind="sftp",
        host=server.host,
        port=server.port,
        username_env="SFTP_USER",
        private_key_path_env="SFTP_KEY",
        known_host_key=known_host or server.known_host_line,
        remote_root=str(server.root),
    )


def test_sftp_upload_and_host_key_pinning(
    sftp_server: SshServer, tmp_path: Path, study_files: list[Path]
) -> None:
    env = {"SFTP_USER": sftp_server.username, "SFTP_KEY": str(sftp_server.private_key)}
    database = _database(tmp_path)
    uploader = make_uploader(_sftp_destination(sftp_server), env)
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is not None
    final = sftp_server.root / TARGET.relative_zip_path
    assert _zip_names(final) == {p.name for p in study_files}
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is None
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    key_type, key = (tmp_path / "other.pub").read_text().split()[:2]
    impostor = make_uploader(_sftp_destination(sftp_server, f"[127.0.0.1] {key_type} {key}"), env)
    with pytest.raises(UploadError, match="host key mismatch"):
        impostor.upload_study(study_files, TARGET)


def test_sftp_wrong_key_is_refused(
    sftp_server: SshServer, tmp_path: Path, study_files: list[Path]
) -> None:
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    env = {"SFTP_USER": sftp_server.username, "SFTP_KEY": str(tmp_path / "stranger")}
    with pytest.raises(UploadError, match="refused the key"):
        make_uploader(_sftp_destination(sftp_server), env).upload_study(study_files, TARGET)


def test_azure_blob_upload_and_wrong_key(
    azurite: AzuriteServer, tmp_path: Path, study_files: list[Path]
) -> None:
    BlobServiceClient.from_connection_string(azurite.connection_string()).create_container(
        "research"
    )
    destination = AzureBlobDestination(
        kind="azure_blob", container="research", connection_string_env="BLOB", prefix="voxl"
    )
    database = _database(tmp_path)
    uploader = make_uploader(destination, {"BLOB": azurite.connection_string()})
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is not None
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string()
    ).get_container_client("research")
    names = [b.name for b in container.list_blobs()]
    assert names == [f"voxl/{TARGET.relative_zip_path}"]
    assert upload_study_once(database, 1, uploader, study_files, TARGET) is None
    bad_key = azurite.connection_string(key="QUJDREVGR0g=")
    with pytest.raises(UploadError, match="refused the credentials"):
        make_uploader(destination, {"BLOB": bad_key}).upload_study(study_files, TARGET)


def test_missing_secret_names_the_variable_not_a_value() -> None:
    destination = FtpsDestination(
        kind="ftps", host="h", username_env="MY_FTPS_USER", password_env="MY_FTPS_PASS"
    )
    with pytest.raises(UploadError, match="MY_FTPS_USER"):
        make_uploader(destination, {})
