"""VNA clients: DIMSE (C-FIND, then C-GET or C-MOVE to VOXL's own Storage SCP) and DICOMweb
(QIDO-RS, then WADO-RS). Both search in two steps: by StudyInstanceUID, then, when that finds
nothing (emergency imaging registered under another UID), by PatientID (MRN) + AccessionNumber.

Instances are streamed to disk one at a time; a study is never held in memory. Messages and
exceptions name outcomes and counts, never the identifiers searched for.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.transport import AssociationSocket

from voxl_assets.dicom_constants import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from voxl_assets.imaging.pipeline import StudyFailure
from voxl_assets.retry import TokenBucket, TransientError

log = logging.getLogger(__name__)

ALL_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1.99",
]


STORAGE_CLASSES = [c.abstract_syntax for c in StoragePresentationContexts if c.abstract_syntax]


def _enable_tcp_nodelay() -> None:
    """DIMSE sends many small PDUs; Nagle's algorithm would hold each one back (pynetdicom does
    not set TCP_NODELAY itself)."""
    if getattr(AssociationSocket, "_voxl_nodelay", False):
        return
    original = AssociationSocket._create_socket

    def create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]
    AssociationSocket._voxl_nodelay = True  # type: ignore[attr-defined]


_enable_tcp_nodelay()


class StudyNotFound(StudyFailure):
    pass


class AmbiguousStudy(StudyFailure):
    pass


class PartialRetrieval(TransientError):
    """Fewer instances arrived than the archive reported: retried, then a failure."""


class VnaUnavailable(TransientError):
    pass


@dataclass(frozen=True)
class VnaSettings:
    kind: Literal["dimse", "dicomweb"] = "dimse"
    host: str = "127.0.0.1"
    port: int = 4242
    ae_title: str = "VNA"
    calling_ae_title: str = "VOXL"
    retrieve: Literal["c-get", "c-move"] = "c-get"
    move_destination_ae: str = "VOXL"
    store_scp_port: int = 0  # VOXL's Storage SCP for C-MOVE (0: chosen by the system)
    dicomweb_url: str = ""
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 120.0
    queries_per_second: float = 5.0


@dataclass(frozen=True)
class StudyQuery:
    """What to look for. Holds identifiers: never log it."""

    study_uid: str
    mrn: str
    accession_number: str
    series_uid: str = ""

    def __repr__(self) -> str:
        return "StudyQuery(<identifiers hidden>)"


@dataclass(frozen=True)
class StudyLocation:
    study_uid: str
    instances: int | None
    found_by: Literal["study_uid", "mrn_accession"]
    series_uid: str = ""

    def __repr__(self) -> str:
        return f"StudyLocation(found_by={self.found_by}, instances={self.instances})"


class VnaClient(Protocol):
    def find_study(self, query: StudyQuery) -> StudyLocation: ...

    def retrieve(self, location: StudyLocation, staging: Path) -> int: ...

    def close(self) -> None: ...


def _unique(matches: list[StudyLocation], how: str) -> StudyLocation | None:
    uids = {m.study_uid for m in matches}
    if len(uids) > 1:
        raise AmbiguousStudy(f"{len(uids)} studies on the VNA match by {how}: not retrieved")
    return matches[0] if matches else None


class InstanceWriter:
    """Writes received instances as DICOM files, straight from the encoded bytes (no decoding)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def write(self, file_meta: Dataset, encoded_dataset: bytes) -> None:
        with self._lock:
            number = next(self._numbers)
        path = self.directory / f"{number:06d}.dcm"
        with path.open("wb") as out:
            out.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(out, file_meta, enforce_standard=True)  # type: ignore[arg-type]
            out.write(encoded_dataset)
        with self._lock:
            self.count += 1

    def handle_store(self, event: Any) -> int:
        try:
            self.write(event.file_meta, event.request.DataSet.getvalue())
        except OSError:
            log.exception("could not write a received instance to the cache")
            return 0xA700  # out of resources
        return 0x0000


class DimseVna:
    def __init__(self, settings: VnaSettings) -> None:
        self.settings = settings
        self._bucket = TokenBucket(settings.queries_per_second)
        self._move_routes: dict[str, InstanceWriter] = {}
        self._scp: Any = None
        self._scp_lock = threading.Lock()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.maximum_pdu_size = 0
        return ae

    def _associate(self, ae: AE, **kwargs: Any) -> Any:
        self._bucket.acquire()
        s = self.settings
        try:
            assoc = ae.associate(s.host, s.port, ae_title=s.ae_title, **kwargs)
        except (OSError, RuntimeError) as exc:
            raise VnaUnavailable(
                f"VNA {s.host}:{s.port} unreachable ({type(exc).__name__})"
            ) from None
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted or unreachable"
            raise VnaUnavailable(f"association with the VNA {s.host}:{s.port} {reason}")
        return assoc

    # --- find ------------------------------------------------------------------------------

    def _find(
        self, identifier: Dataset, found_by: Literal["study_uid", "mrn_accession"]
    ) -> list[StudyLocation]:
        ae = self._ae()
        ae.add_requested_context(STUDY_ROOT_FIND)
        assoc = self._associate(ae)
        matches: list[StudyLocation] = []
        try:
            for status, answer in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
                if status is None:
                    raise VnaUnavailable("the VNA stopped answering during C-FIND")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and answer is not None:
                    count = answer.get("NumberOfStudyRelatedInstances")
                    matches.append(
                        StudyLocation(
                            str(answer.StudyInstanceUID),
                            int(count) if count not in (None, "") else None,
                            found_by,
                        )
                    )
                elif code not in (0x0000,):
                    raise StudyFailure(f"the VNA refused the C-FIND (status 0x{code:04X})")
        finally:
            assoc.release()
        return matches

    def find_study(self, query: StudyQuery) -> StudyLocation:
        if query.study_uid:
            by_uid = _unique(
                self._find(_study_query(study_uid=query.study_uid), "study_uid"), "study UID"
            )
            if by_uid is not None:
                return _with_series(by_uid, query)
        if query.mrn and query.accession_number:
            identifier = _study_query(mrn=query.mrn, accession=query.accession_number)
            by_ids = _unique(self._find(identifier, "mrn_accession"), "MRN + accession")
            if by_ids is not None:
                return _with_series(by_ids, query)
        raise StudyNotFound("study not found on the VNA by study UID nor by MRN + accession")

    # --- retrieve --------------------------------------------------------------------------

    def retrieve(self, location: StudyLocation, staging: Path) -> int:
        writer = InstanceWriter(staging)
        identifier = _retrieve_identifier(location)
        if self.settings.retrieve == "c-move":
            self._move(identifier, writer)
        else:
            self._get(identifier, writer)
        if (
            location.instances is not None
            and not location.series_uid
            and writer.count < location.instances
        ):
            raise PartialRetrieval(
                f"partial retrieval: {writer.count} of {location.instances} instances arrived"
            )
        if writer.count == 0:
            raise PartialRetrieval("the VNA sent no instance for a study it had found")
        return writer.count

    def _get(self, identifier: Dataset, writer: InstanceWriter) -> None:
        ae = self._ae()
        ae.add_requested_context(STUDY_ROOT_GET)
        roles = []
        for sop_class in STORAGE_CLASSES[:127]:  # 128 contexts at most, one is C-GET's
            ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
            roles.append(build_role(sop_class, scp_role=True))
        handlers = [(evt.EVT_C_STORE, writer.handle_store)]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=handlers)
        try:
            self._check_statuses(assoc.send_c_get(identifier, STUDY_ROOT_GET), "C-GET")
        finally:
            assoc.release()

    def _ensure_scp(self) -> None:
        with self._scp_lock:
            if self._scp is not None:
                return
            ae = AE(ae_title=self.settings.move_destination_ae)
            ae.maximum_pdu_size = 0
            ae.network_timeout = self.settings.network_timeout
            for sop_class in STORAGE_CLASSES:
                ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
            self._scp = ae.start_server(
                ("0.0.0.0", self.settings.store_scp_port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._route_store)],
            )
            self._scp.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _route_store(self, event: Any) -> int:
        # Route by the study the instance belongs to (decoding only that element).
        study_uid = str(event.dataset.get("StudyInstanceUID", ""))
        meta, raw = event.file_meta, event.request.DataSet.getvalue()
        writer = self._move_routes.get(study_uid)
        if writer is None:
            log.warning("C-MOVE instance for a study no retrieval is waiting for: refused")
            return 0xA801
        writer.write(meta, raw)
        return 0x0000

    @property
    def store_scp_port(self) -> int:
        self._ensure_scp()
        return int(self._scp.server_address[1])

    def _move(self, identifier: Dataset, writer: InstanceWriter) -> None:
        self._ensure_scp()
        study_uid = str(identifier.StudyInstanceUID)
        self._move_routes[study_uid] = writer
        ae = self._ae()
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = self._associate(ae)
        try:
            responses = assoc.send_c_move(
                identifier, self.settings.move_destination_ae, STUDY_ROOT_MOVE
            )
            self._check_statuses(responses, "C-MOVE")
        finally:
            assoc.release()
            self._move_routes.pop(study_uid, None)

    @staticmethod
    def _check_statuses(responses: Iterator[tuple[Any, Any]], what: str) -> None:
        for status, _ in responses:
            if status is None:
                raise VnaUnavailable(f"the VNA stopped answering during {what}")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01, 0x0000, 0xB000):
                continue
            if code == 0xA801:
                raise StudyFailure(
                    f"{what} refused: the VNA does not know VOXL's move destination AE title"
                )
            raise VnaUnavailable(f"{what} failed with status 0x{code:04X}")

    def close(self) -> None:
        with self._scp_lock:
            if self._scp is not None:
                self._scp.shutdown()
                self._scp = None


def _study_query(study_uid: str = "", mrn: str = "", accession: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    ds.PatientID = mrn
    ds.AccessionNumber = accession
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def _with_series(location: StudyLocation, query: StudyQuery) -> StudyLocation:
    if not query.series_uid:
        return location
    return StudyLocation(location.study_uid, None, location.found_by, query.series_uid)


def _retrieve_identifier(location: StudyLocation) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = location.study_uid
    if location.series_uid:
        ds.QueryRetrieveLevel = "SERIES"
        ds.SeriesInstanceUID = location.series_uid
    else:
        ds.QueryRetrieveLevel = "STUDY"
    return ds


class DicomWebVna:
    """QIDO-RS search and WADO-RS retrieval with dicomweb-client, instance by instance."""

    def __init__(self, settings: VnaSettings, session: Any = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        self._bucket = TokenBucket(settings.queries_per_second)
        self._client = DICOMwebClient(url=settings.dicomweb_url, session=session)

    def _search(
        self, filters: dict[str, str], found_by: Literal["study_uid", "mrn_accession"]
    ) -> list[StudyLocation]:
        import requests

        self._bucket.acquire()
        try:
            answers = self._client.search_for_studies(
                search_filters=filters, fields=["NumberOfStudyRelatedInstances"]
            )
        except requests.RequestException as exc:
            raise VnaUnavailable(f"DICOMweb VNA unreachable ({type(exc).__name__})") from None
        matches = []
        for answer in answers:
            ds = Dataset.from_json(answer)
            count = ds.get("NumberOfStudyRelatedInstances")
            matches.append(
                StudyLocation(
                    str(ds.StudyInstanceUID),
                    int(count) if count not in (None, "") else None,
                    found_by,
                )
            )
        return matches

    def find_study(self, query: StudyQuery) -> StudyLocation:
        if query.study_uid:
            found = _unique(
                self._search({"StudyInstanceUID": query.study_uid}, "study_uid"), "study UID"
            )
            if found is not None:
                return _with_series(found, query)
        if query.mrn and query.accession_number:
            filters = {"PatientID": query.mrn, "AccessionNumber": query.accession_number}
            found = _unique(self._search(filters, "mrn_accession"), "MRN + accession")
            if found is not None:
                return _with_series(found, query)
        raise StudyNotFound("study not found on the VNA by study UID nor by MRN + accession")

    def retrieve(self, location: StudyLocation, staging: Path) -> int:
        import requests
        from pydicom.filewriter import dcmwrite

        self._bucket.acquire()
        count = 0
        try:
            if location.series_uid:
                instances = self._client.iter_series(location.study_uid, location.series_uid)
            else:
                instances = self._client.iter_study(location.study_uid)
            for ds in instances:
                count += 1
                dcmwrite(staging / f"{count:06d}.dcm", ds, enforce_file_format=True)
        except requests.RequestException as exc:
            raise VnaUnavailable(f"DICOMweb retrieval interrupted ({type(exc).__name__})") from None
        if (
            location.instances is not None
            and not location.series_uid
            and count < location.instances
        ):
            raise PartialRetrieval(
                f"partial retrieval: {count} of {location.instances} instances arrived"
            )
        return count

    def close(self) -> None:
        pass


def make_vna_client(settings: VnaSettings) -> DimseVna | DicomWebVna:
    if settings.kind == "dicomweb":
        if not settings.dicomweb_url:
            raise ValueError("VNA kind dicomweb needs dicomweb_url (VOXL_VNA_DICOMWEB_URL)")
        return DicomWebVna(settings)
    return DimseVna(settings)
