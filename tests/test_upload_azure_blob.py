"""Azure Blob uploads against Azurite (the Azure Storage emulator, npm ``azurite``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.peers import free_port
from tests.peers._dropping_proxy import DroppingProxy
from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    export_count,
)
from tests.peers.azurite import AzuriteServer
from voxl_assets.project_config import AzureBlobDestination
from voxl_assets.upload.azure_blob import AzureBlobUploader
from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_file_uploader, make_image_uploader

DESTINATION = AzureBlobDestination(
    kind="azure_blob",
    container="research",
    connection_string_env="VOXL_TEST_BLOB",
    prefix="voxl",
    max_concurrency=4,
)
NAME = f"voxl/{TARGET.relative_zip_path}"


@pytest.fixture
def container(azurite: AzuriteServer) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(azurite.connection_string())
    return service.create_container("research")


def _zip_entries(container: ContainerClient, name: str) -> set[str]:
    data = container.download_blob(name).readall()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return set(archive.namelist())


def test_study_zip_in_parallel_blocks_exactly_once(
    azurite: AzuriteServer, container: ContainerClient, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon", instances=8, size=256)  # ~1 MB: several blocks
    uploader = make_image_uploader(DESTINATION, {"VOXL_TEST_BLOB": azurite.connection_string()})
    assert isinstance(uploader, AzureBlobUploader)
    uploader.block_size = 256 * 1024
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, study, TARGET)
    assert report is not None and report.instances == 8
    assert [b.name for b in container.list_blobs()] == [NAME]
    properties = container.get_blob_client(NAME).get_blob_properties()
    assert properties.size == report.bytes and properties.content_settings.content_type == (
        "application/zip"
    )
    blocks, _ = container.get_blob_client(NAME).get_block_list("committed")
    assert len(blocks) == -(-report.bytes // (256 * 1024))  # it really went in blocks
    assert _zip_entries(container, NAME) == {p.name for p in study}
    assert upload_study_once(database, 1, uploader, study, TARGET) is None
    assert export_count(database) == 1
    assert "AccountKey" not in uploader.describe()


def test_tree_upload_for_ehr_bundles(
    azurite: AzuriteServer, container: ContainerClient, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    (bundle / "omop" / "person.parquet").write_bytes(b"P" * 5000)
    (bundle / "provenance.json").write_text("{}")
    uploader = make_file_uploader(DESTINATION, {"VOXL_TEST_BLOB": azurite.connection_string()})
    assert uploader is not None
    report = uploader.upload_tree(bundle, "demo-project/2026-11-01T12-00-00/ehr")
    assert report.instances == 2 and report.bytes == 5002
    names = sorted(b.name for b in container.list_blobs())
    assert names == [
        "voxl/demo-project/2026-11-01T12-00-00/ehr/omop/person.parquet",
        "voxl/demo-project/2026-11-01T12-00-00/ehr/provenance.json",
    ]


def test_wrong_key_and_missing_container_fail_at_once(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon")
    wrong = azurite.connection_string(key="d3JvbmctYnV0LXdlbGwtZm9ybWVkLWtleQ==")
    uploader = make_image_uploader(DESTINATION, {"VOXL_TEST_BLOB": wrong})
    assert uploader is not None
    with pytest.raises(UploadError, match="refused the credentials") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    assert "d3JvbmctYnV0" not in str(caught.value)
    right = make_image_uploader(DESTINATION, {"VOXL_TEST_BLOB": azurite.connection_string()})
    assert right is not None
    with pytest.raises(UploadError, match="container research does not exist"):
        right.upload_study(study, TARGET)  # the fixture's container was not requested here


def test_server_down_is_transient_after_fast_retries(tmp_path: Path) -> None:
    study = anonymised_study(tmp_path / "anon")
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
    )
    uploader = AzureBlobUploader(connection, "research", retry_delay=0.01, attempts=3)
    with pytest.raises(TransientUploadError, match="unreachable"):
        uploader.upload_study(study, TARGET)


def test_connection_cut_midway_leaves_no_blob_and_the_retry_commits(
    azurite: AzuriteServer, container: ContainerClient, tmp_path: Path
) -> None:
    """The first connection is reset after 300 KB (mid-blocks): no blob exists under the final
    name when the retry starts; the retry commits a complete zip."""
    study = anonymised_study(tmp_path / "anon", instances=8, size=256)
    visible_at_retry: list[list[str]] = []

    def on_connect(number: int) -> None:
        if number == 2:  # the retry's connection: which blobs exist now?
            visible_at_retry.append([b.name for b in container.list_blobs()])

    proxy = DroppingProxy(azurite.port, after_bytes=300_000, on_connect=on_connect)
    try:
        connection = azurite.connection_string().replace(str(azurite.port), str(proxy.port))
        uploader = AzureBlobUploader(
            connection, "research", prefix="voxl", max_concurrency=1, retry_delay=0.05
        )
        uploader.block_size = 128 * 1024
        database = database_with_study(tmp_path)
        assert upload_study_once(database, 1, uploader, study, TARGET) is not None
    finally:
        proxy.close()
    assert proxy.dropped == 1
    assert visible_at_retry == [[]]  # the staged blocks of the cut attempt are invisible
    assert _zip_entries(container, NAME) == {p.name for p in study}
    assert export_count(database) == 1
