"""The anonymised store: de-identified studies waiting for upload, one folder per study.

Folders are named by study partition (``<project>/<study id>``), never by an identifier. A study
appears all at once (written to a staging folder, then renamed), so an upload never sends half a
study.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from voxl_assets.deid.engine import iter_study_files, replace_tree


class AnonymisedStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._staging = root / ".staging"

    def study_dir(self, project: str, study_id: int) -> Path:
        return self.root / project / str(study_id)

    @contextmanager
    def writing(self, project: str, study_id: int) -> Iterator[Path]:
        """A fresh staging folder; on success it replaces the study's folder, else it is removed."""
        self._staging.mkdir(parents=True, exist_ok=True)
        staging = self._staging / f"{project}-{study_id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_tree(staging, self.study_dir(project, study_id))

    def files(self, project: str, study_id: int) -> list[Path] | None:
        """The study's files, or None when it has not been anonymised (or was removed)."""
        directory = self.study_dir(project, study_id)
        if not directory.is_dir():
            return None
        return iter_study_files(directory)

    def remove(self, project: str, study_id: int) -> None:
        shutil.rmtree(self.study_dir(project, study_id), ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove staging folders left by a killed run; returns how many."""
        if not self._staging.is_dir():
            return 0
        removed = 0
        for leftover in self._staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
        return removed
