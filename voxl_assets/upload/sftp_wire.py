"""A minimal SFTP version 3 client (draft-ietf-secsh-filexfer-02) over a connected socket.

VOXL runs it over OpenSSH's ``ssh -s ... sftp``: ssh encrypts in its own process (in C, on another
core) while this module only frames requests. It holds just what an upload needs - stat, mkdir,
open for writing, pipelined writes, close, rename (``posix-rename@openssh.com`` when the server
offers it) and remove - so it is small enough to read in one sitting.

Writes are the hot path: each request's header is packed on its own and sent with the caller's
data in one scatter-gather ``sendmsg`` (no copy of the data), and at most ``MAX_OUTSTANDING``
requests are unacknowledged, as with OpenSSH's own ``sftp`` client. Server errors come back as
``FileNotFoundError``, ``PermissionError`` or ``OSError``; a closed stream as ``EOFError``.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
from collections.abc import Callable

# Packet types and constants of SFTP version 3.
_INIT, _VERSION = 1, 2
_OPEN, _CLOSE, _WRITE = 3, 4, 6
_REMOVE, _MKDIR, _STAT, _RENAME = 13, 14, 17, 18
_EXTENDED = 200
_STATUS, _HANDLE, _ATTRS = 101, 102, 105
_FX_OK, _FX_NO_SUCH_FILE, _FX_PERMISSION_DENIED = 0, 2, 3
_FXF_WRITE, _FXF_CREAT, _FXF_TRUNC = 0x02, 0x08, 0x10
_ATTR_SIZE = 0x01
_POSIX_RENAME = "posix-rename@openssh.com"

WRITE_SIZE = 32768  # data bytes per write request: what every SFTP server accepts
MAX_OUTSTANDING = 64  # unacknowledged write requests (2 MiB in flight)
_MAX_REPLY = 256 * 1024  # replies VOXL asks for are small; a bigger length means a broken stream
_IOV_BATCH = 256  # buffers per sendmsg call, under Linux's IOV_MAX of 1024

_U32 = struct.Struct(">I")
_REQUEST_HEAD = struct.Struct(">IBI")  # length, type, request id
_WRITE_TAIL = struct.Struct(">QI")  # offset, data length


class SftpProtocolError(OSError):
    """The server sent something SFTP v3 does not allow here (a broken or foreign stream)."""


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _U32.pack(len(raw)) + raw


class SftpWire:
    """One SFTP session on ``sock`` (blocking, with the socket's own timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._received = bytearray()
        self._next_id = 1
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self.extensions: dict[str, bytes] = {}

    # -- framing --------------------------------------------------------------------------

    def _send(self, parts: list[bytes | memoryview]) -> None:
        """Send every byte of ``parts`` (``sendmsg`` may stop partway through any buffer)."""
        views = [memoryview(part) for part in parts]
        while views:
            sent = self._sock.sendmsg(views[:_IOV_BATCH])
            while sent:
                if sent >= views[0].nbytes:
                    sent -= views[0].nbytes
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _fill(self, size: int) -> None:
        while len(self._received) < size:
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("the SFTP stream closed")
            self._received += data

    def _take_packet(self) -> tuple[int, bytes] | None:
        """The next whole reply already received, as (type, body), or None."""
        if len(self._received) < 4:
            return None
        (length,) = _U32.unpack_from(self._received)
        if not 1 <= length <= _MAX_REPLY:
            raise SftpProtocolError(f"SFTP reply of impossible length {length}")
        if len(self._received) < 4 + length:
            return None
        kind, body = self._received[4], bytes(self._received[5 : 4 + length])
        del self._received[: 4 + length]
        return kind, body

    def _read_packet(self) -> tuple[int, bytes]:
        while (packet := self._take_packet()) is None:
            self._fill(len(self._received) + 1)
        return packet

    def _poll_packets(self) -> list[tuple[int, bytes]]:
        """Replies that have arrived, without waiting for more."""
        # poll(0), not MSG_DONTWAIT: a socket with a timeout waits for data before any recv.
        if self._readable.poll(0):
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("the SFTP stream closed")
            self._received += data
        packets = []
        while (packet := self._take_packet()) is not None:
            packets.append(packet)
        return packets

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return request_id

    def _request(self, kind: int, payload: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its reply: (reply type, body after the request id)."""
        request_id = self._new_id()
        self._send([_REQUEST_HEAD.pack(5 + len(payload), kind, request_id), payload])
        reply_kind, body = self._read_packet()
        if len(body) < 4 or _U32.unpack_from(body)[0] != request_id:
            raise SftpProtocolError("SFTP reply to a request that was not sent")
        return reply_kind, body[4:]

    # -- replies --------------------------------------------------------------------------

    @staticmethod
    def _raise_status(body: bytes, what: str) -> None:
        """Raise the error a STATUS body (after its request id) stands for; return if OK."""
        (code,) = _U32.unpack_from(body)
        if code == _FX_OK:
            return
        message = f"{what}: SFTP status {code}"
        if code == _FX_NO_SUCH_FILE:
            raise FileNotFoundError(errno.ENOENT, message)
        if code == _FX_PERMISSION_DENIED:
            raise PermissionError(errno.EACCES, message)
        raise OSError(message)

    def _expect_status(self, reply: tuple[int, bytes], what: str) -> None:
        kind, body = reply
        if kind != _STATUS:
            raise SftpProtocolError(f"{what}: expected a status reply, got type {kind}")
        self._raise_status(body, what)

    # -- operations -----------------------------------------------------------------------

    def handshake(self) -> None:
        """INIT/VERSION; records the extensions the server offers."""
        self._send([_REQUEST_HEAD.pack(5, _INIT, 3)])  # INIT carries the version, not an id
        kind, body = self._read_packet()
        if kind != _VERSION or len(body) < 4:
            raise SftpProtocolError("the peer did not answer SFTP's INIT with VERSION")
        (version,) = _U32.unpack_from(body)
        if version < 3:
            raise SftpProtocolError(f"the server speaks SFTP version {version}; VOXL needs 3")
        position = 4
        while position + 4 <= len(body):
            name, position = self._read_string(body, position)
            value, position = self._read_string(body, position)
            self.extensions[name.decode(errors="replace")] = value

    @staticmethod
    def _read_string(body: bytes, position: int) -> tuple[bytes, int]:
        (length,) = _U32.unpack_from(body, position)
        end = position + 4 + length
        if end > len(body):
            raise SftpProtocolError("truncated string in an SFTP reply")
        return body[position + 4 : end], end

    def stat_size(self, path: str) -> int:
        """Size of ``path`` in bytes; ``FileNotFoundError`` if absent."""
        kind, body = self._request(_STAT, _string(path))
        if kind == _STATUS:
            self._raise_status(body, "stat")
            raise SftpProtocolError("stat: OK status instead of attributes")
        if kind != _ATTRS or len(body) < 4:
            raise SftpProtocolError(f"stat: expected attributes, got type {kind}")
        (flags,) = _U32.unpack_from(body)
        if not flags & _ATTR_SIZE:
            raise SftpProtocolError("stat: the server did not report a size")
        return int(struct.unpack_from(">Q", body, 4)[0])

    def exists(self, path: str) -> bool:
        try:
            self.stat_size(path)
        except FileNotFoundError:
            return False
        return True

    def mkdir(self, path: str) -> None:
        self._expect_status(self._request(_MKDIR, _string(path) + _U32.pack(0)), "mkdir")

    def remove(self, path: str) -> None:
        self._expect_status(self._request(_REMOVE, _string(path)), "remove")

    def rename(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``, replacing ``new`` atomically where the server can
        (``posix-rename@openssh.com``); otherwise remove ``new`` first (plain SFTP rename
        refuses an existing target)."""
        if _POSIX_RENAME in self.extensions:
            payload = _string(_POSIX_RENAME) + _string(old) + _string(new)
            self._expect_status(self._request(_EXTENDED, payload), "rename")
            return
        with contextlib.suppress(FileNotFoundError):
            self.remove(new)
        self._expect_status(self._request(_RENAME, _string(old) + _string(new)), "rename")

    def write_file(self, path: str, produce: Callable[[Callable[[bytes], object]], int]) -> int:
        """Create or truncate ``path`` and fill it with what ``produce(send)`` sends; returns
        the bytes written. Every write is acknowledged before this returns."""
        flags = _FXF_WRITE | _FXF_CREAT | _FXF_TRUNC
        kind, body = self._request(_OPEN, _string(path) + _U32.pack(flags) + _U32.pack(0))
        if kind == _STATUS:
            self._raise_status(body, "open")
        if kind != _HANDLE:
            raise SftpProtocolError(f"open: expected a handle, got type {kind}")
        handle, _ = self._read_string(body, 0)
        writer = _PipelinedWriter(self, handle)
        try:
            produce(writer.write)
            writer.finish()
        except BaseException:
            # Free the server's handle if the session still works (a local read failed, say);
            # an error doing so must not hide the first one.
            with contextlib.suppress(Exception):
                writer.finish()
                self._request(_CLOSE, _string(handle))
            raise
        self._expect_status(self._request(_CLOSE, _string(handle)), "close")
        return writer.offset


class _PipelinedWriter:
    """WRITE requests for one handle, at most ``MAX_OUTSTANDING`` unacknowledged."""

    def __init__(self, wire: SftpWire, handle: bytes) -> None:
        self._wire = wire
        self._handle = _string(handle)
        self._pending: set[int] = set()
        self.offset = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        wire = self._wire
        for start in range(0, view.nbytes, WRITE_SIZE):
            chunk = view[start : start + WRITE_SIZE]
            request_id = wire._new_id()
            length = 5 + len(self._handle) + _WRITE_TAIL.size + chunk.nbytes
            parts.append(
                _REQUEST_HEAD.pack(length, _WRITE, request_id)
                + self._handle
                + _WRITE_TAIL.pack(self.offset, chunk.nbytes)
            )
            parts.append(chunk)
            self._pending.add(request_id)
            self.offset += chunk.nbytes
        wire._send(parts)
        self._acknowledge(wire._poll_packets())
        while len(self._pending) > MAX_OUTSTANDING:
            self._acknowledge([wire._read_packet()])

    def finish(self) -> None:
        while self._pending:
            self._acknowledge([self._wire._read_packet()])

    def _acknowledge(self, packets: list[tuple[int, bytes]]) -> None:
        """Settle every reply in ``packets``, then raise the first error among them (so that
        ``finish`` after an error waits only for replies still to come)."""
        failure: OSError | None = None
        for kind, body in packets:
            request_id = _U32.unpack_from(body)[0] if len(body) >= 8 else None
            if kind != _STATUS or request_id not in self._pending:
                raise SftpProtocolError("SFTP reply to a write that was not sent")
            self._pending.discard(request_id)
            try:
                SftpWire._raise_status(body[4:], "write")
            except OSError as error:
                failure = failure or error
        if failure is not None:
            raise failure
