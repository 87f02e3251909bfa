"""Explicit FTPS (AUTH TLS, protected data channel); plain FTP is refused."""

from __future__ import annotations

import contextlib
import ftplib
import posixpath
import ssl
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from voxl_assets.retry import retry_with_backoff
from voxl_assets.upload.base import TransientUploadError, UploadError, UploadReport, UploadTarget
from voxl_assets.upload.zipping import study_zip


class FtpsUploader:
    kind = "ftps"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        remote_root: str = "/",
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        timeout: float = 60.0,
        retry_delay: float = 2.0,
    ) -> None:
        self.host, self.port = host, port
        self._username, self._password = username, password
        self.remote_root = remote_root
        self.timeout = timeout
        self.retry_delay = retry_delay
        context = ssl.create_default_context(cafile=ca_bundle)
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context

    def describe(self) -> str:
        return f"ftps://{self.host}:{self.port}{self.remote_root}"

    def _connect(self) -> ftplib.FTP_TLS:
        ftp = ftplib.FTP_TLS(context=self._context, timeout=self.timeout)
        try:
            ftp.connect(self.host, self.port)
        except OSError as exc:
            raise TransientUploadError(
                f"FTPS server {self.host}:{self.port} unreachable ({type(exc).__name__})"
            ) from None
        try:
            ftp.auth()
        except ftplib.error_perm:
            ftp.close()
            raise UploadError(
                f"FTPS server {self.host}:{self.port} does not offer TLS (plain FTP refused)"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            ftp.close()
            raise UploadError(
                f"TLS with {self.host}:{self.port} failed ({type(exc).__name__})"
            ) from None
        try:
            ftp.login(self._username, self._password)
        except ftplib.error_perm:
            ftp.close()
            raise UploadError(
                f"FTPS server {self.host}:{self.port} refused the credentials"
            ) from None
        ftp.prot_p()
        return ftp

    @staticmethod
    def _makedirs(ftp: ftplib.FTP_TLS, directory: str) -> None:
        path = ""
        for part in directory.strip("/").split("/"):
            path = f"{path}/{part}" if path or directory.startswith("/") else part
            with contextlib.suppress(ftplib.error_perm):  # it exists already
                ftp.mkd(path)

    def _put(self, local: Path, remote: str) -> None:
        ftp = self._connect()
        try:
            self._makedirs(ftp, posixpath.dirname(remote))
            partial = posixpath.join(
                posixpath.dirname(remote),
                f".{posixpath.basename(remote)}.{uuid.uuid4().hex[:8]}.part",
            )
            with local.open("rb") as handle:
                ftp.storbinary(f"STOR {partial}", handle, blocksize=1 << 20)
            with contextlib.suppress(ftplib.error_perm):  # some servers won't rename over a file
                ftp.delete(remote)
            ftp.rename(partial, remote)
        except (OSError, EOFError, ftplib.error_temp) as exc:
            raise TransientUploadError(
                f"FTPS transfer to {self.host} interrupted ({type(exc).__name__})"
            ) from None
        finally:
            try:
                ftp.quit()
            except (OSError, EOFError, ftplib.Error):
                ftp.close()

    def _put_with_retries(self, local: Path, remote: str) -> None:
        retry_with_backoff(
            lambda: self._put(local, remote),
            attempts=4,
            initial_delay=self.retry_delay,
            retry_on=(TransientUploadError,),
            what="FTPS upload",
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
