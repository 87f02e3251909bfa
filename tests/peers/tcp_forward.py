"""A TCP forwarder: ``python -m tests.peers.tcp_forward LISTEN_HOST:PORT=TARGET_HOST:PORT ...``.

Lets a process in its own network namespace reach peers that listen on the machine's loopback
(PostgreSQL, RabbitMQ): one forwarder inside the namespace, from its loopback to the veth address
of the machine, and one outside, from that address to the machine's loopback.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _serve(server: socket.socket, target: tuple[str, int]) -> None:
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(pairs: list[str]) -> None:
    threads = []
    for pair in pairs:
        listen, target = pair.split("=")
        server = socket.create_server(_address(listen))  # bound before we say so
        thread = threading.Thread(target=_serve, args=(server, _address(target)), daemon=True)
        thread.start()
        threads.append(thread)
    print("forwarding", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
