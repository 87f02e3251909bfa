"""Azurite (npm azurite) for Azure Blob Storage, on a loopback free port."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import free_port, peer_missing, wait_for_port

# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class AzuriteServer:
    port: int
    process: subprocess.Popen[bytes]

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[AzuriteServer]:
    binary = shutil.which("azurite-blob")
    if binary is None:
        peer_missing("Azurite not installed (npm install -g azurite)")
        return
    port = free_port()
    log = tmp_path / "azurite.log"
    process = subprocess.Popen(
        [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--silent",
            "--skipApiVersionCheck",
            "--inMemoryPersistence",  # nothing on disk to clean up (excludes --location)
            "--loose",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,  # Azurite writes its small metadata files into the working directory
    )
    deadline = time.monotonic() + 30
    while not wait_for_port(port, 0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Azurite did not start: {log.read_text()[-500:]}")
    server = AzuriteServer(port, process)
    yield server
    server.stop()
