"""VNA clients: DIMSE (C-FIND, then C-GET or C-MOVE to VOXL's own Storage SCP) and DICOMweb
(QIDO-RS, then WADO-RS). Both search in two steps: by StudyInstanceUID, then, when that finds
nothing (emergency imaging registered under another UID), by PatientID (MRN) + AccessionNumber.

Instances are streamed to disk one at a time; a study is never held in memory. Messages and
exceptions name outcomes and counts, never the identifiers searched for.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import select
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from voxl_assets.dicom_constants import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from voxl_assets.outcomes import StudyFailure
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


STUDY_INSTANCE_UID = 0x0020000D
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

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _acknowledge_promptly() -> None:
    """Acknowledge what the archive sends at once (TCP_QUICKACK, set again after every send and
    receive: the kernel drops it whenever it sees a request-response exchange).

    An archive that leaves Nagle's algorithm on (DCMTK-based ones unless started with
    TCP_NODELAY=1, Orthanc among them) holds the second PDU of a response until the first is
    acknowledged, and Linux delays that acknowledgement up to 40 ms: measured against such an
    Orthanc, a C-FIND took 44 ms instead of 2.7 and a three-instance C-GET 89 instead of 5.
    """
    if _TCP_QUICKACK is None or getattr(AssociationSocket, "_voxl_quickack", False):
        return
    send, recv = AssociationSocket.send, AssociationSocket.recv

    def quickack(sock: socket.socket | None) -> None:
        if sock is not None:
            with suppress(OSError):  # closed meanwhile: the reactor finds out itself
                sock.setsockopt(socket.IPPROTO_TCP, cast(int, _TCP_QUICKACK), 1)

    def send_then_ack(self: AssociationSocket, bytestream: bytes) -> None:
        send(self, bytestream)
        quickack(self.socket)

    def recv_then_ack(self: AssociationSocket, nr_bytes: int) -> bytearray:
        data = recv(self, nr_bytes)
        quickack(self.socket)
        return data

    AssociationSocket.send = send_then_ack  # type: ignore[method-assign]
    AssociationSocket.recv = recv_then_ack  # type: ignore[method-assign]
    AssociationSocket._voxl_quickack = True  # type: ignore[attr-defined]


_acknowledge_promptly()

# pynetdicom's DUL thread sleeps this long whenever the socket has nothing to read; at its default
# (1 ms) every instance of a retrieval waits about a millisecond before its C-STORE response goes
# out, which halves throughput on a fast network. VOXL sets this value on its associations' DULs as
# a mark: a DUL reactor's sleep of exactly it is a wait in select() on the socket (see _dul_wait),
# woken at once by incoming data, by what the user side queues to send (a wake-up socket pair),
# and at the latest after DUL_IDLE_WAIT_SECONDS for its timers. (A fast poll, 50 us while data had
# flowed in the last 5 ms, cost small studies 10-20% more CPU, the reactor threads taking the GIL
# thousands of times a second, and was no faster on a 500-instance study.)
DUL_POLL_SECONDS = 0.00005
DUL_IDLE_WAIT_SECONDS = 0.05


def _wait_in_select(assoc: Any) -> None:
    assoc.dul._run_loop_delay = DUL_POLL_SECONDS


def _wait_in_select_on_open(event: Any) -> None:
    _wait_in_select(event.assoc)


def _store_to_current_writer(event: Any) -> int:
    """C-STORE on a C-GET association: to the writer of the retrieval under way on it."""
    writer = getattr(event.assoc, "_voxl_writer", None)
    if writer is None:  # nothing asked for this instance on this association
        return STATUS_NOT_AUTHORISED
    return int(writer.handle_store(event))


class _ReactorCheckpoint:
    """pynetdicom's reactor checkpoint (a ``threading.Event`` there) that also knows whether the
    reactor is parked at it.

    pynetdicom pauses an association's reactor before each request with ``clear()`` and then waits
    for ``_is_paused``, which its reactor sets just before ``wait()`` and resets only after the wait
    returns. A reactor woken by the last ``set()`` but not yet run (the GIL decides when) still
    reads as paused, so the request goes out while the reactor is about to take a message off the
    DIMSE queue: the request's first answer, which its caller then never sees (a C-FIND that finds
    nothing, one study in 70 on a reused association). Here the reactor is paused only while it
    waits with the checkpoint closed, and a ``clear()`` made before it re-checks keeps it waiting."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._open = True
        self.parked = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._changed:
            if self._open:
                return True
            self.parked = True
            try:
                return self._changed.wait_for(lambda: self._open, timeout)
            finally:
                self.parked = False


def _reactor_paused(assoc: Any) -> bool:
    """``Association._is_paused`` as the requests read it: parked at the checkpoint, or not
    running at all, or asked from the reactor's own thread (its network-timeout release)."""
    checkpoint = assoc.__dict__.get("_reactor_checkpoint")
    if not isinstance(checkpoint, _ReactorCheckpoint):
        return bool(assoc.__dict__.get("_voxl_is_paused", False))
    return checkpoint.parked or not assoc.is_alive() or threading.current_thread() is assoc


def _set_reactor_paused(assoc: Any, value: bool) -> None:
    assoc.__dict__["_voxl_is_paused"] = value  # what the reactor says; read only without ours


def _park_reactors_reliably() -> None:
    """Every association gets a ``_ReactorCheckpoint``, and ``_is_paused`` reads it."""
    association_class = pynetdicom_association.Association
    if getattr(association_class, "_voxl_checkpoint", False):
        return
    init = association_class.__init__

    @functools.wraps(init)
    def init_with_checkpoint(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._reactor_checkpoint = _ReactorCheckpoint()  # before its thread starts

    association_class.__init__ = init_with_checkpoint  # type: ignore[method-assign]
    association_class._is_paused = property(_reactor_paused, _set_reactor_paused)  # type: ignore[assignment]
    association_class._voxl_checkpoint = True  # type: ignore[attr-defined]


_park_reactors_reliably()


def _pause_reactor(assoc: Any) -> None:
    """Hold an idle association's own reactor thread at its checkpoint, as pynetdicom's send_*
    methods do while they work, instead of letting it poll while the association waits for the
    next study; the next send_* finds it paused and sets it going again when done."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 1.0
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


def _still_open(assoc: Any) -> bool:
    """Whether a kept association can take a request: its reactor is paused, so a release or
    abort from the archive (or a closed connection) shows only in its DUL's state."""
    return bool(
        assoc.is_established
        and assoc.dul.is_alive()
        and assoc.dul.state_machine.current_state == "Sta6"
    )


def _accepted(assoc: Any, abstract_syntax: str) -> bool:
    return any(cx.abstract_syntax == abstract_syntax for cx in assoc.accepted_contexts)


def _end(assoc: Any) -> None:
    """Release ``assoc`` (abort it when it no longer stands)."""
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()


def _dul_wait(dul: Any) -> None:
    """One idle turn of ``dul``'s reactor: a wait in select() on its socket and its wake-up
    socket (the DUL runs in its own thread, so its state lives on it)."""
    raw = getattr(getattr(dul, "socket", None), "socket", None)
    wake = _wake_socket(dul)
    dul._voxl_waiting = True
    try:
        # What was queued, or asked of it, before ``waiting`` was set woke no one: look first.
        if dul._kill_thread or not dul.to_provider_queue.empty():
            return
        readable, _, _ = select.select(
            [wake] if raw is None else [raw, wake], [], [], DUL_IDLE_WAIT_SECONDS
        )
    except (OSError, ValueError):  # closed meanwhile: the reactor finds out itself
        time.sleep(DUL_POLL_SECONDS)
        return
    finally:
        dul._voxl_waiting = False
    if wake in readable:
        with suppress(OSError):
            wake.recv(4096)


def _wake_socket(dul: Any) -> socket.socket:
    """The receiving end of ``dul``'s wake-up pair (made on first use, closed with the DUL)."""
    pair = getattr(dul, "_voxl_wake", None)
    if pair is None:
        pair = socket.socketpair()
        for end in pair:
            end.setblocking(False)
        dul._voxl_wake = pair
        weakref.finalize(dul, _close_pair, pair)
    return pair[0]


def _close_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    for end in pair:
        end.close()


def _wake(dul: Any) -> None:
    """Wake ``dul``'s reactor if it waits in select()."""
    pair = getattr(dul, "_voxl_wake", None)
    if pair is not None and getattr(dul, "_voxl_waiting", False):
        with suppress(OSError):  # full (a wake-up is pending anyway) or closed
            pair[1].send(b"\0")


class _DulClock:
    """Stands in for the ``time`` module in pynetdicom's DUL (dul.py): its reactor's idle sleep,
    at the mark VOXL sets, becomes ``_dul_wait``; every other use is ``time``'s own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds != DUL_POLL_SECONDS:
            time.sleep(seconds)
            return
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider):
            _dul_wait(thread)
        else:
            time.sleep(seconds)


def _wake_dul_on_requests() -> None:
    """A primitive queued to send, or a stop, wakes the DUL from its wait in select()."""
    if getattr(DULServiceProvider, "_voxl_wakes", False):
        return
    send, stop = DULServiceProvider.send_pdu, DULServiceProvider.stop_dul

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        send(self, primitive)  # queued first, then woken: see _dul_wait
        _wake(self)

    def stop_dul(self: DULServiceProvider) -> bool:
        stopped = stop(self)
        _wake(self)
        return stopped

    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = stop_dul  # type: ignore[method-assign]
    DULServiceProvider._voxl_wakes = True  # type: ignore[attr-defined]


_wake_dul_on_requests()
pynetdicom_dul.time = _DulClock()  # type: ignore[assignment]


class _ReactorClock:
    """pynetdicom's acceptor reactor sleeps a fixed 1 ms per loop before looking for the next
    DIMSE message (association.py), which caps a C-MOVE receiver near 500 instances per second;
    this stands in for the ``time`` module there and shortens that one sleep."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(DUL_POLL_SECONDS if seconds == 0.001 else seconds)


pynetdicom_association.time = _ReactorClock()  # type: ignore[assignment]


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
    store_scp_host: str = "127.0.0.1"  # the address it listens on (VOXL_STORE_SCP_HOST)
    # Addresses or networks the archive's C-STOREs may come from; empty: what ``host`` resolves to.
    move_source_addresses: tuple[str, ...] = ()
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


@dataclass(frozen=True)
class InstanceRef:
    """One instance the archive holds. Holds source UIDs: never log it."""

    series_uid: str
    sop_uid: str

    def __repr__(self) -> str:
        return "InstanceRef(<identifiers hidden>)"


@dataclass(frozen=True)
class Retrieved:
    """What one retrieval brought: instances written, and what the archive says it sent (the
    C-GET/C-MOVE completed sub-operations; None where the protocol does not say)."""

    received: int
    archive_sent: int | None = None


def instance_file_name(sop_uid: str) -> str:
    """Cached files are named by a hash of their SOP Instance UID: the name reveals nothing, a
    re-sent instance overwrites itself, and a top-up can tell which instances are already here."""
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:32] + ".dcm"


class VnaClient(Protocol):
    def find_study(self, query: StudyQuery) -> StudyLocation: ...

    def retrieve(self, location: StudyLocation, staging: Path) -> Retrieved: ...

    def list_instances(self, location: StudyLocation) -> list[InstanceRef]: ...

    def retrieve_instances(
        self, location: StudyLocation, wanted: list[InstanceRef], staging: Path
    ) -> Retrieved: ...

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
        self._names: set[str] = set()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Distinct instances written by this writer."""
        return len(self._names)

    def write(self, file_meta: Dataset, encoded_dataset: bytes) -> None:
        name = instance_file_name(str(file_meta.MediaStorageSOPInstanceUID))
        path = self.directory / name
        with path.open("wb") as out:
            out.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(out, file_meta, enforce_standard=True)  # type: ignore[arg-type]
            out.write(encoded_dataset)
        with self._lock:
            self._names.add(name)

    def handle_store(self, event: Any, encoded: bytes | None = None) -> int:
        try:
            self.write(event.file_meta, encoded or event.request.DataSet.getvalue())
        except OSError:
            log.exception("could not write a received instance to the cache")
            return 0xA700  # out of resources
        return 0x0000


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# C-STORE status for an instance VOXL did not ask this sender for (PS3.7 C.5: Refused: Not
# Authorized). The sender sees a failed sub-operation; nothing is written.
STATUS_NOT_AUTHORISED = 0x0124


@functools.lru_cache(maxsize=256)  # asked once per received instance, for a handful of peers
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class MovePeer:
    """An archive allowed to send C-STOREs to VOXL's Storage SCP: its AE title and the networks
    its connections may come from."""

    ae_title: str
    networks: tuple[IpNetwork, ...]

    @classmethod
    def for_archive(cls, settings: VnaSettings) -> MovePeer:
        """The archive of ``settings``: ``move_source_addresses`` when given, else every address
        its ``host`` resolves to (an unresolvable host admits nothing, and says so)."""
        if settings.move_source_addresses:
            networks = tuple(
                ipaddress.ip_network(a, strict=False) for a in settings.move_source_addresses
            )
            return cls(settings.ae_title.strip(), networks)
        try:
            infos = socket.getaddrinfo(settings.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            log.warning(
                "archive host %s does not resolve: its C-STOREs will be refused "
                "(give move_source_addresses)",
                settings.host,
            )
            infos = []
        addresses = {_ip(str(info[4][0])) for info in infos}
        networks = tuple(ipaddress.ip_network(a) for a in sorted(addresses, key=str) if a)
        return cls(settings.ae_title.strip(), networks)

    def admits_address(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.networks)

    def admits(self, ae_title: str, address: str) -> bool:
        return ae_title.strip() == self.ae_title and self.admits_address(address)


class _GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server that closes a connection from an address no archive uses
    before a byte of DICOM is read (``socketserver``'s ``verify_request`` hook)."""

    def __init__(self, *args: Any, admit: Callable[[str], bool], **kwargs: Any) -> None:
        self._admit = admit
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        return self._admit(str(host))


@dataclass(frozen=True)
class _Route:
    writer: InstanceWriter
    peer: MovePeer


class MoveReceiver:
    """VOXL's Storage SCP for C-MOVE, one per AE title, address and port, shared by every archive
    that moves to it (a site registers one VOXL destination with all its archives).

    It listens on one configured address (``VOXL_STORE_SCP_HOST``, loopback by default) and
    accepts only the archives registered with it: a connection from another address is closed,
    an association from another calling AE title is rejected, and an instance is stored only if
    its study is being retrieved at that moment from the archive that sent it. Everything refused
    is counted in ``refused`` and never written."""

    _shared: dict[tuple[str, str, int], MoveReceiver] = {}
    _shared_lock = threading.Lock()

    def __init__(self, ae_title: str, port: int, network_timeout: float, host: str) -> None:
        self.routes: dict[str, _Route] = {}
        self.users = 0
        self.refused: Counter[str] = Counter()
        self._peers: Counter[MovePeer] = Counter()
        self._lock = threading.Lock()
        self.ae = ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = 0
        ae.network_timeout = network_timeout
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        server = ae.make_server(
            (host, port),
            evt_handlers=[
                (evt.EVT_C_STORE, self._route_store),
                (evt.EVT_CONN_OPEN, _wait_in_select_on_open),
                (evt.EVT_REJECTED, self._count_rejected),
            ],
            server_class=_GuardedAssociationServer,
            admit=self._admits_address,
        )
        assert server.socket is not None  # bound by the constructor
        server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server
        ae._servers.append(server)  # as start_server does: shutdown() removes it from there
        threading.Thread(
            target=server.serve_forever, name="voxl-move-receiver", daemon=True
        ).start()

    @classmethod
    def acquire(
        cls, ae_title: str, port: int, network_timeout: float, host: str = "127.0.0.1"
    ) -> MoveReceiver:
        with cls._shared_lock:
            key = (ae_title, host, port)
            receiver = cls._shared.get(key) if port else None
            if receiver is None:
                receiver = cls(ae_title, port, network_timeout, host)
                if port:
                    cls._shared[key] = receiver
            receiver.users += 1
            return receiver

    def release(self) -> None:
        with self._shared_lock:
            self.users -= 1
            if self.users:
                return
            for key, receiver in list(self._shared.items()):
                if receiver is self:
                    del self._shared[key]
        self.server.shutdown()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    # --- who may send ----------------------------------------------------------------------

    def admit(self, peer: MovePeer) -> None:
        """Accept associations from ``peer`` (an archive that will be asked to C-MOVE here)."""
        with self._lock:
            self._peers[peer] += 1
            self._update_calling_titles()

    def dismiss(self, peer: MovePeer) -> None:
        with self._lock:
            self._peers[peer] -= 1
            if self._peers[peer] <= 0:
                del self._peers[peer]
            self._update_calling_titles()

    def _update_calling_titles(self) -> None:
        # pynetdicom accepts any calling AE title when this list is empty; then no address is
        # admitted either, so nothing gets that far.
        self.ae.require_calling_aet = sorted({peer.ae_title for peer in self._peers})

    def _refuse(self, what: str) -> None:
        with self._lock:
            self.refused[what] += 1
            count = self.refused[what]
        log.warning("C-MOVE Storage SCP: refused %s (%d so far)", what.replace("_", " "), count)

    def _admits_address(self, address: str) -> bool:
        with self._lock:
            admitted = any(peer.admits_address(address) for peer in self._peers)
        if not admitted:
            self._refuse("connection_from_unknown_address")
        return admitted

    def _count_rejected(self, _event: Any) -> None:
        self._refuse("rejected_association")  # an unknown calling AE title, mostly

    # --- what may be stored ----------------------------------------------------------------

    def expect(self, study_uid: str, writer: InstanceWriter, peer: MovePeer) -> None:
        """Store instances of ``study_uid`` that ``peer`` sends, with ``writer``, until
        ``forget``."""
        self.routes[study_uid] = _Route(writer, peer)

    def forget(self, study_uid: str) -> None:
        self.routes.pop(study_uid, None)

    def _route_store(self, event: Any) -> int:
        encoded = event.request.DataSet.getvalue()
        route = self.routes.get(_study_uid_of(encoded, event))
        requestor = event.assoc.requestor
        if route is None or not route.peer.admits(requestor.ae_title, requestor.address):
            self._refuse("unrequested_instance")
            return STATUS_NOT_AUTHORISED
        return int(route.writer.handle_store(event, encoded))


def _study_uid_of(encoded: bytes, event: Any) -> str:
    """The instance's StudyInstanceUID, parsing the encoded dataset only up to that element
    (``event.dataset`` would decode all of it, pixel data included)."""
    syntax = event.context.transfer_syntax
    if syntax.is_deflated:
        return str(event.dataset.get("StudyInstanceUID", ""))
    header = read_dataset(
        BytesIO(encoded),
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, _vr, _length: tag > STUDY_INSTANCE_UID,
    )
    return str(header.get("StudyInstanceUID", ""))


class RateLimiter(Protocol):
    def acquire(self) -> float: ...


class DimseVna:
    """Every association (C-FIND, C-GET, C-MOVE) takes a token of ``rate_limiter``: the archive's
    bucket shared through the VOXL database (``voxl_assets/vna/rate.py``), or by default one of
    this client's own at ``settings.queries_per_second``."""

    def __init__(self, settings: VnaSettings, rate_limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self._bucket = rate_limiter or TokenBucket(settings.queries_per_second)
        self._receiver: MoveReceiver | None = None
        self._peer: MovePeer | None = None
        self._receiver_lock = threading.Lock()
        # Associations kept open between the studies of a batch, per kind (find, get, move),
        # and the AE of each kind with its presentation contexts, built once.
        self._idle: dict[str, list[Any]] = {}
        self._aes: dict[str, tuple[AE, list[Any]]] = {}
        self._pool_lock = threading.Lock()
        self._find_apart = False
        self.associations_opened = 0

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.maximum_pdu_size = 0
        return ae

    def _kind_ae(self, kind: str) -> tuple[AE, list[Any]]:
        """The AE that requests ``kind``'s contexts, and its role negotiation items. A retrieval
        association ("get", "move") also carries C-FIND, so that a worker holds one association
        at a time: an archive serves a fixed number of associations at once (Orthanc, like other
        DCMTK-based archives, 4 threads by default, each waiting up to a second on an idle
        association), and a second, idle association per worker made the others' requests wait."""
        with self._pool_lock:
            if kind not in self._aes:
                ae = self._ae()
                roles: list[Any] = []
                ae.add_requested_context(STUDY_ROOT_FIND)
                if kind == "move":
                    ae.add_requested_context(STUDY_ROOT_MOVE)
                elif kind == "get":
                    ae.add_requested_context(STUDY_ROOT_GET)
                    for sop_class in STORAGE_CLASSES[:126]:  # 128 contexts at most
                        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
                        roles.append(build_role(sop_class, scp_role=True))
                self._aes[kind] = (ae, roles)
            return self._aes[kind]

    def _find_kind(self) -> str:
        """The association C-FIND goes on: the retrieval's, unless the archive refused C-FIND
        there (then one of its own)."""
        if self._find_apart:
            return "find"
        return "move" if self.settings.retrieve == "c-move" else "get"

    @contextmanager
    def _association(self, kind: str) -> Iterator[Any]:
        """An established association for ``kind``: an idle one left by an earlier study when
        there is one, else a new one. It goes back to the pool when the block ends normally and
        the association still stands; on an error it is released (or aborted) instead.

        Reusing associations spares each small study two negotiations (128 presentation contexts
        for a C-GET) and a reactor thread each; ``release_associations`` ends them."""
        self._bucket.acquire()  # the rate limit counts queries and retrievals, not associations
        assoc = None
        with self._pool_lock:
            idle = self._idle.setdefault(kind, [])
            stale = []
            while idle and assoc is None:
                candidate = idle.pop()
                if _still_open(candidate):
                    assoc = candidate
                else:
                    stale.append(candidate)
        for candidate in stale:  # the archive ended it while it waited
            candidate.abort()
        if assoc is None:
            ae, roles = self._kind_ae(kind)
            handlers = [(evt.EVT_C_STORE, _store_to_current_writer)] if kind == "get" else []
            assoc = self._associate(ae, ext_neg=roles or None, evt_handlers=handlers)
        ended_normally = False
        try:
            yield assoc
            ended_normally = True
        finally:
            assoc._voxl_writer = None
            if ended_normally and assoc.is_established:
                _pause_reactor(assoc)
                with self._pool_lock:
                    self._idle.setdefault(kind, []).append(assoc)
            else:
                _end(assoc)

    def release_associations(self) -> None:
        """Release the associations kept between studies (at the end of a batch)."""
        with self._pool_lock:
            idle = [assoc for kinds in self._idle.values() for assoc in kinds]
            self._idle.clear()
        for assoc in idle:
            _end(assoc)

    def _associate(self, ae: AE, **kwargs: Any) -> Any:
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
        _wait_in_select(assoc)
        with self._pool_lock:
            self.associations_opened += 1
        return assoc

    # --- find ------------------------------------------------------------------------------

    def _c_find(self, identifier: Dataset) -> list[Dataset]:
        answers: list[Dataset] = []
        kind = self._find_kind()
        with self._association(kind) as assoc:
            if kind != "find" and not _accepted(assoc, STUDY_ROOT_FIND):
                self._find_apart = True  # the next queries go on an association of their own
                return self._c_find(identifier)
            for status, answer in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
                if status is None or "Status" not in status:  # empty: the association broke
                    raise VnaUnavailable("the VNA stopped answering during C-FIND")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and answer is not None:
                    answers.append(answer)
                elif code not in (0x0000,):
                    raise StudyFailure(f"the VNA refused the C-FIND (status 0x{code:04X})")
        return answers

    def _find(
        self, identifier: Dataset, found_by: Literal["study_uid", "mrn_accession"]
    ) -> list[StudyLocation]:
        return [
            StudyLocation(str(answer.StudyInstanceUID), _count(answer, "Study"), found_by)
            for answer in self._c_find(identifier)
        ]

    def _find_series(self, location: StudyLocation, series_uid: str) -> list[Dataset]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = location.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.NumberOfSeriesRelatedInstances = ""
        return self._c_find(ds)

    def find_study(self, query: StudyQuery) -> StudyLocation:
        found: StudyLocation | None = None
        if query.study_uid:
            found = _unique(
                self._find(_study_query(study_uid=query.study_uid), "study_uid"), "study UID"
            )
        if found is None and query.mrn and query.accession_number:
            identifier = _study_query(mrn=query.mrn, accession=query.accession_number)
            found = _unique(self._find(identifier, "mrn_accession"), "MRN + accession")
        if found is None:
            raise StudyNotFound("study not found on the VNA by study UID nor by MRN + accession")
        if not query.series_uid:
            return found
        series = self._find_series(found, query.series_uid)
        if not series:
            raise StudyNotFound("the study is on the VNA but the requested series is not")
        return StudyLocation(
            found.study_uid, _count(series[0], "Series"), found.found_by, query.series_uid
        )

    def list_instances(self, location: StudyLocation) -> list[InstanceRef]:
        """Every instance of the study (or of its requested series): a SERIES-level C-FIND, then
        an IMAGE-level one per series, as the study-root hierarchy asks."""
        if location.series_uid:
            series_uids = [location.series_uid]
        else:
            series_uids = [
                str(answer.SeriesInstanceUID) for answer in self._find_series(location, "")
            ]
        instances: list[InstanceRef] = []
        for series_uid in series_uids:
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = location.study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ""
            instances.extend(
                InstanceRef(series_uid, str(answer.SOPInstanceUID)) for answer in self._c_find(ds)
            )
        return instances

    # --- retrieve --------------------------------------------------------------------------

    def retrieve(self, location: StudyLocation, staging: Path) -> Retrieved:
        writer = InstanceWriter(staging)
        try:
            sent = self._send(
                _retrieve_identifier(location.study_uid, location.series_uid), writer, location
            )
        except VnaUnavailable as exc:
            raise VnaUnavailable(f"{exc}: {_arrived(writer.count, location.instances)}") from None
        if location.instances is not None and writer.count < location.instances:
            raise PartialRetrieval(
                f"partial retrieval: {writer.count} of {location.instances} instances arrived"
            )
        if writer.count == 0:
            raise PartialRetrieval("the VNA sent no instance for a study it had found")
        return Retrieved(writer.count, sent)

    def retrieve_instances(
        self, location: StudyLocation, wanted: list[InstanceRef], staging: Path
    ) -> Retrieved:
        """Retrieve exactly ``wanted``: IMAGE-level requests naming the SOP Instance UIDs (a UID
        list, PS3.4 C.4.2.2.1), one per series and at most 500 UIDs each."""
        writer = InstanceWriter(staging)
        sent_total = 0
        for series_uid, sop_uids in _by_series(wanted):
            for start in range(0, len(sop_uids), 500):
                identifier = _retrieve_identifier(
                    location.study_uid, series_uid, sop_uids[start : start + 500]
                )
                try:
                    sent_total += self._send(identifier, writer, location) or 0
                except VnaUnavailable as exc:
                    raise VnaUnavailable(f"{exc}: {_arrived(writer.count, len(wanted))}") from None
        if writer.count < len(wanted):
            raise PartialRetrieval(
                f"partial top-up: {writer.count} of {len(wanted)} missing instances arrived"
            )
        return Retrieved(writer.count, sent_total)

    def _send(
        self, identifier: Dataset, writer: InstanceWriter, location: StudyLocation
    ) -> int | None:
        if self.settings.retrieve == "c-move":
            return self._move(identifier, writer, location.study_uid)
        return self._get(identifier, writer)

    def _get(self, identifier: Dataset, writer: InstanceWriter) -> int | None:
        with self._association("get") as assoc:
            assoc._voxl_writer = writer  # where this retrieval's C-STOREs go
            return self._check_statuses(assoc.send_c_get(identifier, STUDY_ROOT_GET), "C-GET")

    def _move_receiver(self) -> tuple[MoveReceiver, MovePeer]:
        """The Storage SCP, with this archive admitted as a sender."""
        with self._receiver_lock:
            if self._receiver is None or self._peer is None:
                receiver = MoveReceiver.acquire(
                    self.settings.move_destination_ae,
                    self.settings.store_scp_port,
                    self.settings.network_timeout,
                    self.settings.store_scp_host,
                )
                self._peer = MovePeer.for_archive(self.settings)
                receiver.admit(self._peer)
                self._receiver = receiver
            return self._receiver, self._peer

    @property
    def store_scp_port(self) -> int:
        return self._move_receiver()[0].port

    @property
    def move_receiver(self) -> MoveReceiver:
        """The C-MOVE Storage SCP this client retrieves through (started on first use)."""
        return self._move_receiver()[0]

    def _move(self, identifier: Dataset, writer: InstanceWriter, study_uid: str) -> int | None:
        receiver, peer = self._move_receiver()
        receiver.expect(study_uid, writer, peer)
        try:
            with self._association("move") as assoc:
                responses = assoc.send_c_move(
                    identifier, self.settings.move_destination_ae, STUDY_ROOT_MOVE
                )
                return self._check_statuses(responses, "C-MOVE")
        finally:
            receiver.forget(study_uid)

    @staticmethod
    def _check_statuses(responses: Iterator[tuple[Any, Any]], what: str) -> int | None:
        """The completed sub-operations the archive reported. Raises on a failure status, except
        one caused by failed sub-operations (VOXL could not store some instances): the caller
        counts what arrived and reports a partial retrieval, keeping what did arrive."""
        completed: int | None = None
        failed = 0
        for status, _ in responses:
            if status is None or "Status" not in status:  # empty: the association broke
                raise VnaUnavailable(f"the VNA stopped answering during {what}")
            code = int(status.Status)
            completed = _suboperations(status, "Completed", completed)
            failed = _suboperations(status, "Failed", failed) or 0
            if code in (0xFF00, 0xFF01, 0x0000, 0xB000):
                continue
            if code == 0xA801:
                raise StudyFailure(
                    f"{what} refused: the VNA does not know VOXL's move destination AE title"
                )
            if failed:
                continue
            raise VnaUnavailable(f"{what} failed with status 0x{code:04X}")
        return completed

    def close(self) -> None:
        self.release_associations()
        with self._receiver_lock:
            if self._receiver is not None:
                if self._peer is not None:
                    self._receiver.dismiss(self._peer)
                self._receiver.release()
                self._receiver = None
                self._peer = None


def _arrived(count: int, expected: int | None) -> str:
    of = f" of {expected}" if expected is not None else ""
    return f"{count}{of} instances arrived (kept for a top-up)"


def _suboperations(status: Dataset, which: str, default: int | None) -> int | None:
    value = status.get(f"NumberOf{which}Suboperations")
    return int(value) if value not in (None, "") else default


def _by_series(refs: list[InstanceRef]) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        grouped.setdefault(ref.series_uid, []).append(ref.sop_uid)
    return list(grouped.items())


def _count(answer: Dataset, level: Literal["Study", "Series"]) -> int | None:
    value = answer.get(f"NumberOf{level}RelatedInstances")
    return int(value) if value not in (None, "") else None


def _study_query(study_uid: str = "", mrn: str = "", accession: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    ds.PatientID = mrn
    ds.AccessionNumber = accession
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def _retrieve_identifier(
    study_uid: str, series_uid: str = "", sop_uids: list[str] | None = None
) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    if sop_uids:
        ds.QueryRetrieveLevel = "IMAGE"
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uids
    elif series_uid:
        ds.QueryRetrieveLevel = "SERIES"
        ds.SeriesInstanceUID = series_uid
    else:
        ds.QueryRetrieveLevel = "STUDY"
    return ds


class DicomWebVna:
    """QIDO-RS search and WADO-RS retrieval with dicomweb-client, instance by instance."""

    def __init__(
        self, settings: VnaSettings, session: Any = None, rate_limiter: RateLimiter | None = None
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        self._bucket = rate_limiter or TokenBucket(settings.queries_per_second)
        self._client = DICOMwebClient(url=settings.dicomweb_url, session=session)

    def _qido(self, search: Any, **kwargs: Any) -> list[Dataset]:
        import requests

        self._bucket.acquire()
        try:
            answers = search(**kwargs)
        except requests.RequestException as exc:
            raise VnaUnavailable(f"DICOMweb VNA unreachable ({type(exc).__name__})") from None
        return [Dataset.from_json(answer) for answer in answers]

    def _search(
        self, filters: dict[str, str], found_by: Literal["study_uid", "mrn_accession"]
    ) -> list[StudyLocation]:
        answers = self._qido(
            self._client.search_for_studies,
            search_filters=filters,
            fields=["NumberOfStudyRelatedInstances"],
        )
        return [
            StudyLocation(str(ds.StudyInstanceUID), _count(ds, "Study"), found_by) for ds in answers
        ]

    def find_study(self, query: StudyQuery) -> StudyLocation:
        found: StudyLocation | None = None
        if query.study_uid:
            found = _unique(
                self._search({"StudyInstanceUID": query.study_uid}, "study_uid"), "study UID"
            )
        if found is None and query.mrn and query.accession_number:
            filters = {"PatientID": query.mrn, "AccessionNumber": query.accession_number}
            found = _unique(self._search(filters, "mrn_accession"), "MRN + accession")
        if found is None:
            raise StudyNotFound("study not found on the VNA by study UID nor by MRN + accession")
        if not query.series_uid:
            return found
        series = self._qido(
            self._client.search_for_series,
            study_instance_uid=found.study_uid,
            search_filters={"SeriesInstanceUID": query.series_uid},
            fields=["NumberOfSeriesRelatedInstances"],
        )
        if not series:
            raise StudyNotFound("the study is on the VNA but the requested series is not")
        return StudyLocation(
            found.study_uid, _count(series[0], "Series"), found.found_by, query.series_uid
        )

    def list_instances(self, location: StudyLocation) -> list[InstanceRef]:
        kwargs: dict[str, Any] = {"study_instance_uid": location.study_uid}
        if location.series_uid:
            kwargs["series_instance_uid"] = location.series_uid
        answers = self._qido(
            self._client.search_for_instances, fields=["SeriesInstanceUID"], **kwargs
        )
        return [InstanceRef(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in answers]

    def _write_all(self, instances: Iterator[Dataset], staging: Path) -> int:
        import requests
        from pydicom.filewriter import dcmwrite

        names = set()
        try:
            for ds in instances:
                name = instance_file_name(str(ds.SOPInstanceUID))
                dcmwrite(staging / name, ds, enforce_file_format=True)
                names.add(name)
        except requests.RequestException as exc:
            raise VnaUnavailable(f"DICOMweb retrieval interrupted ({type(exc).__name__})") from None
        return len(names)

    def retrieve(self, location: StudyLocation, staging: Path) -> Retrieved:
        self._bucket.acquire()
        if location.series_uid:
            instances = self._client.iter_series(location.study_uid, location.series_uid)
        else:
            instances = self._client.iter_study(location.study_uid)
        count = self._write_all(instances, staging)
        if location.instances is not None and count < location.instances:
            raise PartialRetrieval(
                f"partial retrieval: {count} of {location.instances} instances arrived"
            )
        return Retrieved(count)

    def retrieve_instances(
        self, location: StudyLocation, wanted: list[InstanceRef], staging: Path
    ) -> Retrieved:
        """WADO-RS per instance: one request each, paced by the rate limit."""

        def fetch() -> Iterator[Dataset]:
            for ref in wanted:
                self._bucket.acquire()
                yield self._client.retrieve_instance(
                    location.study_uid, ref.series_uid, ref.sop_uid
                )

        count = self._write_all(fetch(), staging)
        if count < len(wanted):
            raise PartialRetrieval(f"partial top-up: {count} of {len(wanted)} instances arrived")
        return Retrieved(count, count)

    def close(self) -> None:
        pass


def make_vna_client(
    settings: VnaSettings, rate_limiter: RateLimiter | None = None
) -> DimseVna | DicomWebVna:
    if settings.kind == "dicomweb":
        if not settings.dicomweb_url:
            raise ValueError("VNA kind dicomweb needs dicomweb_url (VOXL_VNA_DICOMWEB_URL)")
        return DicomWebVna(settings, rate_limiter=rate_limiter)
    return DimseVna(settings, rate_limiter)
