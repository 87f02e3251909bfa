"""SFTP with key authentication and a pinned host key (unknown or changed keys are refused)."""

from __future__ import annotations

import base64
import posixpath
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import paramiko

from voxl_assets.retry import retry_with_backoff
from voxl_assets.upload.base import TransientUploadError, UploadError, UploadReport, UploadTarget
from voxl_assets.upload.zipping import study_zip


def parse_known_host(line: str) -> tuple[str, paramiko.PKey]:
    """``host keytype base64`` (a known_hosts line) -> (key type, key)."""
    parts = line.split()
    if len(parts) < 3:
        raise UploadError("known_host_key must look like '<host> <key type> <base64 key>'")
    key_type, blob = parts[1], base64.b64decode(parts[2])
    return key_type, paramiko.PKey.from_type_string(key_type, blob)


class SftpUploader:
    kind = "sftp"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        private_key_path: str,
        known_host_key: str,
        *,
        remote_root: str = ".",
        timeout: float = 30.0,
        retry_delay: float = 2.0,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self._key_path = private_key_path
        self._key_type, self._host_key = parse_known_host(known_host_key)
        self.remote_root = remote_root
        self.timeout = timeout
        self.retry_delay = retry_delay

    def describe(self) -> str:
        return f"sftp://{self.host}:{self.port}/{self.remote_root.lstrip('/')}"

    def _connect(self) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise TransientUploadError(
                f"SFTP server {self.host}:{self.port} unreachable ({type(exc).__name__})"
            ) from None
        transport = paramiko.Transport(sock)
        transport.get_security_options().key_types = [self._key_type]
        try:
            transport.start_client(timeout=self.timeout)
            offered = transport.get_remote_server_key()
            if offered != self._host_key:
                raise UploadError(
                    f"SFTP server {self.host}:{self.port}: host key mismatch (the key offered is not "
                    "the pinned known_host_key; if the server's key really changed, update the project)"
                )
            key = paramiko.PKey.from_path(self._key_path)
            transport.auth_publickey(self.username, key)
        except paramiko.AuthenticationException:
            transport.close()
            raise UploadError(
                f"SFTP server {self.host}:{self.port} refused the key for the configured user"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise TransientUploadError(
                f"SFTP session with {self.host} failed ({type(exc).__name__})"
            ) from None
        except UploadError:
            transport.close()
            raise
        client = paramiko.SFTPClient.from_transport(transport)
        if client is None:
            transport.close()
            raise TransientUploadError(f"SFTP server {self.host} opened no SFTP channel")
        return transport, client

    @staticmethod
    def _makedirs(client: paramiko.SFTPClient, directory: str) -> None:
        path = "/" if directory.startswith("/") else ""
        for part in [p for p in directory.split("/") if p]:
            path = posixpath.join(path, part) if path else part
            try:
                client.stat(path)
            except OSError:
                client.mkdir(path)

    def _put(self, local: Path, remote: str) -> None:
        transport, client = self._connect()
        try:
            self._makedirs(client, posixpath.dirname(remote))
            partial = posixpath.join(
                posixpath.dirname(remote),
                f".{posixpath.basename(remote)}.{uuid.uuid4().hex[:8]}.part",
            )
            client.put(str(local), partial, confirm=True)
            client.posix_rename(partial, remote)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientUploadError(
                f"SFTP transfer to {self.host} interrupted ({type(exc).__name__})"
            ) from None
        finally:
            client.close()
            transport.close()

    def _put_with_retries(self, local: Path, remote: str) -> None:
        retry_with_backoff(
            lambda: self._put(local, remote),
            attempts=4,
            initial_delay=self.retry_delay,
            retry_on=(TransientUploadError,),
            what="SFTP upload",
        )

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        with study_zip(files) as archive:
            self._put_with_retries(
                archive, posixpath.join(self.remote_root, target.relative_zip_path)
            )
            size = archive.stat().st_size
        return UploadReport(
            self.kind, self.describe(), len(files), size, time.monotonic() - started
        )

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        started = time.monotonic()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for path in files:
            remote = posixpath.join(
                self.remote_root, remote_prefix, path.relative_to(local_dir).as_posix()
            )
            self._put_with_retries(path, remote)
        total = sum(p.stat().st_size for p in files)
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )
