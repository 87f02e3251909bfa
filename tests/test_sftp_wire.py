"""VOXL's SFTP v3 framing against a scripted peer on a socketpair.

The real server (OpenSSH's sftp-server) is exercised by tests/test_upload_sftp.py; these tests
drive the replies a real server rarely gives - no posix-rename extension, error statuses, a
broken stream - and check what goes over the wire byte by byte.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from voxl_assets.upload.sftp_wire import WRITE_SIZE, SftpProtocolError, SftpWire

Reply = Callable[[int, int, bytes], bytes | None]  # (type, request id, body) -> reply packet


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(body), kind) + body


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _status(request_id: int, code: int = 0) -> bytes:
    return _packet(101, struct.pack(">II", request_id, code) + _string(b"") + _string(b""))


class ScriptedPeer:
    """Answers VERSION (with ``extensions``), then each request with ``reply``; records them."""

    def __init__(self, reply: Reply, extensions: dict[bytes, bytes] | None = None) -> None:
        self.client, self._server = socket.socketpair()
        self.client.settimeout(5)
        self.requests: list[tuple[int, bytes]] = []
        self._reply = reply
        self._extensions = extensions or {}
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._server.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            (length,) = struct.unpack(">I", self._read(4))
            self._read(length)  # INIT
            extensions = b"".join(_string(k) + _string(v) for k, v in self._extensions.items())
            self._server.sendall(_packet(2, struct.pack(">I", 3) + extensions))
            while True:
                (length,) = struct.unpack(">I", self._read(4))
                body = self._read(length)
                kind, request_id = body[0], struct.unpack_from(">I", body, 1)[0]
                self.requests.append((kind, body[5:]))
                answer = self._reply(kind, request_id, body[5:])
                if answer is None:
                    self._server.close()
                    return
                self._server.sendall(answer)
        except (EOFError, OSError):
            pass

    def close(self) -> None:
        self.client.close()
        self._server.close()
        self._thread.join(5)


@pytest.fixture
def peers() -> Iterator[list[ScriptedPeer]]:
    started: list[ScriptedPeer] = []
    yield started
    for peer in started:
        peer.close()


def _wire(
    peers: list[ScriptedPeer], reply: Reply, extensions: dict[bytes, bytes] | None = None
) -> SftpWire:
    peer = ScriptedPeer(reply, extensions)
    peers.append(peer)
    wire = SftpWire(peer.client)
    wire.handshake()
    return wire


def _sender(data: bytes) -> Callable[[Callable[[bytes], object]], int]:
    def produce(send: Callable[[bytes], object]) -> int:
        send(data)
        return len(data)

    return produce


def _ok_server(kind: int, request_id: int, body: bytes) -> bytes:
    if kind == 3:  # OPEN -> handle "h1"
        return _packet(102, struct.pack(">I", request_id) + _string(b"h1"))
    if kind == 17:  # STAT -> size 1234
        return _packet(105, struct.pack(">IIQ", request_id, 1, 1234))
    return _status(request_id)


def test_write_file_sends_offsets_and_data_in_order(peers: list[ScriptedPeer]) -> None:
    wire = _wire(peers, _ok_server)
    payload = bytes(range(256)) * 1000  # 256,000 bytes: 8 requests, the last one short

    def produce(send: Callable[[bytes], object]) -> int:
        send(payload[:100_000])  # pieces that do not line up with WRITE_SIZE
        send(payload[100_000:])
        return len(payload)

    written = wire.write_file("dir/.x.part", produce)
    assert written == len(payload)
    requests = peers[0].requests
    assert requests[0][0] == 3 and b"dir/.x.part" in requests[0][1]
    writes = [body for kind, body in requests if kind == 6]
    received = bytearray()
    for body in writes:
        handle_length = struct.unpack_from(">I", body)[0]
        offset, length = struct.unpack_from(">QI", body, 4 + handle_length)
        assert body[4 : 4 + handle_length] == b"h1" and offset == len(received)
        assert length <= WRITE_SIZE
        received += body[4 + handle_length + 12 :]
    assert bytes(received) == payload
    assert requests[-1][0] == 4  # CLOSE after every write was acknowledged
    assert wire.stat_size("dir/x") == 1234


def test_rename_without_posix_rename_removes_the_old_copy_first(
    peers: list[ScriptedPeer],
) -> None:
    wire = _wire(peers, _ok_server)
    wire.rename("a.part", "a.zip")
    assert [kind for kind, _ in peers[0].requests] == [13, 18]  # REMOVE, RENAME
    openssh = _wire(peers, _ok_server, {b"posix-rename@openssh.com": b"1"})
    assert openssh.extensions == {"posix-rename@openssh.com": b"1"}
    openssh.rename("a.part", "a.zip")
    assert [kind for kind, _ in peers[1].requests] == [200]  # one atomic EXTENDED request
    assert peers[1].requests[0][1] == b"".join(
        _string(v) for v in (b"posix-rename@openssh.com", b"a.part", b"a.zip")
    )


@pytest.mark.parametrize(
    ("code", "error"), [(2, FileNotFoundError), (3, PermissionError), (4, OSError)]
)
def test_error_statuses_become_os_errors(
    peers: list[ScriptedPeer], code: int, error: type[OSError]
) -> None:
    wire = _wire(peers, lambda kind, request_id, body: _status(request_id, code))
    with pytest.raises(error, match=f"mkdir: SFTP status {code}"):
        wire.mkdir("x")
    if code == 2:
        assert wire.exists("y") is False
    else:  # not "absent": exists() must not guess
        with pytest.raises(error):
            wire.exists("y")


def test_a_failed_write_is_reported_and_the_handle_closed(peers: list[ScriptedPeer]) -> None:
    def disk_full_on_third_write(kind: int, request_id: int, body: bytes) -> bytes | None:
        writes = sum(1 for k, _ in peers[0].requests if k == 6)
        if kind == 6 and writes == 3:
            return _status(request_id, 4)
        return _ok_server(kind, request_id, body)

    wire = _wire(peers, disk_full_on_third_write)
    with pytest.raises(OSError, match="write: SFTP status 4"):
        wire.write_file("x", _sender(b"z" * 10 * WRITE_SIZE))
    assert peers[0].requests[-1][0] == 4  # CLOSE


def test_a_stream_that_ends_midway_raises_eof(peers: list[ScriptedPeer]) -> None:
    def hang_up_at_write(kind: int, request_id: int, body: bytes) -> bytes | None:
        return None if kind == 6 else _ok_server(kind, request_id, body)

    wire = _wire(peers, hang_up_at_write)
    with pytest.raises((EOFError, ConnectionError)):
        wire.write_file("x", _sender(b"z" * 160 * WRITE_SIZE))


def test_replies_that_break_the_protocol_are_refused(peers: list[ScriptedPeer]) -> None:
    wrong_id = _wire(peers, lambda kind, request_id, body: _status(request_id + 7))
    with pytest.raises(SftpProtocolError, match="not sent"):
        wrong_id.mkdir("x")
    huge = _wire(peers, lambda kind, request_id, body: struct.pack(">I", 1 << 30) + b"\x65")
    with pytest.raises(SftpProtocolError, match="impossible length"):
        huge.mkdir("x")
    handle_for_mkdir = _wire(
        peers, lambda kind, request_id, body: _packet(102, struct.pack(">I", request_id))
    )
    with pytest.raises(SftpProtocolError, match="expected a status"):
        handle_for_mkdir.mkdir("x")
