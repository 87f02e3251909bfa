"""STOW-RS uploads against Orthanc with its DICOMweb plugin (checked by QIDO-RS on the server).

The Azure DICOM service is tested against the same Orthanc: its token comes from a fake
credential object, because the Azure AD token endpoint cannot run here. The bearer tokens are read
off the wire by a proxy between VOXL and Orthanc.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.core.exceptions import ClientAuthenticationError

from tests.peers import free_port
from tests.peers._dropping_proxy import DroppingProxy
from tests.peers._upload_study import TARGET, anonymised_study, database_with_study, export_count
from tests.peers.ftps import make_certificate
from tests.peers.orthanc import OrthancServer, start_orthanc
from voxl_assets.project_config import AzureDicomDestination, DicomWebDestination
from voxl_assets.upload.azure_dicom import AzureDicomUploader
from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.dicomweb import DicomWebUploader, stow_batches, study_uid_of
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_file_uploader, make_image_uploader
from voxl_assets.upload.stow import StowBody, failure_reasons

USERS = {"researcher": "correct-horse-battery"}
SCOPE = "https://dicom.healthcareapis.azure.com/.default"


@pytest.fixture(scope="module")
def orthanc() -> Iterator[OrthancServer]:
    """Basic authentication required (AuthenticationEnabled + RegisteredUsers)."""
    yield from start_orthanc(users=USERS)


@pytest.fixture(scope="module")
def open_orthanc() -> Iterator[OrthancServer]:
    """No authentication: Orthanc ignores a bearer token, which the proxy checks instead."""
    yield from start_orthanc()


@pytest.fixture
def clean_orthanc(orthanc: OrthancServer) -> OrthancServer:
    orthanc.clear()
    return orthanc


def _destination(url: str, batch_size: int = 3) -> DicomWebDestination:
    return DicomWebDestination(
        kind="dicomweb",
        url=url,
        username_env="DW_USER",
        password_env="DW_PASSWORD",
        batch_size=batch_size,
    )


ENV = {"DW_USER": "researcher", "DW_PASSWORD": USERS["researcher"]}


def test_stow_in_batches_arrives_and_reruns_send_nothing(
    clean_orthanc: OrthancServer, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon", instances=7)
    uploader = make_image_uploader(_destination(clean_orthanc.dicomweb_url), ENV)
    assert isinstance(uploader, DicomWebUploader) and uploader.describe() == (
        clean_orthanc.dicomweb_url
    )
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, study, TARGET)
    assert report is not None and report.instances == 7
    assert report.bytes == sum(p.stat().st_size for p in study)
    # Checked on the server, by QIDO-RS: all 7 instances of the one study.
    assert uploader.stored_instance_count(study_uid_of(study[0])) == 7
    assert uploader.stored_study_uids() == {study_uid_of(study[0])}
    assert upload_study_once(database, 1, uploader, study, TARGET) is None
    assert clean_orthanc.instance_count() == 7 and export_count(database) == 1


def test_batches_are_capped_by_bytes_as_well_as_instances(tmp_path: Path) -> None:
    sizes = [10, 10, 70, 10, 200, 10, 10, 10, 10]  # KiB; 200 is above the cap on its own
    files = []
    for number, size in enumerate(sizes):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(b"x" * size * 1024)
        files.append(path)
    batches = list(stow_batches(files, max_instances=3, max_bytes=100 * 1024))
    assert [[int(p.stem) for p in batch] for batch in batches] == [
        [0, 1, 2],  # 90 KiB, three instances
        [3],  # 10 + 200 would be over the cap
        [4],  # bigger than the cap: alone
        [5, 6, 7],  # the instance cap
        [8],
    ]
    assert [p for batch in batches for p in batch] == files


def test_byte_capped_batches_all_arrive(clean_orthanc: OrthancServer, tmp_path: Path) -> None:
    study = anonymised_study(tmp_path / "anon", instances=5, size=512)  # just over 0.5 MiB each
    destination = _destination(clean_orthanc.dicomweb_url, batch_size=50).model_copy(
        update={"batch_max_mib": 2}
    )
    uploader = make_image_uploader(destination, ENV)
    assert isinstance(uploader, DicomWebUploader) and uploader.batch_max_bytes == 2 << 20
    sent: list[int] = []
    store = uploader._store

    def counting_store(batch: Sequence[Path]) -> None:
        sent.append(len(batch))
        store(batch)

    uploader._store = counting_store  # type: ignore[method-assign]
    assert uploader.upload_study(study, TARGET).instances == 5
    assert sorted(sent) == [2, 3]  # three instances fit in 2 MiB, not one request of five
    assert uploader.stored_instance_count(study_uid_of(study[0])) == 5


def test_stow_body_streams_the_files_between_boundaries(tmp_path: Path) -> None:
    study = anonymised_study(tmp_path / "anon", instances=3)
    body = StowBody(study)
    pieces = []
    while block := body.read(7_777):  # block sizes that never line up with a part
        pieces.append(block)
    data = b"".join(pieces)
    assert len(data) == len(body) and body.read(10) == b""
    assert body.content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    delimiter = f"--{body.boundary}".encode()
    parts = data.split(delimiter)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    head = b"\r\nContent-Type: application/dicom\r\n\r\n"
    assert [part.removeprefix(head).removesuffix(b"\r\n") for part in parts[1:-1]] == [
        path.read_bytes() for path in study
    ]


def test_failure_reasons_are_read_from_the_answer_without_uids() -> None:
    answer = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": ["2.25.1"]},
                    "00081197": {"vr": "US", "Value": [49442]},
                },
                {"00081197": {"vr": "US", "Value": [272]}},
            ],
        },
        "00081199": {"vr": "SQ", "Value": [{}]},
    }
    assert failure_reasons(answer) == ["49442", "272"]
    assert failure_reasons({"00081198": {"vr": "SQ"}}) == [] and failure_reasons([]) == []


def test_an_instance_the_server_cannot_read_fails_the_batch_plainly(
    clean_orthanc: OrthancServer, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon", instances=2)
    broken = tmp_path / "anon" / "broken.dcm"
    broken.write_bytes(b"not a DICOM file " * 64)
    uploader = make_image_uploader(_destination(clean_orthanc.dicomweb_url), ENV)
    assert uploader is not None
    with pytest.raises(UploadError, match=r"rejected the request \(400\)") as caught:
        uploader.upload_study([study[0], broken, study[1]], TARGET)
    assert not isinstance(caught.value, TransientUploadError)  # retrying would not help


def test_wrong_password_fails_at_once_without_the_secret(
    clean_orthanc: OrthancServer, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon")
    env = {"DW_USER": "researcher", "DW_PASSWORD": "tr0ub4dor-wrong"}
    uploader = make_image_uploader(_destination(clean_orthanc.dicomweb_url), env)
    assert uploader is not None
    with pytest.raises(UploadError, match=r"refused the credentials \(401\)") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    assert "tr0ub4dor" not in str(caught.value) and clean_orthanc.instance_count() == 0


def test_missing_password_variable_is_named(clean_orthanc: OrthancServer) -> None:
    with pytest.raises(UploadError, match="DW_PASSWORD"):
        make_image_uploader(_destination(clean_orthanc.dicomweb_url), {"DW_USER": "researcher"})
    with pytest.raises(UploadError, match="cannot receive files"):
        make_file_uploader(_destination(clean_orthanc.dicomweb_url), ENV)


def test_server_down_is_transient_after_fast_retries(tmp_path: Path) -> None:
    study = anonymised_study(tmp_path / "anon")
    port = free_port()
    uploader = DicomWebUploader(
        f"http://researcher:s3cr3t-in-url@127.0.0.1:{port}/dicom-web", retry_delay=0.01, attempts=3
    )
    with pytest.raises(TransientUploadError, match="unreachable") as caught:
        uploader.upload_study(study, TARGET)
    # Credentials someone put into the URL never show in messages or the exactly-once key.
    assert "s3cr3t" not in str(caught.value)
    assert uploader.describe() == f"http://127.0.0.1:{port}/dicom-web"


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """An https URL to a server without a trusted certificate fails as a configuration error."""
    study = anonymised_study(tmp_path / "anon", instances=1)
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(make_certificate(tmp_path))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
        with pytest.raises(UploadError, match="TLS verification failed") as caught:
            DicomWebUploader(url, attempts=1).upload_study(study, TARGET)
        assert not isinstance(caught.value, TransientUploadError)
    finally:
        server.shutdown()


def test_connection_cut_midway_is_retried_without_duplicates(
    clean_orthanc: OrthancServer, tmp_path: Path
) -> None:
    """The first connection is reset in the middle of a batch: that batch is sent again; the
    server ends up with each instance once."""
    study = anonymised_study(tmp_path / "anon", instances=6, size=256)
    proxy = DroppingProxy(clean_orthanc.http_port, after_bytes=300_000)
    try:
        uploader = make_image_uploader(
            _destination(f"http://127.0.0.1:{proxy.port}/dicom-web", batch_size=6), ENV
        )
        assert uploader is not None
        uploader.retry_delay = 0.05  # type: ignore[attr-defined]
        report = uploader.upload_study(study, TARGET)
    finally:
        proxy.close()
    assert proxy.dropped == 1 and report.instances == 6
    assert clean_orthanc.instance_count() == 6


class FakeCredential:
    """Stands in for azure-identity's ClientSecretCredential: the Azure AD token endpoint cannot
    run here. Issues numbered tokens valid for an hour of the fake clock."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.issued: list[str] = []
        self.fail = False

    def get_token(self, *scopes: str) -> SimpleNamespace:
        assert scopes == (SCOPE,)
        if self.fail:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")
        self.issued.append(f"fake-token-{len(self.issued)}")
        return SimpleNamespace(token=self.issued[-1], expires_on=self.clock[0] + 3600)


def test_azure_dicom_sends_a_cached_token_refreshed_before_expiry(
    open_orthanc: OrthancServer, tmp_path: Path
) -> None:
    """One STOW request per instance; the fake clock moves 1000 s per request, so the token is
    reused while more than five minutes remain (3 times), then refreshed."""
    study = anonymised_study(tmp_path / "anon", instances=6)
    open_orthanc.clear()
    clock = [1_000_000.0]
    credential = FakeCredential(clock)

    def tick() -> float:
        clock[0] += 1000
        return clock[0]

    proxy = DroppingProxy(open_orthanc.http_port, after_bytes=1, drops=0, capture=True)
    try:
        uploader = AzureDicomUploader(
            f"http://127.0.0.1:{proxy.port}/dicom-web", credential, SCOPE, batch_size=1, clock=tick
        )
        uploader.in_flight = 1  # one request at a time, so the clock order is the send order
        assert uploader.upload_study(study, TARGET).instances == 6
    finally:
        proxy.close()
    sent = re.findall(rb"Authorization: Bearer (\S+)", bytes(proxy.captured))
    assert [token.decode() for token in sent] == ["fake-token-0"] * 4 + ["fake-token-1"] * 2
    assert credential.issued == ["fake-token-0", "fake-token-1"]
    assert open_orthanc.instance_count() == 6


def test_azure_dicom_through_the_factory_and_refused_credentials(
    open_orthanc: OrthancServer, tmp_path: Path
) -> None:
    study = anonymised_study(tmp_path / "anon", instances=2)
    open_orthanc.clear()
    destination = AzureDicomDestination(
        kind="azure_dicom",
        url=open_orthanc.dicomweb_url,
        tenant_id_env="AZ_TENANT",
        client_id_env="AZ_CLIENT",
        client_secret_env="AZ_SECRET",
    )
    with pytest.raises(UploadError, match="AZ_TENANT"):
        make_image_uploader(destination, {})  # the real credential needs its variables
    credential = FakeCredential([0.0])
    uploader = make_image_uploader(destination, {}, credential=credential)
    assert uploader is not None and uploader.kind == "azure_dicom"
    report = uploader.upload_study(study, TARGET)
    assert report.kind == "azure_dicom" and open_orthanc.instance_count() == 2
    refused = FakeCredential([0.0])
    refused.fail = True
    failing = make_image_uploader(destination, {}, credential=refused)
    assert failing is not None
    with pytest.raises(UploadError, match="Azure AD refused the client credentials") as caught:
        failing.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    assert "AADSTS" not in str(caught.value)
