"""Local-folder destination, the factory, zipping and the exactly-once record (no peer needed)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    export_count,
    leftovers,
    zip_names,
)
from voxl_assets.db.models import StudyExport
from voxl_assets.project_config import (
    AzureBlobDestination,
    FtpsDestination,
    LocalDirectoryDestination,
    NoDestination,
    SftpDestination,
)
from voxl_assets.upload.base import UploadError, UploadReport, UploadTarget
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_file_uploader, make_image_uploader
from voxl_assets.upload.local import LocalUploader
from voxl_assets.upload.zipping import SourceFileError, stream_study_zip, write_zip_file


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return anonymised_study(tmp_path / "anon")


def test_relative_path_is_under_voxl_home_and_zip_is_atomic(
    tmp_path: Path, study: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))
    uploader = make_image_uploader(LocalDirectoryDestination(kind="local", path="delivered"))
    assert isinstance(uploader, LocalUploader)
    assert uploader.root == tmp_path / "home" / "delivered"
    report = uploader.upload_study(study, TARGET)
    final = tmp_path / "home" / "delivered" / TARGET.relative_zip_path
    assert zip_names(final) == {p.name for p in study}
    assert report.bytes == final.stat().st_size and report.kind == "local"
    assert leftovers(tmp_path / "home") == []


def test_failed_write_leaves_no_partial_and_a_clear_error(
    tmp_path: Path, study: list[Path]
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "demo-project").write_text("a file where a folder must go")
    with pytest.raises(UploadError, match="cannot write to"):
        LocalUploader(root).upload_study(study, TARGET)
    vanished = [*study[:2], tmp_path / "anon" / "gone.dcm"]  # a source file disappeared
    other = LocalUploader(tmp_path / "out2")
    with pytest.raises(SourceFileError, match=r"cannot read gone\.dcm \(FileNotFoundError\)"):
        other.upload_study(vanished, TARGET)
    assert leftovers(tmp_path / "out2") == []
    assert not (tmp_path / "out2" / TARGET.relative_zip_path).exists()


def test_tree_upload_copies_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXL_LOCAL_DESTINATION_ROOT", str(tmp_path))
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    (bundle / "omop" / "person.parquet").write_bytes(b"PAR1")
    (bundle / "provenance.json").write_text("{}")
    uploader = make_file_uploader(LocalDirectoryDestination(kind="local", path="o"))
    assert uploader is not None
    report = uploader.upload_tree(bundle, "demo-project/2026-11-01T12-00-00/ehr")
    base = tmp_path / "o" / "demo-project" / "2026-11-01T12-00-00" / "ehr"
    assert report.instances == 2 and report.bytes == 6
    assert (base / "omop" / "person.parquet").read_bytes() == b"PAR1"
    assert leftovers(tmp_path / "o") == []


def test_exactly_once_records_after_success_and_force_refreshes(
    tmp_path: Path, study: list[Path]
) -> None:
    database = database_with_study(tmp_path)
    uploader = LocalUploader(tmp_path / "out")
    first = upload_study_once(database, 1, uploader, study, TARGET)
    assert first is not None and export_count(database) == 1
    assert upload_study_once(database, 1, uploader, study, TARGET) is None
    # Another destination is another record.
    assert upload_study_once(database, 1, LocalUploader(tmp_path / "b"), study, TARGET)
    assert export_count(database) == 2
    forced = upload_study_once(database, 1, uploader, study[:2], TARGET, force=True)
    assert forced is not None and export_count(database) == 2
    with database.session() as session:
        row = session.query(StudyExport).filter_by(destination=uploader.describe()).one()
        assert row.instances == 2  # the forced upload's numbers


def test_failed_upload_is_not_recorded(tmp_path: Path, study: list[Path]) -> None:
    class Failing:
        kind = "local"

        def describe(self) -> str:
            return "local:///nowhere"

        def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
            raise UploadError("disk full")

    database = database_with_study(tmp_path)
    with pytest.raises(UploadError, match="disk full"):
        upload_study_once(database, 1, Failing(), study, TARGET)
    assert export_count(database) == 0


def test_factory_none_and_missing_variables() -> None:
    assert make_image_uploader(NoDestination()) is None
    assert make_file_uploader(NoDestination()) is None
    cases: list[tuple[object, str]] = [
        (FtpsDestination(kind="ftps", host="h", username_env="U1", password_env="P1"), "U1"),
        (
            SftpDestination(
                kind="sftp",
                host="h",
                username_env="U2",
                private_key_path_env="K2",
                known_host_key="h ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            ),
            "U2",
        ),
        (
            AzureBlobDestination(kind="azure_blob", container="c", connection_string_env="C3"),
            "C3",
        ),
    ]
    for destination, variable in cases:
        with pytest.raises(UploadError, match=variable) as caught:
            make_image_uploader(destination, {"P1": "hunter2"})  # type: ignore[arg-type]
        assert "hunter2" not in str(caught.value)


def test_streamed_zip_equals_file_zip_and_reads_everywhere(
    tmp_path: Path, study: list[Path]
) -> None:
    """Streamed (data descriptors, for sockets) and file zips hold the same, valid entries."""
    pieces: list[bytes] = []
    size = stream_study_zip(study, pieces.append, chunk=4096)
    streamed = b"".join(pieces)
    assert size == len(streamed) and max(len(p) for p in pieces) <= 4096 + 65536
    on_disk = tmp_path / "study.zip"
    assert write_zip_file(study, on_disk) == on_disk.stat().st_size
    for data in (streamed, on_disk.read_bytes()):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            assert archive.namelist() == [p.name for p in study]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
            assert archive.read(study[0].name) == study[0].read_bytes()
