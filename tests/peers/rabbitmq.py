"""The machine's RabbitMQ (127.0.0.1:5672, guest/guest), with a throwaway virtual host per test so
queues of concurrent tests never meet."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.peers import peer_missing, wait_for_port

RABBITMQ_HOST = os.environ.get("VOXL_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("VOXL_TEST_RABBITMQ_PORT", "5672"))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def rabbitmq_broker() -> Iterator[str]:
    """An AMQP URL of a fresh virtual host (guest may use it), deleted after the test."""
    if not wait_for_port(RABBITMQ_PORT, 2, RABBITMQ_HOST):
        peer_missing(f"RabbitMQ not reachable at {RABBITMQ_HOST}:{RABBITMQ_PORT}")
    if shutil.which("rabbitmqctl") is None:
        peer_missing("rabbitmqctl not installed (apt-get install rabbitmq-server)")
    vhost = f"voxl-test-{uuid.uuid4().hex[:10]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        peer_missing(f"rabbitmqctl could not add a virtual host: {exc}")
    try:
        yield f"pyamqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
