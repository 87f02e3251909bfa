"""A small DICOM archive for the demo: C-FIND, C-MOVE and C-GET over a folder of files.

It stands in for the hospital VNA on a newcomer's laptop, where Orthanc may not be installed.
The tests use Orthanc itself; this serves the same Study Root queries at study, series and image
level, from an index built once from the files' headers (pixels are never read for the index).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from voxl_assets.dicom_constants import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE

log = logging.getLogger(__name__)

FIND_FIELDS = (
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


@dataclass
class IndexedInstance:
    path: Path
    patient_id: str
    accession_number: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str


@dataclass
class DemoArchive:
    """An index of the DICOM files under ``folder``."""

    folder: Path
    instances: list[IndexedInstance] = field(default_factory=list)

    def reindex(self) -> None:
        indexed = []
        for path in sorted(self.folder.rglob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True)
            indexed.append(
                IndexedInstance(
                    path=path,
                    patient_id=str(ds.get("PatientID", "")),
                    accession_number=str(ds.get("AccessionNumber", "")),
                    study_uid=str(ds.StudyInstanceUID),
                    series_uid=str(ds.SeriesInstanceUID),
                    sop_uid=str(ds.SOPInstanceUID),
                    modality=str(ds.get("Modality", "")),
                )
            )
        self.instances = indexed

    def matching(self, query: Dataset) -> list[IndexedInstance]:
        """Instances whose identifiers match every non-empty key in ``query``: equal to a single
        value, or one of a UID list (a retrieval naming several instances, PS3.4 C.4.2.2.1)."""
        wanted: dict[str, set[str]] = {}
        for name in FIND_FIELDS:
            value = query.get(name, "")
            values = list(value) if isinstance(value, MultiValue | list) else [value]
            texts = {str(v) for v in values if v not in (None, "")}
            if texts:
                wanted[name] = texts
        attribute = {
            "PatientID": "patient_id",
            "AccessionNumber": "accession_number",
            "StudyInstanceUID": "study_uid",
            "SeriesInstanceUID": "series_uid",
            "SOPInstanceUID": "sop_uid",
        }
        return [
            instance
            for instance in self.instances
            if all(getattr(instance, attribute[name]) in texts for name, texts in wanted.items())
        ]


def _level(query: Dataset) -> str:
    return str(query.get("QueryRetrieveLevel", "STUDY")).upper()


def _group_key(instance: IndexedInstance, level: str) -> str:
    return {"STUDY": instance.study_uid, "SERIES": instance.series_uid}.get(level, instance.sop_uid)


class DemoVna:
    """Serve ``archive`` on ``host:port`` as AE ``ae_title``; ``move_destinations`` maps AE titles
    to (host, port) for C-MOVE."""

    def __init__(
        self,
        folder: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        ae_title: str = "DEMOVNA",
        move_destinations: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.archive = DemoArchive(folder)
        self.archive.reindex()
        self.host, self.port, self.ae_title = host, port, ae_title
        self.move_destinations = dict(move_destinations or {})
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    # -- handlers -------------------------------------------------------------------------------

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self._count()
        query: Dataset = event.identifier
        level = _level(query)
        groups: dict[str, list[IndexedInstance]] = {}
        for instance in self.archive.matching(query):
            groups.setdefault(_group_key(instance, level), []).append(instance)
        for members in groups.values():
            first = members[0]
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            answer.PatientID = first.patient_id
            answer.AccessionNumber = first.accession_number
            answer.StudyInstanceUID = first.study_uid
            answer.ModalitiesInStudy = sorted({m.modality for m in members})
            if level == "STUDY":
                answer.NumberOfStudyRelatedInstances = len(members)
                answer.NumberOfStudyRelatedSeries = len({m.series_uid for m in members})
            if level in ("SERIES", "IMAGE"):
                answer.SeriesInstanceUID = first.series_uid
                answer.Modality = first.modality
                answer.NumberOfSeriesRelatedInstances = len(members)
            if level == "IMAGE":
                answer.SOPInstanceUID = first.sop_uid
            yield 0xFF00, answer

    def _on_move(self, event: Any) -> Iterator[Any]:
        self._count()
        raw = event.move_destination
        title = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
        destination = self.move_destinations.get(title)
        if destination is None:
            yield None, None  # unknown move destination: pynetdicom answers 0xA801
            return
        yield destination
        matches = self.archive.matching(event.identifier)
        yield len(matches)
        for instance in matches:
            yield 0xFF00, dcmread(instance.path)

    def _on_get(self, event: Any) -> Iterator[Any]:
        self._count()
        matches = self.archive.matching(event.identifier)
        yield len(matches)
        for instance in matches:
            yield 0xFF00, dcmread(instance.path)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(STUDY_ROOT_FIND)
        ae.add_supported_context(STUDY_ROOT_MOVE)
        ae.add_supported_context(STUDY_ROOT_GET)
        for context in StoragePresentationContexts:
            if context.abstract_syntax:  # for C-MOVE sub-associations
                ae.add_requested_context(context.abstract_syntax)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax:
                ae.add_supported_context(context.abstract_syntax, scp_role=True, scu_role=False)
        ae.maximum_pdu_size = 0
        handlers: list[Any] = [
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        log.info("demo VNA %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> DemoVna:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
