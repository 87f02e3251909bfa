"""The raw cache: identifiable studies on local disk, bounded in bytes, reused across runs.

One folder per study under ``studies/<key>``, where the key is a SHA-256 of the study UID (or of
MRN + accession for the fallback search), so folder names reveal nothing. An index (SQLite, in the
cache folder) records size and last use. A study is written into ``.staging`` and renamed into
place when complete, so a crashed retrieval never leaves a study that looks complete. When a new
study would not fit, the least recently used studies that no running work holds are evicted.

Several processes share one cache (Dagster runs are separate processes): everything that decides
what exists (moving a study into place, evicting, forgetting leftovers after a crash) happens
inside one ``BEGIN IMMEDIATE`` transaction on the index, which SQLite serialises across
processes. Pins are rows of the index naming the process that holds them (pid and start time), so
a process that crashed holds nothing: its pins are ignored and removed.

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
from functools import cache
from pathlib import Path

from voxl_assets.sqlite_wal import use_wal


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


def process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from /proc), '' where that is unknown, so a
    pid reused by a later process is not taken for the one that pinned."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name


@cache
def _own_start() -> str:
    return process_start(os.getpid())


def process_alive(pid: int, started: str) -> bool:
    """Whether the process that wrote (pid, started) is still running on this host."""
    if pid == os.getpid():
        return started == _own_start()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or process_start(pid) in ("", started)


INDEX_TIMEOUT_SECONDS = 60
EVICTION_BATCH = 64  # least recently used studies read at a time when making room


def index_connection(connections: threading.local, path: Path) -> sqlite3.Connection:
    """This thread's connection to the SQLite index at ``path``, opened on first use (opening
    one per lookup cost more than the lookup). Autocommit: writers say ``BEGIN IMMEDIATE``.
    WAL with synchronous=NORMAL: a power cut may lose the last commits, never the index; the
    folders are the truth and a restart reconciles them with it."""
    connection: sqlite3.Connection | None = getattr(connections, "connection", None)
    if connection is None or getattr(connections, "pid", None) != os.getpid():
        connection = sqlite3.connect(path, timeout=INDEX_TIMEOUT_SECONDS, isolation_level=None)
        use_wal(connection, INDEX_TIMEOUT_SECONDS)
        connection.execute("PRAGMA synchronous=NORMAL")
        connections.connection, connections.pid = connection, os.getpid()
    return connection


class RawCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._studies = root / "studies"
        self._staging = root / ".staging"
        self._trash = root / ".trash"
        for folder in (self._studies, self._staging, self._trash):
            folder.mkdir(parents=True, exist_ok=True)
        self._index_path = root / "index.sqlite"
        self._connections = threading.local()
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS studies (key TEXT PRIMARY KEY, instances INTEGER,"
                " bytes INTEGER, last_used REAL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(studies)")}
            if "complete" not in columns:  # caches made before partial entries existed
                db.execute("ALTER TABLE studies ADD COLUMN complete INTEGER NOT NULL DEFAULT 1")
            db.execute(
                "CREATE TABLE IF NOT EXISTS pins (token TEXT PRIMARY KEY, key TEXT NOT NULL,"
                " pid INTEGER NOT NULL, started TEXT NOT NULL, pinned_at REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS pins_by_key ON pins (key)")
            db.execute("CREATE INDEX IF NOT EXISTS studies_by_use ON studies (last_used, key)")
        self._forget_missing()

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        yield index_connection(self._connections, self._index_path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The index's write lock, held across processes until the block ends (committed on
        success, rolled back on error)."""
        with self._index() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _forget_missing(self) -> None:
        """After a crash: drop index rows without a folder, folders without a row, pins of dead
        processes, and staging folders of retrievals whose process died."""
        with self._transaction() as db:
            keys = {row[0] for row in db.execute("SELECT key FROM studies")}
            for key in keys:
                if not (self._studies / key).is_dir():
                    db.execute("DELETE FROM studies WHERE key = ?", (key,))
            for folder in self._studies.iterdir():
                if folder.name not in keys:
                    self._discard(folder)
            self._live_pins(db)
        self.clean_staging(only_dead=True)
        self._empty_trash()

    def _discard(self, folder: Path) -> None:
        """Move ``folder`` out of sight at once (a rename); it is deleted outside the lock."""
        with suppress(FileNotFoundError):
            os.replace(folder, self._trash / f"{folder.name}-{uuid.uuid4().hex[:8]}")

    def _empty_trash(self) -> None:
        for folder in self._trash.iterdir():
            shutil.rmtree(folder, ignore_errors=True)

    def clean_staging(self, *, only_dead: bool = False) -> int:
        """Remove staging folders of retrievals that died; with ``only_dead`` False, every one
        (call only when no retrieval runs)."""
        leftovers = [
            folder
            for folder in self._staging.iterdir()
            if not (only_dead and _staging_owner_alive(folder.name))
        ]
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        return len(leftovers)

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, key: str, *, partial: bool = False) -> CachedStudy | None:
        """The complete cached study, marking it used; None on a miss. With ``partial``, an
        incomplete entry (an interrupted retrieval) is returned too. Hold ``pin(key)`` while
        reading its files: an unpinned study may be evicted by any process."""
        with self._index() as db:
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
    def pin(self, *keys: str) -> Iterator[None]:
        """Hold ``keys`` against eviction by any process while this work reads them. A key need
        not be cached yet: pin before looking up, so nothing can evict it in between."""
        token = uuid.uuid4().hex
        rows = [
            (f"{token}:{n}", key, os.getpid(), _own_start(), time.time())
            for n, key in enumerate(keys)
        ]
        if not rows:
            yield
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO pins (token, key, pid, started, pinned_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        try:
            yield
        finally:
            with self._transaction() as db:
                db.executemany("DELETE FROM pins WHERE token = ?", [(row[0],) for row in rows])

    def pinned_keys(self) -> set[str]:
        """Keys that running work (of any live process) holds."""
        with self._transaction() as db:
            return self._live_pins(db)

    def _live_pins(self, db: sqlite3.Connection) -> set[str]:
        """Pinned keys; pins of processes that died are deleted (their work ended with them)."""
        live: set[str] = set()
        for token, key, pid, started in db.execute(
            "SELECT token, key, pid, started FROM pins"
        ).fetchall():
            if process_alive(int(pid), str(started)):
                live.add(key)
            else:
                db.execute("DELETE FROM pins WHERE token = ?", (token,))
        return live

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
        staging = self._staging / f"{key}-{os.getpid()}-{_own_start()}-{uuid.uuid4().hex[:8]}"
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
        if size > self.max_bytes:
            shutil.rmtree(staging, ignore_errors=True)
            raise CacheFull(
                f"study of {size} bytes is larger than the whole raw cache ({self.max_bytes} "
                "bytes): raise VOXL_RAW_CACHE_MAX_BYTES"
            )
        try:
            # The folder is moved into place and recorded in one transaction: a process starting
            # up meanwhile waits for it, and never sees a folder without its row.
            with self._transaction() as db:
                self._evict_for(db, size, keep=key)
                final = self._studies / key
                if final.exists():
                    self._discard(final)
                os.replace(staging, final)
                db.execute(
                    "INSERT INTO studies (key, instances, bytes, last_used, complete)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
                    " instances = excluded.instances, bytes = excluded.bytes,"
                    " last_used = excluded.last_used, complete = excluded.complete",
                    (key, instances, size, time.time(), int(complete)),
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._empty_trash()

    def _evict_for(self, db: sqlite3.Connection, incoming: int, keep: str) -> None:
        """Evict the least recently used unpinned studies until ``incoming`` more bytes fit.
        The total is summed by SQLite and the oldest are read a batch at a time (by the
        ``studies_by_use`` index): reading every row at every write made a 10,000-study cache
        cost each new study milliseconds more, and a 100,000-study one far more."""
        used = int(
            db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM studies WHERE key != ?", (keep,)
            ).fetchone()[0]
        )
        if used + incoming <= self.max_bytes:
            return
        pinned = self._live_pins(db)
        passed_over = 0  # rows kept (pinned, or the study itself) ahead of the next batch
        while used + incoming > self.max_bytes:
            batch = db.execute(
                "SELECT key, bytes FROM studies ORDER BY last_used, key LIMIT ? OFFSET ?",
                (EVICTION_BATCH, passed_over),
            ).fetchall()
            if not batch:
                break
            for key, size in batch:
                if used + incoming <= self.max_bytes:
                    return
                if key == keep or key in pinned:
                    passed_over += 1
                    continue
                self._discard(self._studies / key)
                db.execute("DELETE FROM studies WHERE key = ?", (key,))
                used -= int(size)
        if used + incoming > self.max_bytes:
            raise CacheFull(
                f"raw cache full: {used} bytes held by running work, {incoming} more needed;"
                " lower the batch concurrency or raise VOXL_RAW_CACHE_MAX_BYTES"
            )


def _staging_owner_alive(name: str) -> bool:
    """Staging folders are named ``<key>-<pid>-<start>-<random>``; older names carry no owner
    and are taken as dead."""
    parts = name.split("-")
    if len(parts) < 4 or not parts[1].isdigit():
        return False
    return process_alive(int(parts[1]), parts[2])
