"""Orthanc (Debian package) on loopback with a throwaway configuration and storage.

Used as the hospital VNA (DIMSE C-FIND/C-GET/C-MOVE, DICOMweb QIDO/WADO) and as a DICOMweb
destination (STOW-RS). A session-wide instance is shared; tests clear it when they need to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.peers import free_port, peer_missing, wait_for_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
VOXL_AE = "VOXL"


class OrthancServer:
    def __init__(
        self,
        root: Path,
        *,
        ae_title: str = "ORTHANC",
        users: dict[str, str] | None = None,
        extra_config: dict[str, Any] | None = None,
        count_deliveries: bool = False,
        count_queries: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_config = extra_config or {}
        self.env = env  # added to Orthanc's environment (TCP_NODELAY=1: Nagle's algorithm off)
        self.count_deliveries = count_deliveries
        self.count_queries = count_queries
        self.root = root
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.move_scp_port = free_port()  # where VOXL's Storage SCP listens for C-MOVE
        self.users = users or {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def deliveries_log(self) -> Path:
        return self.root / "deliveries.log"

    def deliveries(self) -> Counter[str]:
        """How often Orthanc received each SOP Instance UID (re-sent copies included: Orthanc
        keeps one instance per UID, so its own instance count cannot show a duplicate send)."""
        if not self.deliveries_log.exists():
            return Counter()
        return Counter(self.deliveries_log.read_text().split())

    @property
    def queries_log(self) -> Path:
        return self.root / "queries.log"

    def query_seconds(self) -> list[int]:
        """The second (Unix time) of each C-FIND Orthanc answered: the archive's own count."""
        if not self.queries_log.exists():
            return []
        return [int(line) for line in self.queries_log.read_text().split()]

    def _lua_scripts(self) -> list[str]:
        scripts = []
        if self.count_queries:
            counter = self.root / "count-queries.lua"
            counter.write_text(
                "function IncomingFindRequestFilter(query, origin)\n"
                f"  local log = io.open({json.dumps(str(self.queries_log))}, 'a')\n"
                "  log:write(os.time() .. '\\n')\n"
                "  log:close()\n"
                "  return query\n"
                "end\n"
            )
            scripts.append(str(counter))
        if not self.count_deliveries:
            return scripts
        script = self.root / "count-deliveries.lua"
        # Orthanc calls ReceivedInstanceFilter for every instance it receives, stored or not.
        script.write_text(
            "function ReceivedInstanceFilter(dicom, origin, info)\n"
            f"  local log = io.open({json.dumps(str(self.deliveries_log))}, 'a')\n"
            "  log:write(dicom['SOPInstanceUID'] .. '\\n')\n"
            "  log:close()\n"
            "  return true\n"
            "end\n"
        )
        return [*scripts, str(script)]

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "voxl-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAeTitle": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                "voxl": {"AET": VOXL_AE, "Host": "127.0.0.1", "Port": self.move_scp_port}
            },
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "MainDicomTags"},
            "SaveJobs": False,
            "ConcurrentJobs": 4,
            "StableAge": 1,
            "LimitFindResults": 0,
            "HttpTimeout": 60,
            "LuaScripts": self._lua_scripts(),
            **self.extra_config,
        }

    def start(self) -> None:
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self._config()))
        log = (self.root / "orthanc.log").open("wb")
        self._process = subprocess.Popen(
            [ORTHANC, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env} if self.env else None,
        )
        if not wait_for_port(self.http_port, 30) or not wait_for_port(self.dicom_port, 30):
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {self.root / 'orthanc.log'}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def upload(self, path: Path) -> None:
        response = requests.post(
            f"{self.url}/instances", data=path.read_bytes(), auth=self._auth(), timeout=30
        )
        response.raise_for_status()

    def upload_folder(self, folder: Path) -> int:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            self.upload(path)
        return len(files)

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", auth=self._auth(), timeout=30)
        response.raise_for_status()
        return response.json()

    def study_uids(self) -> set[str]:
        return {
            self.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"]
            for s in self.get("/studies")
        }

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def clear(self) -> None:
        self.deliveries_log.unlink(missing_ok=True)
        for study in self.get("/studies"):
            requests.delete(
                f"{self.url}/studies/{study}", auth=self._auth(), timeout=30
            ).raise_for_status()


def start_orthanc(**kwargs: Any) -> Iterator[OrthancServer]:
    if not Path(ORTHANC).exists():
        peer_missing("Orthanc not installed (apt-get install orthanc orthanc-dicomweb)")
    if not DICOMWEB_PLUGIN.exists():
        peer_missing("Orthanc DICOMweb plugin not installed (apt-get install orthanc-dicomweb)")
    root = Path(tempfile.mkdtemp(prefix="voxl-orthanc-"))
    server = OrthancServer(root, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def orthanc_session() -> Iterator[OrthancServer]:
    yield from start_orthanc()


@pytest.fixture
def orthanc(orthanc_session: OrthancServer) -> Iterator[OrthancServer]:
    """The shared Orthanc, emptied before the test (restarted if a test stopped it)."""
    if not orthanc_session.running:
        orthanc_session.start()
    orthanc_session.clear()
    deadline = time.monotonic() + 5
    while orthanc_session.instance_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield orthanc_session
