"""OpenSSH sshd (Debian openssh-server) on a loopback high port, throwaway host and user keys."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import free_port, peer_missing, wait_for_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SshServer:
    host: str
    port: int
    username: str
    private_key: Path
    known_host_line: str
    root: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def write_sshd_config(base: Path, port: int) -> Path:
    """A loopback sshd for SFTP only, keys in ``base`` (host_key, authorized_keys)."""
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {base / 'host_key'}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {base / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin yes",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SshServer]:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        peer_missing("OpenSSH server not installed (apt-get install openssh-server)")
    base = tmp_path / "sshd"
    base.mkdir()
    _keygen(base / "host_key")
    _keygen(base / "user_key")
    (base / "authorized_keys").write_text((base / "user_key.pub").read_text())
    root = tmp_path / "sftp-root"
    root.mkdir()
    port = free_port()
    config = write_sshd_config(base, port)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(base / "sshd.log").open("wb"),
    )
    if not wait_for_port(port, 15):
        process.kill()
        pytest.fail(f"sshd did not start: {(base / 'sshd.log').read_text()}")
    key_type, key = (base / "host_key.pub").read_text().split()[:2]
    server = SshServer(
        "127.0.0.1",
        port,
        os.environ.get("USER") or __import__("getpass").getuser(),
        base / "user_key",
        f"[127.0.0.1]:{port} {key_type} {key}",
        root,
        process,
    )
    yield server
    server.stop()
