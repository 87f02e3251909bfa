"""The anonymised store: de-identified studies waiting for upload, one folder per study.

Folders are named by study partition (``<project>/<study id>``), never by an identifier. A study
appears all at once (written to a staging folder, then renamed), so an upload never sends half a
study.

The store is a waiting room, not an archive: a study is kept only until its destination has
confirmed it (then removed at once, or after ``retention_hours``), and the store is bounded in
bytes like the raw cache. When a new study would not fit, delivered studies go first (oldest
delivery first), then undelivered ones (oldest first): an upload that finds its study gone
anonymises it again from the raw cache or the archive (``imaging/stages.py``), with the same
pseudonyms, so nothing is lost but time. An index (SQLite, ``index.sqlite`` in the store) records
each study's size and when it was written and delivered; every change to it happens inside one
``BEGIN IMMEDIATE`` transaction, which SQLite serialises across the processes of several runs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from voxl_assets.deid.engine import iter_study_files, replace_tree
from voxl_assets.vna.cache import index_connection

DEFAULT_MAX_BYTES = 50 * 1024**3
INDEX_NAME = "index.sqlite"


def tree_size(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (a study folder holds series folders)."""
    total = 0
    for folder, _dirs, names in os.walk(directory):
        for name in names:
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


class AnonymisedStore:
    def __init__(
        self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, retention_hours: float = 0
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("the anonymised store's size bound must be positive")
        if retention_hours < 0:
            raise ValueError("the anonymised store's retention cannot be negative")
        self.root = root
        self.max_bytes = max_bytes
        self.retention_hours = retention_hours
        self._staging = root / ".staging"
        self._trash = root / ".trash"
        root.mkdir(parents=True, exist_ok=True)
        self._index_path = root / INDEX_NAME
        self._connections = threading.local()
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS studies (project TEXT NOT NULL, study_id INTEGER NOT"
                " NULL, bytes INTEGER NOT NULL, written_at REAL NOT NULL, delivered_at REAL,"
                " PRIMARY KEY (project, study_id))"
            )
            self._adopt_unindexed(db)
        self._empty_trash()

    # --- index -----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The index's write lock, held across processes until the block ends."""
        connection = index_connection(self._connections, self._index_path)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _adopt_unindexed(self, db: sqlite3.Connection) -> None:
        """Index study folders the index does not know (a store from before the index, or a
        crash between rename and record) as undelivered; forget rows whose folder is gone."""
        known = {(str(p), int(s)) for p, s in db.execute("SELECT project, study_id FROM studies")}
        present: set[tuple[str, int]] = set()
        for project_dir in self.root.iterdir():
            if not project_dir.is_dir() or project_dir.name.startswith("."):
                continue
            for study_dir in project_dir.iterdir():
                if not (study_dir.is_dir() and study_dir.name.isdigit()):
                    continue
                key = (project_dir.name, int(study_dir.name))
                present.add(key)
                if key not in known:
                    db.execute(
                        "INSERT INTO studies (project, study_id, bytes, written_at) VALUES"
                        " (?, ?, ?, ?)",
                        (*key, tree_size(study_dir), study_dir.stat().st_mtime),
                    )
        for key in known - present:
            db.execute("DELETE FROM studies WHERE project = ? AND study_id = ?", key)

    def _discard(self, project: str, study_id: int) -> None:
        """Move the study's folder out of sight at once (a rename); deleted outside the lock."""
        self._trash.mkdir(exist_ok=True)
        with suppress(FileNotFoundError):
            os.replace(
                self.study_dir(project, study_id),
                self._trash / f"{project}-{study_id}-{uuid.uuid4().hex[:8]}",
            )

    def _empty_trash(self) -> None:
        if self._trash.is_dir():
            for folder in self._trash.iterdir():
                shutil.rmtree(folder, ignore_errors=True)

    # --- studies ---------------------------------------------------------------------------

    def study_dir(self, project: str, study_id: int) -> Path:
        return self.root / project / str(study_id)

    @contextmanager
    def writing(self, project: str, study_id: int) -> Iterator[Path]:
        """A fresh staging folder; on success it replaces the study's folder (making room within
        the bound first), else it is removed."""
        self._staging.mkdir(parents=True, exist_ok=True)
        staging = self._staging / f"{project}-{study_id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        size = tree_size(staging)
        failure: BaseException | None = None
        try:
            with self._transaction() as db:
                self._evict_for(db, size, keep=(project, study_id))
                try:
                    replace_tree(staging, self.study_dir(project, study_id))
                except BaseException as error:
                    # The evicted folders are in the trash already: their rows go with them
                    # (committed), or the index would count them until the next start-up.
                    failure = error
                else:
                    db.execute(
                        "INSERT INTO studies (project, study_id, bytes, written_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT(project, study_id) DO UPDATE SET"
                        " bytes = excluded.bytes, written_at = excluded.written_at,"
                        " delivered_at = NULL",
                        (project, study_id, size, time.time()),
                    )
            if failure is not None:
                raise failure
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._empty_trash()

    def _evict_for(self, db: sqlite3.Connection, incoming: int, keep: tuple[str, int]) -> None:
        """Remove delivered studies (oldest delivery first), then undelivered ones (oldest
        first), until ``incoming`` more bytes fit. A study larger than the whole store is still
        written: refusing it would stop its delivery, and it leaves once delivered."""
        used = int(
            db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM studies"
                " WHERE NOT (project = ? AND study_id = ?)",
                keep,
            ).fetchone()[0]
        )
        if used + incoming <= self.max_bytes:
            return  # the usual case: the rows are read only when something must go
        rows = db.execute(
            "SELECT project, study_id, bytes FROM studies"
            " ORDER BY delivered_at IS NULL, delivered_at, written_at"
        ).fetchall()
        for project, study_id, size in rows:
            if used + incoming <= self.max_bytes:
                return
            if (project, study_id) == keep:
                continue
            self._discard(project, study_id)
            db.execute(
                "DELETE FROM studies WHERE project = ? AND study_id = ?", (project, study_id)
            )
            used -= int(size)

    def files(self, project: str, study_id: int) -> list[Path] | None:
        """The study's files, or None when it has not been anonymised (or was removed)."""
        directory = self.study_dir(project, study_id)
        if not directory.is_dir():
            return None
        return iter_study_files(directory)

    def delivered(self, project: str, study_id: int, now: float | None = None) -> None:
        """Every destination of the study has confirmed it: remove it now, or mark it for
        removal once the retention has passed (and remove what has passed it meanwhile)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            if self.retention_hours == 0:
                self._discard(project, study_id)
                db.execute(
                    "DELETE FROM studies WHERE project = ? AND study_id = ?", (project, study_id)
                )
            else:
                db.execute(
                    "UPDATE studies SET delivered_at = ? WHERE project = ? AND study_id = ?"
                    " AND delivered_at IS NULL",
                    (now, project, study_id),
                )
                self._expire(db, now)
        self._empty_trash()

    def expire(self, now: float | None = None) -> int:
        """Remove delivered studies kept longer than the retention; returns how many."""
        with self._transaction() as db:
            removed = self._expire(db, time.time() if now is None else now)
        self._empty_trash()
        return removed

    def _expire(self, db: sqlite3.Connection, now: float) -> int:
        expired = db.execute(
            "SELECT project, study_id FROM studies WHERE delivered_at IS NOT NULL"
            " AND delivered_at <= ?",
            (now - self.retention_hours * 3600,),
        ).fetchall()
        for project, study_id in expired:
            self._discard(project, study_id)
            db.execute(
                "DELETE FROM studies WHERE project = ? AND study_id = ?", (project, study_id)
            )
        return len(expired)

    def remove(self, project: str, study_id: int) -> None:
        with self._transaction() as db:
            self._discard(project, study_id)
            db.execute(
                "DELETE FROM studies WHERE project = ? AND study_id = ?", (project, study_id)
            )
        self._empty_trash()

    def used_bytes(self) -> int:
        with self._transaction() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM studies").fetchone()[0])

    def studies(self) -> list[tuple[str, int]]:
        """(project, study id) of every study held, delivered or not."""
        with self._transaction() as db:
            rows = db.execute("SELECT project, study_id FROM studies ORDER BY project, study_id")
            return [(str(project), int(study_id)) for project, study_id in rows]

    def clean_staging(self) -> int:
        """Remove staging folders left by a killed run; returns how many."""
        if not self._staging.is_dir():
            return 0
        removed = 0
        for leftover in self._staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
        return removed
