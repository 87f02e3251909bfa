"""Privacy class 11, network: VOXL's C-MOVE Storage SCP listens on one configured address,
accepts associations only from the configured archives (AE title and address), and stores an
instance only while its study is being retrieved from the archive that sends it. Everything else
is refused, counted, and never reaches the raw cache. Real associations: pynetdicom as an
intruder, dcmtk's storescu with a wrong AE title, and Orthanc sending a study nobody asked for in
the middle of a real C-MOVE."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from tests.peers import free_port, peer_missing
from tests.peers.orthanc import VOXL_AE, OrthancServer
from voxl_assets.cli import main
from voxl_assets.db import StudyStatus
from voxl_assets.study_state import StudyRequest
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna.archives import ArchiveConfig, store_scp_warnings
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.client import (
    STATUS_NOT_AUTHORISED,
    DimseVna,
    InstanceWriter,
    MovePeer,
    VnaSettings,
    instance_file_name,
)
from voxl_assets.vna.raw import retrieve_raw_study

pytestmark = pytest.mark.integration


def _settings(orthanc: OrthancServer, **changes: Any) -> VnaSettings:
    base = VnaSettings(
        host="127.0.0.1",
        port=orthanc.dicom_port,
        ae_title=orthanc.ae_title,
        calling_ae_title=VOXL_AE,
        retrieve="c-move",
        move_destination_ae=VOXL_AE,
        store_scp_port=orthanc.move_scp_port,
        queries_per_second=100,
    )
    return replace(base, **changes)


def _request(spec: StudySpec) -> StudyRequest:
    return StudyRequest(
        1,
        "p",
        spec.patient_id,
        spec.accession_number,
        spec.study_uid,
        "",
        None,
        StudyStatus.QUEUED,
        None,
    )


@pytest.fixture
def studies(orthanc: OrthancServer, tmp_path: Path) -> dict[str, tuple[StudySpec, list[Path]]]:
    """Study 'wanted' (the one VOXL retrieves) and study 'other' (nobody asked for it)."""
    loaded = {}
    for name, count in (("wanted", 6), ("other", 3)):
        spec = StudySpec(
            patient_id=f"MRN-NET-{name}",
            accession_number=f"ACC-NET-{name}",
            series=[SeriesSpec(instances=count)],
        )
        files = write_study(spec, tmp_path / "src" / name)
        orthanc.upload_folder(files[0].parent)
        loaded[name] = (spec, files)
    return loaded


@pytest.fixture
def client(orthanc: OrthancServer) -> Iterator[DimseVna]:
    vna = DimseVna(_settings(orthanc))
    try:
        yield vna
    finally:
        vna.close()


def _cached_names(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.dcm")}


def _send(ae_title: str, port: int, path: Path, bind: str = "") -> tuple[bool, int | None]:
    """(association established, C-STORE status) for one instance sent as ``ae_title``."""
    ae = AE(ae_title=ae_title)
    ae.requested_contexts = StoragePresentationContexts
    ae.acse_timeout = ae.network_timeout = 10
    kwargs: dict[str, Any] = {"bind_address": (bind, 0)} if bind else {}
    assoc = ae.associate("127.0.0.1", port, ae_title=VOXL_AE, **kwargs)
    if not assoc.is_established:
        return False, None
    try:
        status = assoc.send_c_store(dcmread(path))
        return True, int(status.Status) if status else None
    finally:
        assoc.release()


# --- where it listens -----------------------------------------------------------------------


def test_the_storage_scp_listens_on_loopback_unless_configured(
    orthanc: OrthancServer, client: DimseVna
) -> None:
    receiver = client.move_receiver
    assert (receiver.host, receiver.port) == ("127.0.0.1", orthanc.move_scp_port)
    other = DimseVna(_settings(orthanc, store_scp_host="127.0.0.2", store_scp_port=free_port()))
    try:
        port = other.store_scp_port
        assert other.move_receiver.host == "127.0.0.2"
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        other.close()


def test_the_storage_scp_is_not_reachable_on_the_hosts_other_addresses(client: DimseVna) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, a route is chosen
            address = probe.getsockname()[0]
        except OSError:
            address = ""
    if not address or ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(OSError):
        socket.create_connection((address, client.store_scp_port), timeout=5)


# --- who may send ---------------------------------------------------------------------------


def test_an_unknown_calling_ae_is_rejected_and_nothing_is_stored(
    client: DimseVna, studies: dict[str, tuple[StudySpec, list[Path]]], tmp_path: Path
) -> None:
    receiver = client.move_receiver
    _, files = studies["wanted"]
    established, _ = _send("INTRUDER", receiver.port, files[0])
    assert not established
    assert receiver.refused["rejected_association"] == 1


def test_the_right_ae_title_from_another_address_is_refused_before_dicom(
    client: DimseVna, studies: dict[str, tuple[StudySpec, list[Path]]]
) -> None:
    receiver = client.move_receiver
    _, files = studies["wanted"]
    established, _ = _send("ORTHANC", receiver.port, files[0], bind="127.0.0.2")
    assert not established
    assert receiver.refused["connection_from_unknown_address"] == 1
    assert receiver.refused["rejected_association"] == 0  # closed before any association


def test_storescu_with_a_wrong_ae_title_is_rejected(
    client: DimseVna, studies: dict[str, tuple[StudySpec, list[Path]]]
) -> None:
    storescu = shutil.which("storescu") or ""
    if not storescu:
        peer_missing("dcmtk's storescu is not installed (apt-get install dcmtk)")
    receiver = client.move_receiver
    _, files = studies["wanted"]

    def storescu_as(ae_title: str) -> subprocess.CompletedProcess[str]:
        command = [storescu, "-v", "-aet", ae_title, "-aec", VOXL_AE, "127.0.0.1"]
        return subprocess.run(
            [*command, str(receiver.port), str(files[0])],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = storescu_as("NOTANARCHIVE")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    assert receiver.refused["rejected_association"] == 1
    # The archive's own AE title gets an association, but no study is being retrieved: refused.
    result = storescu_as("ORTHANC")
    assert "Association Accepted" in result.stdout + result.stderr
    assert "0x0124" in result.stdout + result.stderr  # the C-STORE response status
    assert receiver.refused["unrequested_instance"] == 1


# --- what may be stored ---------------------------------------------------------------------


@pytest.fixture
def held_retrieval(
    client: DimseVna,
    studies: dict[str, tuple[StudySpec, list[Path]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[RawCache, threading.Event, list[BaseException]]]:
    """A real C-MOVE of 'wanted' from Orthanc, held after its first instance arrives until the
    test sets the event, so the test acts while the study is being retrieved."""
    first_instance, release = threading.Event(), threading.Event()
    original = InstanceWriter.write

    def write_then_hold(self: InstanceWriter, file_meta: Any, encoded: bytes) -> None:
        original(self, file_meta, encoded)
        first_instance.set()
        release.wait(60)

    monkeypatch.setattr(InstanceWriter, "write", write_then_hold)
    cache = RawCache(tmp_path / "cache", 10**9)
    errors: list[BaseException] = []

    def retrieve() -> None:
        try:
            retrieve_raw_study(_request(studies["wanted"][0]), client, cache)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=retrieve)
    worker.start()
    assert first_instance.wait(60), "the C-MOVE never delivered an instance"
    try:
        yield cache, release, errors
    finally:
        release.set()
        worker.join(60)


def test_orthanc_sending_an_unrequested_study_during_a_c_move_is_refused(
    orthanc: OrthancServer,
    client: DimseVna,
    studies: dict[str, tuple[StudySpec, list[Path]]],
    held_retrieval: tuple[RawCache, threading.Event, list[BaseException]],
) -> None:
    cache, release, errors = held_retrieval
    wanted, wanted_files = studies["wanted"]
    other, other_files = studies["other"]
    receiver = client.move_receiver
    assert wanted.study_uid in receiver.routes  # the C-MOVE is under way
    orthanc_id = next(
        s
        for s in orthanc.get("/studies")
        if orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == other.study_uid
    )
    response = requests.post(
        f"{orthanc.url}/modalities/voxl/store",
        json={"Resources": [orthanc_id], "Synchronous": True},
        timeout=60,
    )
    assert not response.ok  # Orthanc's store job failed: VOXL refused it
    assert receiver.refused["unrequested_instance"] >= 1
    release.set()
    _wait_for_route_to_close(receiver, wanted.study_uid)
    assert not errors, errors
    names = _cached_names(cache.root)
    assert names == {instance_file_name(str(dcmread(p).SOPInstanceUID)) for p in wanted_files}
    assert not names & {instance_file_name(str(dcmread(p).SOPInstanceUID)) for p in other_files}


def test_the_retrieved_study_from_another_archive_is_refused(
    orthanc: OrthancServer,
    client: DimseVna,
    studies: dict[str, tuple[StudySpec, list[Path]]],
    held_retrieval: tuple[RawCache, threading.Event, list[BaseException]],
) -> None:
    """A second archive (also allowed to send) may not deliver instances of a study VOXL is
    retrieving from the first one, nor anything of a study nobody is retrieving."""
    cache, release, errors = held_retrieval
    pacs = DimseVna(_settings(orthanc, ae_title="PACS"))
    try:
        assert pacs.move_receiver is client.move_receiver  # one SCP for every archive
        _, wanted_files = studies["wanted"]
        _, other_files = studies["other"]
        assert _send("PACS", client.store_scp_port, wanted_files[-1]) == (
            True,
            STATUS_NOT_AUTHORISED,
        )
        assert _send("PACS", client.store_scp_port, other_files[0]) == (
            True,
            STATUS_NOT_AUTHORISED,
        )
        assert _send("ORTHANC", client.store_scp_port, other_files[0]) == (
            True,
            STATUS_NOT_AUTHORISED,
        )
        assert client.move_receiver.refused["unrequested_instance"] == 3
        release.set()
        _wait_for_route_to_close(client.move_receiver, studies["wanted"][0].study_uid)
        assert not errors, errors
        other_names = {instance_file_name(str(dcmread(p).SOPInstanceUID)) for p in other_files}
        assert not _cached_names(cache.root) & other_names
    finally:
        release.set()
        pacs.close()


def _wait_for_route_to_close(receiver: Any, study_uid: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while study_uid in receiver.routes and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the retrieval thread commits the cache entry after the C-MOVE returns


# --- configuration ---------------------------------------------------------------------------


def test_move_peers_admit_their_title_and_addresses_only() -> None:
    peer = MovePeer.for_archive(VnaSettings(host="127.0.0.1", ae_title="VNA"))
    assert peer.admits("VNA", "127.0.0.1") and peer.admits("VNA ", "::ffff:127.0.0.1")
    assert not peer.admits("VNA", "127.0.0.2") and not peer.admits("PACS", "127.0.0.1")
    cluster = MovePeer.for_archive(
        VnaSettings(host="vna.invalid", ae_title="VNA", move_source_addresses=("10.1.0.0/24",))
    )
    assert cluster.admits("VNA", "10.1.0.77") and not cluster.admits("VNA", "10.1.1.1")
    unknown = MovePeer.for_archive(VnaSettings(host="no-such-host.invalid", ae_title="VNA"))
    assert unknown.networks == () and not unknown.admits("VNA", "127.0.0.1")


@given(
    network=st.ip_addresses(v=4).map(lambda a: ipaddress.ip_network(f"{a}/24", strict=False)),
    address=st.ip_addresses(v=4),
)
def test_an_address_is_admitted_exactly_when_it_is_in_a_configured_network(
    network: ipaddress.IPv4Network, address: ipaddress.IPv4Address
) -> None:
    peer = MovePeer("VNA", (network,))
    assert peer.admits("VNA", str(address)) is (address in network)
    assert peer.admits("VNA", f"::ffff:{address}") is (address in network)
    assert not peer.admits("OTHER", str(address))


def test_check_config_names_bad_source_addresses_and_unreachable_set_ups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.projects import write_project

    write_project(tmp_path / "projects")
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))
    archives = tmp_path / "archives.yaml"
    monkeypatch.setenv("VOXL_ARCHIVES_FILE", str(archives))
    archives.write_text(
        "archives:\n  - name: vna\n    host: 10.2.3.4\n    retrieve: c-move\n"
        "    move_source_addresses: [vna-node-1.example.org]\n"
    )
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert str(archives) in err and "move_source_addresses.0" in err and "IP address" in err
    archives.write_text(
        "archives:\n  - name: vna\n    host: 10.2.3.4\n    retrieve: c-move\n"
        "    move_source_addresses: [10.2.3.0/28]\n"
    )
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "set VOXL_STORE_SCP_HOST" in out and "VOXL_STORE_SCP_PORT is 0" in out
    monkeypatch.delenv("VOXL_ARCHIVES_FILE")
    monkeypatch.setenv("VOXL_VNA_MOVE_SOURCE_ADDRESSES", "10.0.0.1, not-an-address")
    assert main(["check-config"]) == 2
    assert "VOXL_VNA_MOVE_SOURCE_ADDRESSES" in capsys.readouterr().err


def test_store_scp_warnings_stay_quiet_for_a_working_set_up() -> None:
    local = ArchiveConfig("vna", VnaSettings(retrieve="c-move", store_scp_port=4010))
    remote = ArchiveConfig(
        "vna",
        VnaSettings(
            host="10.2.3.4", retrieve="c-move", store_scp_port=4010, store_scp_host="10.2.3.9"
        ),
    )
    assert store_scp_warnings([local, remote]) == []


def test_the_production_example_archives_file_loads() -> None:
    from voxl_assets import settings
    from voxl_assets.vna.archives import load_archive_configs

    example = settings.REPO_ROOT / "deployments" / "production" / "archives.yaml"
    vna, pacs = load_archive_configs(example, VnaSettings())
    assert vna.settings.move_source_addresses == ("10.20.0.0/28",)
    assert MovePeer.for_archive(vna.settings).admits("VNA", "10.20.0.9")
    assert pacs.settings.move_source_addresses == ()
