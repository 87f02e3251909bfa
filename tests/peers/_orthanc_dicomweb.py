"""A throwaway Orthanc with the DICOMweb plugin, as a STOW-RS destination for the upload tests.

Self-contained (config and storage in a temporary folder, loopback free ports). With ``users`` it
requires HTTP basic authentication (``AuthenticationEnabled`` with ``RegisteredUsers``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.peers import free_port, peer_missing, wait_for_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class DicomWebOrthanc:
    def __init__(self, root: Path, users: dict[str, str] | None) -> None:
        self.root = root
        self.users = users or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def dicomweb_url_via(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/dicom-web"

    def start(self) -> None:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "voxl-upload-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        if not wait_for_port(self.port, 30):
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {self.root / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                # Throwaway storage: don't wait for Orthanc's slow graceful shutdown.
                self.process.wait(1)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", auth=self._auth(), timeout=30)
        response.raise_for_status()
        return response.json()

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def clear(self) -> None:
        for study in self.get("/studies"):
            requests.delete(
                f"{self.url}/studies/{study}", auth=self._auth(), timeout=30
            ).raise_for_status()


@contextmanager
def dicomweb_orthanc(root: Path, users: dict[str, str] | None = None) -> Iterator[DicomWebOrthanc]:
    if not Path(ORTHANC).exists():
        peer_missing("Orthanc not installed (apt-get install orthanc)")
    if not DICOMWEB_PLUGIN.exists():
        peer_missing("Orthanc DICOMweb plugin not installed (apt-get install orthanc-dicomweb)")
    server = DicomWebOrthanc(root, users)
    server.start()
    try:
        yield server
    finally:
        server.stop()
