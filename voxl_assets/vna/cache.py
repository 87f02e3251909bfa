"""The raw cache: identifiable studies on local disk, bounded in bytes, reused across runs.

One folder per study under ``studies/<key>``, where the key is a SHA-256 of the study UID (or of
MRN + accession for the fallback search), so folder names reveal nothing. An index (SQLite, in the
cache folder) records size and last use. A study is written into ``.staging`` and renamed into
place when complete, so a crashed retrieval never leaves a study that looks complete. When a new
study would not fit, the least recently used studies that no running work holds are evicted.

A retrieval that breaks off part-way keeps what arrived as a *partial* entry: ``lookup`` does not
return it, but the next retrieval tops it up with only the missing instances (files are named by
a hash of their SOP Instance UID, so the cache knows which instances it holds without reading them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


class CacheFull(Exception):
    """The study does not fit in the cache even after evicting everything unpinned."""


def cache_key(study_uid: str = "", mrn: str = "", accession_number: str = "") -> str:
    """The cache key of a study: by UID when known, else by MRN + accession (never reversible
    without the identifiers themselves)."""
    if study_uid:
        material = f"uid\0{study_uid}"
    else:
        material = f"mrn-accession\0{mrn}\0{accession_number}"
    return hashlib.sha256(material.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class CachedStudy:
    key: str
    directory: Path
    instances: int
    bytes: int
    complete: bool = True

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def file_names(self) -> set[str]:
        return {p.name for p in self.directory.iterdir() if p.is_file()}


def folder_size(directory: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files in ``directory``."""
    count = size = 0
    for entry in os.scandir(directory):
        if entry.is_file():
            count += 1
            size += entry.stat().st_size
    return count, size


class RawCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._studies = root / "studies"
        self._staging = root / ".staging"
        self._studies.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._index_path = root / "index.sqlite"
        with self._index() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS studies (key TEXT PRIMARY KEY, instances INTEGER,"
                " bytes INTEGER, last_used REAL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(studies)")}
            if "complete" not in columns:  # caches made before partial entries existed
                db.execute("ALTER TABLE studies ADD COLUMN complete INTEGER NOT NULL DEFAULT 1")
        self._forget_missing()

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self._index_path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            yield connection
        finally:
            connection.close()

    def _forget_missing(self) -> None:
        """After a crash: drop index rows without a folder, and folders without a row."""
        with self._lock, self._index() as db:
            keys = {row[0] for row in db.execute("SELECT key FROM studies")}
            for key in keys:
                if not (self._studies / key).is_dir():
                    db.execute("DELETE FROM studies WHERE key = ?", (key,))
            for folder in self._studies.iterdir():
                if folder.name not in keys:
                    shutil.rmtree(folder, ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove staging folders of retrievals that died (call when no retrieval runs)."""
        removed = 0
        for leftover in self._staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
        return removed

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, key: str, *, partial: bool = False) -> CachedStudy | None:
        """The complete cached study, marking it used; None on a miss. With ``partial``, an
        incomplete entry (an interrupted retrieval) is returned too."""
        with self._lock, self._index() as db:
            row = db.execute(
                "SELECT instances, bytes, complete FROM studies WHERE key = ?", (key,)
            ).fetchone()
            if row is None or not (self._studies / key).is_dir():
                return None
            if not row[2] and not partial:
                return None
            db.execute("UPDATE studies SET last_used = ? WHERE key = ?", (time.time(), key))
        return CachedStudy(key, self._studies / key, int(row[0]), int(row[1]), bool(row[2]))

    def used_bytes(self) -> int:
        with self._index() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM studies").fetchone()[0])

    def keys_by_age(self) -> list[str]:
        with self._index() as db:
            return [r[0] for r in db.execute("SELECT key FROM studies ORDER BY last_used, key")]

    # --- pinning ---------------------------------------------------------------------------

    @contextmanager
    def pin(self, key: str) -> Iterator[None]:
        """Hold ``key`` against eviction while running work reads it."""
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[key] -= 1
                if not self._pins[key]:
                    del self._pins[key]

    # --- writing ---------------------------------------------------------------------------

    @contextmanager
    def writing(
        self,
        key: str,
        *,
        keep_existing: bool = False,
        keep_partial_on: tuple[type[BaseException], ...] = (),
    ) -> Iterator[Path]:
        """A staging folder to write the study into; committed atomically on success.

        With ``keep_existing``, the staging folder starts as a copy (hard links) of the cached
        study, so a top-up only adds the missing instances. When the body raises one of
        ``keep_partial_on`` (an interrupted transfer), what arrived is committed as a partial entry
        for the next attempt to top up; any other error discards the staging folder.
        """
        staging = self._staging / f"{key}-{uuid.uuid4().hex[:8]}"
        existing = self._studies / key
        if keep_existing and existing.is_dir():
            shutil.copytree(existing, staging, copy_function=os.link)
        else:
            staging.mkdir(parents=True)
        try:
            yield staging
        except keep_partial_on:
            if any(staging.iterdir()):
                # If even the partial study does not fit, nothing is kept: the retrieval's own
                # error is the one to report.
                with suppress(CacheFull):
                    self._commit(key, staging, complete=False)
            else:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._commit(key, staging)

    def _commit(self, key: str, staging: Path, *, complete: bool = True) -> None:
        instances, size = folder_size(staging)
        with self._lock:
            if size > self.max_bytes:
                shutil.rmtree(staging, ignore_errors=True)
                raise CacheFull(
                    f"study of {size} bytes is larger than the whole raw cache ({self.max_bytes} "
                    "bytes): raise VOXL_RAW_CACHE_MAX_BYTES"
                )
            self._evict_for(size, keep=key)
            final = self._studies / key
            old = None
            if final.exists():
                old = final.with_name(f"{key}.old-{uuid.uuid4().hex[:6]}")
                os.replace(final, old)
            os.replace(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            with self._index() as db:
                db.execute(
                    "INSERT INTO studies (key, instances, bytes, last_used, complete)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
                    " instances = excluded.instances, bytes = excluded.bytes,"
                    " last_used = excluded.last_used, complete = excluded.complete",
                    (key, instances, size, time.time(), int(complete)),
                )

    def _evict_for(self, incoming: int, keep: str) -> None:
        with self._index() as db:
            rows = db.execute("SELECT key, bytes FROM studies ORDER BY last_used, key").fetchall()
            used = sum(int(b) for k, b in rows if k != keep)
            for key, size in rows:
                if used + incoming <= self.max_bytes:
                    return
                if key == keep or self._pins.get(key):
                    continue
                shutil.rmtree(self._studies / key, ignore_errors=True)
                db.execute("DELETE FROM studies WHERE key = ?", (key,))
                used -= int(size)
            if used + incoming > self.max_bytes:
                raise CacheFull(
                    f"raw cache full: {used} bytes held by running work, {incoming} more needed;"
                    " lower the batch concurrency or raise VOXL_RAW_CACHE_MAX_BYTES"
                )
