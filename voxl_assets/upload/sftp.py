"""SFTP with key authentication and a pinned host key (unknown or changed keys are refused).

The server's key must equal the ``known_host_key`` of the project (a known_hosts line); there is
no trust-on-first-use. Objects are written to a hidden ``.<name>.part``, size-checked, then moved
with ``posix-rename@openssh.com`` (atomic, replaces an older copy). A study's zip is streamed into
the remote file while it is built (no temporary file).

Two SSH clients, one behaviour: OpenSSH's ``ssh`` (``voxl_assets.upload.openssh``, carrying
VOXL's own SFTP framing, ``sftp_wire``) is the default wherever it is installed, because it
encrypts in C; paramiko (pure Python) is the fallback, or the choice with ``ssh_client: paramiko``.
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
import socket
import threading
import time
from pathlib import Path
from typing import Literal, Protocol

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from voxl_assets.project_config import check_known_host_key
from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.local import partial_name
from voxl_assets.upload.openssh import KEY_ALGORITHMS, OpenSshSftp, ssh_binary
from voxl_assets.upload.remote_files import RemoteFileUploader
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY
from voxl_assets.upload.sftp_wire import SftpWire
from voxl_assets.upload.zipping import StudyZipSource, stream_source

SshClient = Literal["auto", "openssh", "paramiko"]

# An idle session is used again within this many seconds, else closed (servers drop idle ones).
IDLE_SECONDS = 30.0

# paramiko splits an SFTP write of 32 KiB into two SSH packets (a channel packet carries at most
# max_packet_size - 64 bytes, and the request adds a 29-byte header); writes that fit in one packet
# halve the packet count and make uploads ~20% faster.
_WRITE_REQUEST_SIZE = 32768 - 64 - 64


def parse_known_host(line: str) -> tuple[str, paramiko.PKey]:
    """``host keytype base64`` (a known_hosts line) -> (key type, key); the line's shape is
    checked as when a project loads (``check_known_host_key``)."""
    try:
        _, key_type, key = check_known_host_key(line).split()[:3]
        return key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key))
    except ValueError as exc:
        raise UploadError(f"known_host_key {exc}") from None
    except (paramiko.SSHException, TypeError):
        raise UploadError(f"known_host_key is not a valid {key_type} key") from None


def _load_private_key(path: str) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except OSError as exc:
        raise UploadError(
            f"the SFTP private key file cannot be read ({type(exc).__name__})"
        ) from None
    except (paramiko.SSHException, ValueError):
        # A passphrase-protected or unknown key format: say so, never echo the file.
        raise UploadError(
            "the SFTP private key file is not an unencrypted OpenSSH/PEM private key"
        ) from None


class _RemoteFiles(Protocol):
    """The few file operations an upload needs, whichever SSH client carries them."""

    def exists(self, path: str) -> bool: ...
    def mkdir(self, path: str) -> None: ...
    def size(self, path: str) -> int: ...
    def write(self, path: str, source: Path | StudyZipSource) -> int: ...
    def replace(self, partial: str, final: str) -> None: ...
    def close(self) -> None: ...


class _OpenSshFiles:
    def __init__(self, session: OpenSshSftp, wire: SftpWire) -> None:
        self._session, self._wire = session, wire

    def exists(self, path: str) -> bool:
        return self._wire.exists(path)

    def mkdir(self, path: str) -> None:
        self._wire.mkdir(path)

    def size(self, path: str) -> int:
        return self._wire.stat_size(path)

    def write(self, path: str, source: Path | StudyZipSource) -> int:
        return self._wire.write_file(path, lambda send: stream_source(source, send))

    def replace(self, partial: str, final: str) -> None:
        self._wire.rename(partial, final)

    def close(self) -> None:
        self._session.close()


class _ParamikoFiles:
    def __init__(self, transport: paramiko.Transport, client: paramiko.SFTPClient) -> None:
        self._transport, self._client = transport, client

    def exists(self, path: str) -> bool:
        try:
            self._client.stat(path)
        except FileNotFoundError:
            return False
        return True

    def mkdir(self, path: str) -> None:
        self._client.mkdir(path)

    def size(self, path: str) -> int:
        return int(self._client.stat(path).st_size or 0)

    def write(self, path: str, source: Path | StudyZipSource) -> int:
        with self._client.open(path, "wb") as handle:
            handle.set_pipelined(True)  # don't wait for each write's acknowledgement
            handle.MAX_REQUEST_SIZE = _WRITE_REQUEST_SIZE
            return stream_source(source, handle.write)

    def replace(self, partial: str, final: str) -> None:
        try:
            self._client.posix_rename(partial, final)
        except OSError:  # no posix-rename extension: plain rename, which won't overwrite
            with contextlib.suppress(FileNotFoundError):
                self._client.remove(final)
            self._client.rename(partial, final)

    def close(self) -> None:
        # Closing a dead session raises (EOFError, socket errors): it must not mask the
        # classified error of the upload, nor turn a finished upload into a failure.
        with contextlib.suppress(Exception):
            self._client.close()
        self._transport.close()


class SftpUploader(RemoteFileUploader):
    kind = "sftp"
    transfer = "SFTP upload"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        private_key_path: str,
        known_host_key: str,
        *,
        remote_root: str = ".",
        ssh_client: SshClient = "auto",
        timeout: float = 30.0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self._key_path = private_key_path
        self._key_type, self._host_key = parse_known_host(known_host_key)
        self.remote_root = remote_root
        if ssh_client == "auto":
            ssh_client = "openssh" if ssh_binary() is not None else "paramiko"
        self.ssh_client: Literal["openssh", "paramiko"] = ssh_client
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.attempts = attempts
        # Sessions between uploads, newest last; one per worker thread at most in use.
        self.idle_seconds = IDLE_SECONDS
        self._idle: list[tuple[float, _RemoteFiles]] = []
        self._idle_lock = threading.Lock()

    def describe(self) -> str:
        return f"sftp://{self.host}:{self.port}/{self.remote_root.lstrip('/')}"

    def _where(self) -> str:
        return f"SFTP server {self.host}:{self.port}"

    def _connect(self) -> _RemoteFiles:
        if self.ssh_client == "openssh":
            return self._connect_openssh()
        return self._connect_paramiko()

    def _connect_openssh(self) -> _RemoteFiles:
        # Same checks of the key file as paramiko's path, before ssh could prompt or ignore it.
        _load_private_key(self._key_path)
        session = OpenSshSftp(
            host=self.host,
            port=self.port,
            username=self.username,
            private_key_path=self._key_path,
            known_host_key=(self._key_type, self._host_key.get_base64()),
            timeout=self.timeout,
        )
        return _OpenSshFiles(session, session.start())

    def _connect_paramiko(self) -> _RemoteFiles:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise TransientUploadError(
                f"{self._where()} unreachable ({type(exc).__name__})"
            ) from None
        transport = paramiko.Transport(sock)
        options = transport.get_security_options()
        # AES-GCM first: authenticated encryption in one OpenSSL call per packet (no separate
        # HMAC), measurably faster in paramiko than its default aes128-ctr + hmac-sha2-256.
        options.ciphers = sorted(options.ciphers, key=lambda name: "-gcm@" not in name)
        # Ask only for the pinned key's type, so a server with several keys shows the pinned one.
        options.key_types = KEY_ALGORITHMS.get(self._key_type, [self._key_type])
        try:
            transport.start_client(timeout=self.timeout)
            offered = transport.get_remote_server_key()
            if offered.asbytes() != self._host_key.asbytes():
                raise UploadError(
                    f"{self._where()}: host key mismatch (the key offered is not the pinned "
                    "known_host_key; if the server's key really changed, update the project)"
                )
            transport.auth_publickey(self.username, _load_private_key(self._key_path))
            client = paramiko.SFTPClient.from_transport(transport)
            if client is None:
                raise TransientUploadError(f"{self._where()} opened no SFTP channel")
        except paramiko.AuthenticationException:
            transport.close()
            raise UploadError(f"{self._where()} refused the key for the configured user") from None
        except IncompatiblePeer:
            transport.close()
            raise UploadError(
                f"{self._where()}: host key mismatch (no key of the pinned type "
                f"{self._key_type} offered)"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise TransientUploadError(
                f"SSH session with {self.host} failed ({type(exc).__name__})"
            ) from None
        except BaseException:
            transport.close()
            raise
        channel = client.get_channel()
        if channel is not None:
            channel.settimeout(self.timeout)
        return _ParamikoFiles(transport, client)

    @staticmethod
    def _makedirs(files: _RemoteFiles, directory: str) -> None:
        path = "/" if directory.startswith("/") else ""
        for part in [p for p in directory.split("/") if p]:
            path = posixpath.join(path, part) if path else part
            if not files.exists(path):
                files.mkdir(path)

    @staticmethod
    def _write(files: _RemoteFiles, source: Path | StudyZipSource, remote: str) -> int:
        sent = files.write(remote, source)
        # write() waited for every acknowledgement; now check what the server holds.
        size = files.size(remote)
        if size != sent:
            raise TransientUploadError(
                f"SFTP server holds {size} of {sent} bytes after the transfer"
            )
        return sent

    def _checkout(self) -> tuple[_RemoteFiles, bool]:
        """A session for one upload: an idle one of this uploader's (True) or a new one."""
        with self._idle_lock:
            while self._idle:
                parked, files = self._idle.pop()
                if time.monotonic() - parked < self.idle_seconds:
                    return files, True
                files.close()
        return self._connect(), False

    def _checkin(self, files: _RemoteFiles) -> None:
        with self._idle_lock:
            self._idle.append((time.monotonic(), files))

    def close(self) -> None:
        """End the idle sessions (a run's uploads are over)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for _, files in idle:
            files.close()

    def _put(self, source: Path | StudyZipSource, remote: str) -> int:
        """One attempt: upload under the partial name, check its size, rename; returns bytes.

        Sessions are kept for the next upload (a new SSH connection costs 0.1-0.2 s, more than
        a small study's transfer). A kept session the server has since dropped fails at once;
        the upload then runs on a new session without counting as a failed attempt."""
        files, reused = self._checkout()
        try:
            sent = self._put_on(files, source, remote)
        except TransientUploadError:
            files.close()
            if not reused:
                raise
            files = self._connect()
            try:
                sent = self._put_on(files, source, remote)
            except BaseException:
                files.close()
                raise
        except BaseException:
            files.close()
            raise
        self._checkin(files)
        return sent

    def _put_on(self, files: _RemoteFiles, source: Path | StudyZipSource, remote: str) -> int:
        partial = posixpath.join(
            posixpath.dirname(remote), partial_name(posixpath.basename(remote))
        )
        try:
            self._makedirs(files, posixpath.dirname(remote))
            sent = self._write(files, source, partial)
            files.replace(partial, remote)
            return sent
        except PermissionError:
            raise UploadError(f"{self._where()} refused the upload (permission denied)") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientUploadError(
                f"SFTP transfer to {self.host} interrupted ({type(exc).__name__})"
            ) from None

    def _remote(self, relative: str) -> str:
        return posixpath.join(self.remote_root, relative)
