"""A loopback TCP proxy that cuts its first connection(s) mid-transfer, to test interrupted uploads.

It forwards bytes both ways to ``127.0.0.1:upstream_port``. The first ``drops`` connections are
reset (RST, as when a network path or a peer dies) once ``after_bytes`` have gone from client to
server. Later connections pass untouched. Works for any TCP protocol (HTTP, SSH).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

from tests.peers import free_port


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class DroppingProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        after_bytes: int,
        drops: int = 1,
        capture: bool = False,
        on_connect: Callable[[int], None] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.after_bytes = after_bytes
        self.drops_left = drops
        self.capture = capture
        self.on_connect = on_connect  # called with the connection number (1, 2, ...)
        self.connections = 0
        self.dropped = 0
        self.captured = bytearray()  # client -> server bytes of every connection (if capture)
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._states: list[dict[str, bool]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        # Listening from here on; no probe connection (it would count as the first one).
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                drop = self.drops_left > 0
                if drop:
                    self.drops_left -= 1
            if self.on_connect is not None:
                self.on_connect(number)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _reset(client)
                continue
            state = {"closed": False}
            with self._lock:
                self._open.append((client, upstream))
                self._states.append(state)
            threading.Thread(
                target=self._pump, args=(client, upstream, drop, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_back, args=(upstream, client, state), daemon=True
            ).start()

    def _pump(
        self, client: socket.socket, upstream: socket.socket, drop: bool, state: dict[str, bool]
    ) -> None:
        forwarded = 0
        try:
            while True:
                data = client.recv(1 << 16)
                if not data:
                    break
                if drop and forwarded + len(data) >= self.after_bytes:
                    with self._lock:
                        self.dropped += 1
                    state["closed"] = True
                    _reset(client)
                    _reset(upstream)
                    return
                if self.capture:
                    with self._lock:
                        self.captured += data
                upstream.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        if not state["closed"]:
            state["closed"] = True
            client.close()
            upstream.close()

    @staticmethod
    def _pump_back(upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := upstream.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass
        if not state["closed"]:
            state["closed"] = True
            client.close()
            upstream.close()

    def open_connections(self) -> int:
        """Connections neither side has closed yet."""
        with self._lock:
            return sum(not state["closed"] for state in self._states)

    def cut_open_connections(self) -> None:
        """Reset every connection made so far (as when a server drops idle sessions)."""
        with self._lock:
            connections, self._open = self._open, []
        for client, upstream in connections:
            _reset(client)
            _reset(upstream)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
