"""Keyed, per-project salted hashing of identifiers.

``digest = BLAKE2b-256(key=VOXL_HASHING_KEY, data=salt || domain || 0 || value)``. The key comes
from the environment; each project's salt is random, created once and kept in the VOXL database
(never in git, never logged). Same value and project: same digest; another project: another one.
Everything derived (pseudonymous ids, UIDs, date shifts) comes from the digest, so a remote hashing
service only has to implement ``digest``.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Protocol

import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import ProjectSalt
from voxl_assets.retry import TransientError, retry_with_backoff

MAX_HASH_LENGTH = 64  # the Azure DICOM service's limit on identifiers
MIN_KEY_BYTES = 16


class HashingError(Exception):
    """Hashing cannot work (no key, service refused); the message holds no value or secret."""


class HashingBackend(Protocol):
    def digest(self, project: str, domain: str, value: str) -> str:
        """64 hex characters for ``value`` in ``project`` (``domain`` separates uses)."""
        ...


class SaltStore:
    """Per-project random salts in the VOXL database, created on first use."""

    def __init__(self, database: VoxlDatabase) -> None:
        self._database = database
        self._salts: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def salt(self, project: str) -> bytes:
        with self._lock:
            if project not in self._salts:
                self._salts[project] = self._load_or_create(project)
            return self._salts[project]

    def _load_or_create(self, project: str) -> bytes:
        with self._database.session() as session:
            existing = session.scalar(
                select(ProjectSalt.salt).where(ProjectSalt.project == project)
            )
        if existing is None:
            try:
                with self._database.session() as session:
                    session.add(ProjectSalt(project=project, salt=secrets.token_hex(32)))
            except IntegrityError:
                pass  # another process created it first: use theirs
            with self._database.session() as session:
                existing = session.scalar(
                    select(ProjectSalt.salt).where(ProjectSalt.project == project)
                )
        if existing is None:
            raise HashingError(f"could not create the hashing salt of project {project}")
        return bytes.fromhex(existing)


class LocalHashing:
    """Keyed BLAKE2b in process."""

    def __init__(self, key: str | bytes, salts: SaltStore) -> None:
        key_bytes = key.encode() if isinstance(key, str) else key
        if len(key_bytes) < MIN_KEY_BYTES:
            raise HashingError(
                f"the hashing key must be at least {MIN_KEY_BYTES} bytes: set VOXL_HASHING_KEY "
                "to a long random secret (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        self._key = hashlib.blake2b(key_bytes, digest_size=32).digest()  # blake2b keys <= 64 bytes
        self._salts = salts

    def digest(self, project: str, domain: str, value: str) -> str:
        data = self._salts.salt(project) + domain.encode() + b"\0" + value.encode("utf-8")
        return hashlib.blake2b(data, key=self._key, digest_size=32).hexdigest()


class RemoteHashing:
    """The same interface over an HTTP hashing service: ``POST {url}/digest`` with
    ``{"project", "domain", "value"}`` returning ``{"digest": <64 hex>}``. The service holds the
    key and the salts; VOXL never sees them."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/") + "/digest"
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout

    def _post(self, payload: dict[str, str]) -> str:
        try:
            response = self._session.post(self._url, json=payload, timeout=self._timeout)
        except requests.RequestException as exc:
            raise TransientError(f"hashing service unreachable ({type(exc).__name__})") from None
        if response.status_code >= 500:
            raise TransientError(f"hashing service error {response.status_code}")
        if response.status_code != 200:
            raise HashingError(f"hashing service refused the request ({response.status_code})")
        digest = str(response.json().get("digest", ""))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise HashingError("hashing service returned a malformed digest")
        return digest

    def digest(self, project: str, domain: str, value: str) -> str:
        payload = {"project": project, "domain": domain, "value": value}
        return retry_with_backoff(
            lambda: self._post(payload), attempts=4, initial_delay=0.2, what="hashing request"
        )


class ProjectHasher:
    """A project's view of the hashing back end, with the derived pseudonyms VOXL writes.

    Results are memoised per hasher (a study's hundreds of instances share a few UIDs).
    """

    def __init__(self, backend: HashingBackend, project: str) -> None:
        self.backend = backend
        self.project = project
        self._memo: dict[tuple[str, str], str] = {}

    def _digest(self, domain: str, value: str) -> str:
        key = (domain, value)
        found = self._memo.get(key)
        if found is None:
            found = self.backend.digest(self.project, domain, value)
            if len(self._memo) < 100_000:
                self._memo[key] = found
        return found

    def hash(self, value: str, length: int = MAX_HASH_LENGTH, domain: str = "id") -> str:
        """Hex pseudonym of ``value``, at most ``length`` (<= 64) characters."""
        return self._digest(domain, value)[: min(length, MAX_HASH_LENGTH)]

    def uid(self, source_uid: str) -> str:
        """A pseudonymous UID under the UUID-derived root 2.25 (PS3.5 B.2): at most 44 characters."""
        return "2.25." + str(int(self._digest("uid", source_uid)[:32], 16))

    def date_shift_days(self, patient_key: str, maximum: int) -> int:
        """A per-patient shift in 1..maximum days (0 when ``maximum`` is 0): one patient's dates
        all move together, so intervals between their studies survive."""
        if maximum <= 0:
            return 0
        return int(self._digest("date-shift", patient_key)[:8], 16) % maximum + 1
