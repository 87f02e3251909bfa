"""Explicit FTPS (AUTH TLS, protected data channel); plain FTP is refused.

Each object is written to a hidden ``.<name>.part`` beside its final name, its size checked, then
renamed (RNFR/RNTO): a reader of the remote folder never sees a half-written zip under its final
name. A study's zip is streamed into the data connection while it is built (no temporary file).
"""

from __future__ import annotations

import contextlib
import ftplib
import posixpath
import ssl
from pathlib import Path

from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.local import partial_name
from voxl_assets.upload.remote_files import RemoteFileUploader
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY
from voxl_assets.upload.zipping import StudyZipSource, stream_source

# Errors of the connection itself (peer gone, reset, timeout, TLS record cut): worth a retry.
_NETWORK_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


def _remote_path(root: str, relative: str) -> str:
    return posixpath.join(root, relative) if root not in ("", ".") else relative


class FtpsUploader(RemoteFileUploader):
    kind = "ftps"
    transfer = "FTPS upload"

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
        retry_delay: float = DEFAULT_RETRY_DELAY,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.host, self.port = host, port
        self._username, self._password = username, password
        self.remote_root = remote_root
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.attempts = attempts
        context = ssl.create_default_context(cafile=ca_bundle)
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context

    def describe(self) -> str:
        return f"ftps://{self.host}:{self.port}/{self.remote_root.strip('/')}"

    def _where(self) -> str:
        return f"FTPS server {self.host}:{self.port}"

    def _connect(self) -> ftplib.FTP_TLS:
        ftp = ftplib.FTP_TLS(context=self._context, timeout=self.timeout)
        try:
            ftp.connect(self.host, self.port)
        except OSError as exc:
            raise TransientUploadError(
                f"{self._where()} unreachable ({type(exc).__name__})"
            ) from None
        try:
            self._secure_and_login(ftp)
        except BaseException:
            ftp.close()
            raise
        return ftp

    def _secure_and_login(self, ftp: ftplib.FTP_TLS) -> None:
        try:
            ftp.auth()
        except ftplib.error_perm:
            raise UploadError(f"{self._where()} does not offer TLS (plain FTP refused)") from None
        except ssl.SSLCertVerificationError:
            raise UploadError(
                f"{self._where()}: TLS certificate not trusted (set ca_bundle to its CA)"
            ) from None
        except ssl.SSLError as exc:
            raise UploadError(f"{self._where()}: TLS handshake failed ({exc.reason})") from None
        except _NETWORK_ERRORS as exc:
            raise TransientUploadError(
                f"{self._where()} dropped the connection ({type(exc).__name__})"
            ) from None
        try:
            ftp.login(self._username, self._password)
        except ftplib.error_perm:
            raise UploadError(f"{self._where()} refused the credentials") from None
        except _NETWORK_ERRORS as exc:
            raise TransientUploadError(
                f"{self._where()} dropped the connection ({type(exc).__name__})"
            ) from None
        try:
            ftp.prot_p()  # the data channel is encrypted too
        except ftplib.error_perm:
            raise UploadError(f"{self._where()} refused a protected data channel") from None

    @staticmethod
    def _makedirs(ftp: ftplib.FTP_TLS, directory: str) -> None:
        path = "/" if directory.startswith("/") else ""
        for part in [p for p in directory.split("/") if p]:
            path = posixpath.join(path, part) if path else part
            with contextlib.suppress(ftplib.error_perm):  # it exists already
                ftp.mkd(path)

    @staticmethod
    def _store(ftp: ftplib.FTP_TLS, source: Path | StudyZipSource, remote: str) -> int:
        """STOR ``remote`` from ``source`` (as ``storbinary`` does, but fed by a stream)."""
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"STOR {remote}") as conn:
            sent = stream_source(source, conn.sendall)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()  # a clean TLS close: the server knows the file is complete
        ftp.voidresp()
        return sent

    def _put(self, source: Path | StudyZipSource, remote: str) -> int:
        """One attempt: upload under the partial name, check its size, rename; returns bytes."""
        ftp = self._connect()
        partial = posixpath.join(
            posixpath.dirname(remote), partial_name(posixpath.basename(remote))
        )
        try:
            self._makedirs(ftp, posixpath.dirname(remote))
            sent = self._store(ftp, source, partial)
            size = None
            with contextlib.suppress(ftplib.error_perm):  # SIZE is an extension (RFC 3659)
                size = ftp.size(partial)
            if size is not None and size != sent:
                raise TransientUploadError(
                    f"{self._where()} holds {size} of {sent} bytes after the transfer"
                )
            with contextlib.suppress(ftplib.error_perm):  # some servers won't rename over a file
                ftp.delete(remote)
            ftp.rename(partial, remote)
            return sent
        except ftplib.error_perm as exc:
            # The connection still works: remove the partial (a retry would overwrite it anyway).
            with contextlib.suppress(*_NETWORK_ERRORS, ftplib.error_perm):
                ftp.delete(partial)
            raise UploadError(
                f"{self._where()} refused the upload (reply {str(exc)[:3]}: permission or path)"
            ) from None
        except _NETWORK_ERRORS as exc:
            raise TransientUploadError(
                f"FTPS transfer to {self.host} interrupted ({type(exc).__name__})"
            ) from None
        finally:
            try:
                ftp.quit()
            except (*_NETWORK_ERRORS, ftplib.Error):
                ftp.close()

    def _remote(self, relative: str) -> str:
        return _remote_path(self.remote_root, relative)
