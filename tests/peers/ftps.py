"""An FTPS server (pyftpdlib, explicit TLS required on control and data) with a throwaway
certificate, and a plain-FTP server to prove VOXL refuses it."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.peers import free_port, wait_for_port


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate + key for 127.0.0.1 in one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / "server.pem"
    path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass
class FtpServer:
    host: str
    port: int
    username: str
    password: str
    root: Path
    certificate: Path | None
    server: object
    serving: threading.Thread
    # With drop_uploads: one entry per cut upload, what the home held at that moment.
    drops: list[list[str]] = field(default_factory=list)
    # Every upload the server completed (STOR), as paths under the home, in order: the server's
    # own count, which shows a file sent twice even when the second copy replaced the first.
    received: list[str] = field(default_factory=list)
    # Sessions as the server saw them: one entry per successful login, one per logout (a QUIT;
    # a dropped connection logs nobody out), and the control connections' handlers. A login is
    # counted before the client's next command runs, a logout before the client sees its reply.
    logins: list[str] = field(default_factory=list)
    logouts: list[str] = field(default_factory=list)
    sessions: list[Any] = field(default_factory=list)

    def drop_sessions(self) -> int:
        """Cut every open control connection at the server (as a restart or an idle timeout
        would), from outside its thread: the socket is shut down, the server's own loop then
        sees the end and closes it. Returns how many were cut."""
        dropped = 0
        for handler in list(self.sessions):
            if handler._closed or handler._closing:
                continue
            with contextlib.suppress(OSError, AttributeError):
                duplicate = socket.socket(fileno=os.dup(handler.socket.fileno()))
                try:
                    duplicate.shutdown(socket.SHUT_RDWR)
                finally:
                    duplicate.close()
                dropped += 1
        return dropped

    def stop(self) -> None:
        self.server.close_all()  # type: ignore[attr-defined]
        # serve_forever() ends with a close_all() of its own once its poll times out: wait for
        # it, so nothing of this server still runs when the next test starts one.
        self.serving.join(timeout=10)


def _dropping_dtp(base: Any, after_bytes: int, budget: list[int], on_drop: Any) -> type:
    """A data-channel handler that resets the first ``budget[0]`` uploads (data and control
    connections, no reply) once ``after_bytes`` arrived: a server or network dying mid-STOR."""

    def handle_read_event(self: Any) -> None:
        base.handle_read_event(self)  # TLS-aware: handshake, shutdown, else read data
        if self.receive and budget[0] > 0 and self.tot_bytes_received >= after_bytes:
            budget[0] -= 1
            on_drop()
            for channel in (self, self.cmd_channel):
                with contextlib.suppress(OSError):
                    channel.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                channel.close()

    return type("DroppingDTP", (base,), {"handle_read_event": handle_read_event})


def _own_exit_server_class() -> type:
    """pyftpdlib's ThreadedFTPServer keeps its stop flag (``_exit``, a threading.Event) and lock
    on the class, so every server in the process shares them: stopping one server (or the late
    close_all() its serve_forever() runs on the way out) stops the connection threads of every
    other one, which then close their control connections unread (the client sees a reset).
    This subclass gives each server its own."""
    from pyftpdlib.servers import ThreadedFTPServer

    class OwnExitThreadedFTPServer(ThreadedFTPServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._exit = threading.Event()
            self._lock = threading.Lock()
            super().__init__(*args, **kwargs)

    return OwnExitThreadedFTPServer


def start_ftp(
    root: Path, *, tls: bool, drop_uploads: int = 0, drop_after: int = 64 * 1024
) -> FtpServer:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop

    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user("voxl", "s3cret-ftps", str(home), perm="elradfmwMT")
    certificate = None
    if tls:
        certificate = make_certificate(root)
        handler: Any = type("Handler", (TLS_FTPHandler,), {})
        handler.certfile = str(certificate)
        handler.tls_control_required = True
        handler.tls_data_required = True
    else:
        handler = type("Handler", (FTPHandler,), {})
    handler.authorizer = authorizer
    received: list[str] = []

    def on_file_received(self: Any, file: str) -> None:
        received.append(Path(file).relative_to(home).as_posix())

    handler.on_file_received = on_file_received
    logins: list[str] = []
    logouts: list[str] = []
    sessions: list[Any] = []
    handler.on_connect = lambda self: sessions.append(self)
    handler.on_login = lambda self, username: logins.append(username)
    base_quit = handler.ftp_QUIT

    def ftp_quit(self: Any, line: str) -> None:
        # Counted before the reply: the client may check the count as soon as it has it.
        if self.authenticated and self.username:
            logouts.append(self.username)
        base_quit(self, line)

    handler.ftp_QUIT = ftp_quit
    handler.auth_failed_timeout = 0.1  # default 3 s delay per wrong password slows the tests
    drops: list[list[str]] = []
    if drop_uploads:
        handler.dtp_handler = _dropping_dtp(
            handler.dtp_handler,
            drop_after,
            [drop_uploads],
            lambda: drops.append(sorted(p.name for p in home.rglob("*") if p.is_file())),
        )
    port = free_port()
    # Each server gets its own IO loop: pyftpdlib's default loop is a process-wide singleton.
    server = _own_exit_server_class()(("127.0.0.1", port), handler, ioloop=IOLoop())
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"timeout": 0.2}, name="ftpd-serve", daemon=True
    )
    serving.start()
    wait_for_port(port)
    return FtpServer(
        "127.0.0.1",
        port,
        "voxl",
        "s3cret-ftps",
        home,
        certificate,
        server,
        serving,
        drops,
        received,
        logins,
        logouts,
        sessions,
    )


@pytest.fixture(scope="module")
def ftps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    """One server per test module; tests that change its behaviour start their own."""
    server = start_ftp(tmp_path_factory.mktemp("ftps"), tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    server = start_ftp(tmp_path_factory.mktemp("ftp"), tls=False)
    yield server
    server.stop()
