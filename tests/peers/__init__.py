"""Real peers for integration tests: Orthanc, sshd, Azurite, FTPS, PostgreSQL.

A test that needs a peer which is absent is skipped with the reason on a developer's machine and
fails under ``CI=true``, so a green CI run means the peers really ran.
"""

from __future__ import annotations

import os
import socket

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def peer_missing(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because a real peer is not available."""
    if in_ci():
        pytest.fail(f"peer required in CI but missing: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A free TCP port on loopback (best effort; the peer binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> bool:
    """Wait until something accepts TCP connections on ``host:port``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
