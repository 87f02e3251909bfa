"""OpenSSH's ``ssh`` client as the transport of VOXL's SFTP uploads.

Why a subprocess: encryption is most of an SFTP upload's work, and paramiko does it in Python
under the GIL; ``ssh`` does it in C in its own process, so on a two-core worker VOXL uploads at
OpenSSH ``sftp``'s pace (paramiko managed ~0.75 of it). Ansible prefers the ssh binary to paramiko
for the same reason.

The session is as strict as the paramiko one: no ssh_config is read (``-F none``), no agent, key
authentication with the one configured key, and the host key is checked against the project's
pinned ``known_host_key`` alone (a private known_hosts file, ``StrictHostKeyChecking=yes``; an
unknown or changed key ends the session before authentication). ssh's stderr is classified into
VOXL's own errors; it never holds patient data, but it is not copied into messages either.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.sftp_wire import SftpWire

# Stands for the server in the private known_hosts file, whatever host/port it is reached by.
_HOST_ALIAS = "voxl-pinned-sftp-server"

# Host key algorithms that can present a key of each known_hosts type.
KEY_ALGORITHMS = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}

_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]

# (what ssh says, whether retrying can help, what VOXL says): first match wins.
_SSH_FAILURES: list[tuple[tuple[str, ...], bool, str]] = [
    (
        (
            "host key verification failed",
            "host identification has changed",
            "no matching host key type",
        ),
        False,
        "{where}: host key mismatch (the key offered is not the pinned known_host_key; if the "
        "server's key really changed, update the project)",
    ),
    (
        ("unprotected private key file",),
        False,
        "ssh ignores the SFTP private key file because others can read it (chmod 600 it)",
    ),
    (("permission denied",), False, "{where} refused the key for the configured user"),
    (("subsystem request failed",), False, "{where} has no SFTP subsystem enabled"),
    (
        (
            "connection refused",
            "connection timed out",
            "operation timed out",
            "no route to host",
            "could not resolve hostname",
            "network is unreachable",
        ),
        True,
        "{where} unreachable",
    ),
]


def ssh_binary() -> str | None:
    return shutil.which("ssh")


class OpenSshSftp:
    """One ``ssh -s sftp`` process and the SFTP session on its stdin/stdout (a socketpair)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        private_key_path: str,
        known_host_key: tuple[str, str],
        timeout: float,
    ) -> None:
        self.host, self.port = host, port
        self._username = username
        self._key_path = private_key_path
        self._key_type, self._key_base64 = known_host_key
        self._timeout = timeout
        self._scratch = tempfile.TemporaryDirectory(prefix="voxl-ssh-")
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def _where(self) -> str:
        return f"SFTP server {self.host}:{self.port}"

    def _command(self, binary: str, known_hosts: Path) -> list[str]:
        seconds = max(1, math.ceil(self._timeout))
        algorithms = KEY_ALGORITHMS.get(self._key_type, [self._key_type])
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": _HOST_ALIAS,
            "HostKeyAlgorithms": ",".join(algorithms),
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            # AES-GCM first, as on the paramiko path: with AES-NI it costs both ends about a
            # third less CPU than OpenSSH's default chacha20-poly1305 (measured here).
            "Ciphers": ",".join(_CIPHERS),
            "ConnectTimeout": str(seconds),
            "ServerAliveInterval": str(max(1, seconds // 3)),
            "ServerAliveCountMax": "3",
            "ControlMaster": "no",
            "ControlPath": "none",
            "ClearAllForwardings": "yes",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "LogLevel": "INFO",  # ERROR hides "no matching host key type"
        }
        command = [binary, "-F", "none", "-s", "-p", str(self.port), "-l", self._username]
        command += ["-i", self._key_path]
        for name, value in options.items():
            command += ["-o", f"{name}={value}"]
        return [*command, "--", self.host, "sftp"]

    def start(self) -> SftpWire:
        """Start ssh and the SFTP session; raises UploadError (or TransientUploadError)."""
        binary = ssh_binary()
        if binary is None:
            raise UploadError(
                "the OpenSSH client `ssh` is not installed (apt-get install openssh-client), "
                "or set ssh_client: paramiko in the project's destination"
            )
        scratch = Path(self._scratch.name)
        known_hosts = scratch / "known_hosts"
        known_hosts.write_text(f"{_HOST_ALIAS} {self._key_type} {self._key_base64}\n")
        ours, theirs = socket.socketpair()
        try:
            with (scratch / "stderr").open("wb") as stderr:
                self._process = subprocess.Popen(
                    self._command(binary, known_hosts),
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=stderr,
                )
        except OSError as exc:
            ours.close()
            raise UploadError(f"cannot start ssh ({type(exc).__name__})") from None
        finally:
            theirs.close()
        self._sock = ours
        ours.settimeout(self._timeout)
        wire = SftpWire(ours)
        try:
            wire.handshake()
        except (EOFError, OSError):
            raise self._failure() from None
        return wire

    def _failure(self) -> UploadError:
        """What went wrong, from ssh's exit and stderr, once the session failed to start."""
        self._stop()
        stderr = (Path(self._scratch.name) / "stderr").read_text(errors="replace").lower()
        code = self._process.returncode if self._process is not None else None
        self.close()
        for needles, transient, message in _SSH_FAILURES:
            if any(needle in stderr for needle in needles):
                error = TransientUploadError if transient else UploadError
                return error(message.format(where=self._where()))
        return TransientUploadError(f"SSH session with {self.host} failed (ssh exit {code})")

    def _stop(self) -> None:
        """EOF on ssh's stdin makes it close the channel and exit."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._process is not None and self._process.returncode is None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def close(self) -> None:
        """End the session and remove the private known_hosts file."""
        self._stop()
        self._scratch.cleanup()
