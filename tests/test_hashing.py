"""Keyed, per-project salted hashing: local and remote back ends behave the same."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import ProjectSalt
from voxl_assets.deid.hashing import (
    HashingError,
    LocalHashing,
    ProjectHasher,
    RemoteHashing,
    SaltStore,
)

KEY = "a-long-random-test-key-0123456789"


def test_same_input_same_hash_other_project_other_hash(tmp_path: Path) -> None:
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")
    backend = LocalHashing(KEY, SaltStore(database))
    one, two = ProjectHasher(backend, "one"), ProjectHasher(backend, "two")
    assert one.hash("40000001") == one.hash("40000001")
    assert one.hash("40000001") != two.hash("40000001")
    assert one.hash("40000001") != one.hash("40000002")
    assert len(one.hash("x")) == 64 and len(one.hash("x", 16)) == 16
    assert len(one.hash("x", 500)) == 64  # never longer than Azure's limit
    uid = one.uid("1.2.840.1234")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == one.uid("1.2.840.1234")
    assert 1 <= one.date_shift_days("p", 30) <= 30 and one.date_shift_days("p", 0) == 0


def test_salt_is_created_once_and_survives_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    first = ProjectHasher(LocalHashing(KEY, SaltStore(VoxlDatabase(url))), "p").hash("v")
    second = ProjectHasher(LocalHashing(KEY, SaltStore(VoxlDatabase(url))), "p").hash("v")
    assert first == second
    with VoxlDatabase(url).session() as session:
        salts = session.scalars(select(ProjectSalt.salt)).all()
    assert len(salts) == 1 and len(salts[0]) == 64
    other_key = ProjectHasher(LocalHashing(KEY + "x", SaltStore(VoxlDatabase(url))), "p").hash("v")
    assert other_key != first  # the key matters, not only the salt


def test_a_short_key_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(HashingError, match="VOXL_HASHING_KEY"):
        LocalHashing("short", SaltStore(VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")))


def test_remote_hashing_service_is_the_same_interface(tmp_path: Path) -> None:
    """A real HTTP service (in a thread) that hashes with its own key and salts."""
    service_backend = LocalHashing(KEY, SaltStore(VoxlDatabase(f"sqlite:///{tmp_path / 's.db'}")))
    calls: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            if self.headers.get("Authorization") != "Bearer t0ken":
                self.send_response(401)
                self.end_headers()
                return
            digest = service_backend.digest(body["project"], body["domain"], body["value"])
            payload = json.dumps({"digest": digest}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        remote = ProjectHasher(RemoteHashing(url, token="t0ken"), "p")
        local = ProjectHasher(service_backend, "p")
        assert remote.hash("40000001") == local.hash("40000001")
        assert remote.uid("1.2.3") == local.uid("1.2.3")
        with pytest.raises(HashingError, match="refused"):
            ProjectHasher(RemoteHashing(url, token="wrong"), "p").hash("v")
    finally:
        server.shutdown()
    assert calls and all(set(c) == {"project", "domain", "value"} for c in calls)


def test_the_digest_is_the_documented_keyed_blake2b(tmp_path: Path) -> None:
    """digest = BLAKE2b-256(key=BLAKE2b-256(VOXL_HASHING_KEY), data=salt || domain || 0 || value):
    what a remote hashing service has to implement. Pseudonyms, UIDs and date shifts are read
    from that digest."""
    import hashlib

    database = VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")
    backend = LocalHashing(KEY, SaltStore(database))
    hasher = ProjectHasher(backend, "p")
    pseudonym = hasher.hash("40000001")
    with database.session() as session:
        salt = bytes.fromhex(session.scalars(select(ProjectSalt.salt)).one())
    key = hashlib.blake2b(KEY.encode(), digest_size=32).digest()
    expected = hashlib.blake2b(salt + b"id\x0040000001", key=key, digest_size=32).hexdigest()
    assert pseudonym == expected
    assert backend.digest("p", "uid", "1.2.3") == hasher.hash("1.2.3", domain="uid")
    assert hasher.uid("1.2.3") == "2.25." + str(int(hasher.hash("1.2.3", 32, domain="uid"), 16))
    shift = int(hasher.hash("patient", 8, domain="date-shift"), 16) % 30 + 1
    assert hasher.date_shift_days("patient", 30) == shift


def test_date_shifts_cover_every_day_from_one_to_the_maximum(tmp_path: Path) -> None:
    hasher = ProjectHasher(
        LocalHashing(KEY, SaltStore(VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}"))), "p"
    )
    assert {hasher.date_shift_days(f"patient {n}", 3) for n in range(200)} == {1, 2, 3}
    assert hasher.date_shift_days("patient", 1) == 1
    assert hasher.date_shift_days("patient", -5) == 0


def test_a_key_of_sixteen_bytes_is_enough(tmp_path: Path) -> None:
    salts = SaltStore(VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}"))
    assert len(ProjectHasher(LocalHashing(b"k" * 16, salts), "p").hash("v")) == 64
    with pytest.raises(HashingError, match="at least 16 bytes"):
        LocalHashing("k" * 15, salts)


def _service(statuses: list[int], digest: str = "a" * 64) -> tuple[ThreadingHTTPServer, list[int]]:
    """A hashing service answering with ``statuses`` in turn (then 200), counting the calls."""
    calls: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = statuses[len(calls)] if len(calls) < len(statuses) else 200
            calls.append(status)
            payload = json.dumps({"digest": digest}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, calls


def test_a_remote_service_error_is_retried_and_a_refusal_is_not() -> None:
    from voxl_assets.retry import TransientError

    server, calls = _service([500, 503])
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert RemoteHashing(url).digest("p", "id", "v") == "a" * 64
        assert calls == [500, 503, 200]
    finally:
        server.shutdown()
    failing, failing_calls = _service([599] * 4)
    try:
        url = f"http://127.0.0.1:{failing.server_port}"
        with pytest.raises(TransientError, match="hashing service error 599"):
            RemoteHashing(url).digest("p", "id", "v")
        assert len(failing_calls) == 4
    finally:
        failing.shutdown()
    refusing, refused_calls = _service([404])
    try:
        url = f"http://127.0.0.1:{refusing.server_port}"
        with pytest.raises(HashingError, match=r"refused the request \(404\)"):
            RemoteHashing(url).digest("p", "id", "v")
        assert refused_calls == [404]
    finally:
        refusing.shutdown()


@pytest.mark.parametrize("digest", ["a" * 63, "a" * 65, "A" * 64, "g" * 64, ""])
def test_a_malformed_digest_from_the_service_is_refused(digest: str) -> None:
    server, _calls = _service([], digest)
    try:
        with pytest.raises(HashingError, match="malformed"):
            RemoteHashing(f"http://127.0.0.1:{server.server_port}").digest("p", "id", "v")
    finally:
        server.shutdown()


def test_a_hasher_asks_the_service_once_per_value_and_domain() -> None:
    server, calls = _service([])
    try:
        hasher = ProjectHasher(RemoteHashing(f"http://127.0.0.1:{server.server_port}"), "p")
        for _ in range(3):
            hasher.hash("40000001")
            hasher.uid("1.2.3")
        hasher.hash("40000001", domain="other")
        assert len(calls) == 3
    finally:
        server.shutdown()
