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
import threading
import time
from pathlib import Path

from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.local import partial_name
from voxl_assets.upload.remote_files import RemoteFileUploader
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY
from voxl_assets.upload.zipping import StudyZipSource, stream_source

# Errors of the connection itself (peer gone, reset, timeout, TLS record cut): worth a retry.
_NETWORK_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)

# An idle session is used again within this many seconds, else closed (servers drop idle ones;
# vsftpd's default idle timeout is 300 s, many hosted servers use 60 s).
IDLE_SECONDS = 30.0


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
        # Sessions between uploads, newest last; one per worker thread at most in use.
        self.idle_seconds = IDLE_SECONDS
        self._idle: list[tuple[float, ftplib.FTP_TLS]] = []
        self._idle_lock = threading.Lock()

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

    @staticmethod
    def _end(ftp: ftplib.FTP_TLS) -> None:
        """Log out politely; a session already dead is just closed."""
        try:
            ftp.quit()
        except (*_NETWORK_ERRORS, ftplib.Error):
            ftp.close()

    def _checkout(self) -> tuple[ftplib.FTP_TLS, bool]:
        """A session for one upload: an idle one of this uploader's (True) or a new one."""
        with self._idle_lock:
            while self._idle:
                parked, ftp = self._idle.pop()
                if time.monotonic() - parked < self.idle_seconds:
                    return ftp, True
                self._end(ftp)
        return self._connect(), False

    def _checkin(self, ftp: ftplib.FTP_TLS) -> None:
        with self._idle_lock:
            self._idle.append((time.monotonic(), ftp))

    def close(self) -> None:
        """End the idle sessions (a run's uploads are over)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for _, ftp in idle:
            self._end(ftp)

    def _put(self, source: Path | StudyZipSource, remote: str) -> int:
        """One attempt: upload under the partial name, check its size, rename; returns bytes.

        Sessions are kept for the next upload (a new one costs a TCP connection, two TLS
        handshakes' worth of round trips and a login). A kept session the server has since
        dropped fails at once; the upload then runs on a new session without counting as a
        failed attempt."""
        ftp, reused = self._checkout()
        try:
            sent = self._put_on(ftp, source, remote)
        except TransientUploadError:
            ftp.close()
            if not reused:
                raise
            ftp = self._connect()
            try:
                sent = self._put_on(ftp, source, remote)
            except BaseException:
                self._end(ftp)
                raise
        except BaseException:
            self._end(ftp)
            raise
        self._checkin(ftp)
        return sent

    def _put_on(self, ftp: ftplib.FTP_TLS, source: Path | StudyZipSource, remote: str) -> int:
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

    def _remote(self, relative: str) -> str:
        return _remote_path(self.remote_root, relative)
