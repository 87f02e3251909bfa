"""SFTP uploads against OpenSSH sshd (throwaway host and user keys, loopback high port).

Every test runs with both SSH clients VOXL can use: OpenSSH's ``ssh`` (the default) and paramiko.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from tests.peers import free_port, peer_missing
from tests.peers._dropping_proxy import DroppingProxy
from tests.peers._upload_study import (
    TARGET,
    anonymised_study,
    database_with_study,
    export_count,
    leftovers,
    zip_names,
)
from tests.peers.sftp import SshServer
from voxl_assets.project_config import SftpDestination
from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_file_uploader, make_image_uploader
from voxl_assets.upload.openssh import ssh_binary
from voxl_assets.upload.sftp import SftpUploader, SshClient
from voxl_assets.upload.zipping import stream_study_zip


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return anonymised_study(tmp_path / "anon")


@pytest.fixture(params=["openssh", "paramiko"])
def ssh_client(request: pytest.FixtureRequest) -> SshClient:
    if request.param == "openssh" and ssh_binary() is None:
        peer_missing("OpenSSH client not installed (apt-get install openssh-client)")
    client: SshClient = request.param
    return client


def _destination(
    server: SshServer,
    ssh_client: SshClient,
    *,
    port: int | None = None,
    known_host: str | None = None,
) -> SftpDestination:
    return SftpDestination(
        kind="sftp",
        host=server.host,
        port=port or server.port,
        username_env="SFTP_USER",
        private_key_path_env="SFTP_KEY",
        known_host_key=known_host or server.known_host_line,
        remote_root=str(server.root),
        ssh_client=ssh_client,
    )


def _env(server: SshServer, key: Path | None = None) -> dict[str, str]:
    return {"SFTP_USER": server.username, "SFTP_KEY": str(key or server.private_key)}


def _new_key(path: Path, key_type: str = "ed25519") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def test_study_zip_lands_at_the_layout_once(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path, study: list[Path]
) -> None:
    uploader = make_image_uploader(_destination(sftp_server, ssh_client), _env(sftp_server))
    assert uploader is not None
    database = database_with_study(tmp_path)
    report = upload_study_once(database, 1, uploader, study, TARGET)
    final = sftp_server.root / TARGET.relative_zip_path
    assert report is not None and report.bytes == final.stat().st_size and report.instances == 4
    assert zip_names(final) == {p.name for p in study}
    assert leftovers(sftp_server.root) == []
    mtime = final.stat().st_mtime_ns
    assert upload_study_once(database, 1, uploader, study, TARGET) is None
    assert final.stat().st_mtime_ns == mtime and export_count(database) == 1
    assert upload_study_once(database, 1, uploader, study, TARGET, force=True) is not None
    assert export_count(database) == 1 and leftovers(sftp_server.root) == []


def test_tree_upload_for_ehr_bundles(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    (bundle / "omop" / "measurement.parquet").write_bytes(b"x" * 70_000)
    (bundle / "provenance.json").write_text('{"ok": true}')
    uploader = make_file_uploader(_destination(sftp_server, ssh_client), _env(sftp_server))
    assert uploader is not None
    report = uploader.upload_tree(bundle, "demo-project/2026-11-01T12-00-00/ehr")
    remote = sftp_server.root / "demo-project" / "2026-11-01T12-00-00" / "ehr"
    assert report.instances == 2
    assert (remote / "omop" / "measurement.parquet").read_bytes() == b"x" * 70_000
    assert (remote / "provenance.json").read_text() == '{"ok": true}'


def test_host_key_mismatch_is_refused_before_authenticating(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path, study: list[Path]
) -> None:
    impostor = f"[127.0.0.1]:{sftp_server.port} {_new_key(tmp_path / 'other')}"
    uploader = make_image_uploader(
        _destination(sftp_server, ssh_client, known_host=impostor), _env(sftp_server)
    )
    assert uploader is not None
    with pytest.raises(UploadError, match=r"127\.0\.0\.1.*host key mismatch") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    # Pinned key of a type the server does not have: refused too, not trusted on first use.
    ecdsa = f"[127.0.0.1]:{sftp_server.port} {_new_key(tmp_path / 'ecdsa', 'ecdsa')}"
    other_type = make_image_uploader(
        _destination(sftp_server, ssh_client, known_host=ecdsa), _env(sftp_server)
    )
    assert other_type is not None
    with pytest.raises(UploadError, match="host key mismatch"):
        other_type.upload_study(study, TARGET)
    assert not any(sftp_server.root.rglob("*"))


def test_unknown_user_key_is_refused(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path, study: list[Path]
) -> None:
    _new_key(tmp_path / "stranger")
    uploader = make_image_uploader(
        _destination(sftp_server, ssh_client), _env(sftp_server, key=tmp_path / "stranger")
    )
    assert uploader is not None
    with pytest.raises(UploadError, match="refused the key") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    missing = make_image_uploader(
        _destination(sftp_server, ssh_client), _env(sftp_server, key=tmp_path / "absent")
    )
    assert missing is not None
    with pytest.raises(UploadError, match="private key file cannot be read") as unreadable:
        missing.upload_study(study, TARGET)
    assert "absent" not in str(unreadable.value)


def test_server_down_is_transient_after_fast_retries(
    sftp_server: SshServer, ssh_client: SshClient, study: list[Path]
) -> None:
    uploader = SftpUploader(
        "127.0.0.1",
        free_port(),
        sftp_server.username,
        str(sftp_server.private_key),
        sftp_server.known_host_line,
        ssh_client=ssh_client,
        retry_delay=0.01,
        attempts=3,
    )
    with pytest.raises(TransientUploadError, match="unreachable"):
        uploader.upload_study(study, TARGET)


def test_connection_cut_midway_is_retried_and_never_looks_complete(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path
) -> None:
    """The network path resets the first SSH connection after 200 KB: the retry succeeds; when
    it started, only the partial name existed at the destination."""
    big_study = anonymised_study(tmp_path / "big", instances=6, size=256)  # ~800 KB zip
    final = sftp_server.root / TARGET.relative_zip_path
    seen_at_retry: list[tuple[bool, list[str]]] = []

    def on_connect(number: int) -> None:
        if number == 2:  # the retry's connection: what does the destination hold now?
            seen_at_retry.append((final.exists(), leftovers(sftp_server.root)))

    proxy = DroppingProxy(sftp_server.port, after_bytes=200_000, on_connect=on_connect)
    try:
        uploader = make_image_uploader(
            _destination(sftp_server, ssh_client, port=proxy.port), _env(sftp_server)
        )
        assert uploader is not None
        uploader.retry_delay = 0.05  # type: ignore[attr-defined]
        database = database_with_study(tmp_path)
        assert upload_study_once(database, 1, uploader, big_study, TARGET) is not None
    finally:
        proxy.close()
    assert proxy.dropped == 1 and proxy.connections == 2
    assert seen_at_retry == [(False, [".2.25.31415926535897932384.zip.part"])]
    assert zip_names(final) == {p.name for p in big_study}
    assert leftovers(sftp_server.root) == [] and export_count(database) == 1


def test_large_zip_arrives_byte_for_byte_through_both_clients(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path
) -> None:
    """~9 MB: hundreds of pipelined write requests, so acknowledgements arrive while VOXL still
    writes; the remote zip equals the one streamed locally from the same files."""
    big_study = anonymised_study(tmp_path / "big", instances=34, size=512)
    uploader = make_image_uploader(_destination(sftp_server, ssh_client), _env(sftp_server))
    assert uploader is not None
    report = uploader.upload_study(big_study, TARGET)
    local = bytearray()
    stream_study_zip(big_study, local.extend)
    remote = sftp_server.root / TARGET.relative_zip_path
    assert report.bytes == len(local) > 8_000_000
    assert remote.read_bytes() == local
    # A second (forced) upload replaces the first atomically and leaves nothing behind.
    uploader.upload_study(big_study[:3], TARGET)
    assert (
        zip_names(remote) == {p.name for p in big_study[:3]} and leftovers(sftp_server.root) == []
    )


def test_openssh_says_chmod_when_the_key_file_is_readable_by_others(
    sftp_server: SshServer, tmp_path: Path, study: list[Path]
) -> None:
    if ssh_binary() is None:
        peer_missing("OpenSSH client not installed (apt-get install openssh-client)")
    loose_key = tmp_path / "loose_key"
    shutil.copy(sftp_server.private_key, loose_key)
    loose_key.chmod(0o644)
    uploader = make_image_uploader(
        _destination(sftp_server, "openssh"), _env(sftp_server, key=loose_key)
    )
    assert uploader is not None
    with pytest.raises(UploadError, match="chmod 600") as caught:
        uploader.upload_study(study, TARGET)
    assert not isinstance(caught.value, TransientUploadError)
    assert str(loose_key) not in str(caught.value)


def test_auto_picks_openssh_when_installed_and_paramiko_otherwise(
    sftp_server: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def uploader() -> SftpUploader:
        return SftpUploader(
            sftp_server.host,
            sftp_server.port,
            sftp_server.username,
            str(sftp_server.private_key),
            sftp_server.known_host_line,
        )

    if ssh_binary() is not None:
        assert uploader().ssh_client == "openssh"
    monkeypatch.setenv("PATH", str(sftp_server.root))  # a PATH without ssh
    assert uploader().ssh_client == "paramiko"


def test_sessions_are_kept_between_uploads_and_renewed_when_dropped(
    sftp_server: SshServer, ssh_client: SshClient, tmp_path: Path, study: list[Path]
) -> None:
    """Three studies over one SSH connection; an idle session the network dropped is replaced
    at once (no retry delay); an expired one is closed; close() ends the rest."""
    proxy = DroppingProxy(sftp_server.port, after_bytes=1 << 40, drops=0)
    try:
        uploader = make_image_uploader(
            _destination(sftp_server, ssh_client, port=proxy.port), _env(sftp_server)
        )
        assert isinstance(uploader, SftpUploader)
        uploader.retry_delay = 60.0  # a retry would hang the test: there must be none
        targets = [replace(TARGET, pseudo_study_uid=f"2.25.{n}") for n in range(4)]
        for target in targets[:3]:
            uploader.upload_study(study, target)
        assert proxy.connections == 1
        proxy.cut_open_connections()
        uploader.upload_study(study, targets[3])  # the kept session is dead: a new one
        assert proxy.connections == 2
        uploader.idle_seconds = 0.0  # the kept session has expired: closed, a new one
        uploader.upload_study(study, targets[0])
        assert proxy.connections == 3
        uploader.close()
        assert uploader._idle == []
    finally:
        proxy.close()
    for target in targets:
        assert zip_names(sftp_server.root / target.relative_zip_path) == {p.name for p in study}
    assert leftovers(sftp_server.root) == []
