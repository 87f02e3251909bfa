"""A folder on this machine: the demo's destination, or a staging area another tool ships."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from voxl_assets.upload.base import UploadReport, UploadTarget
from voxl_assets.upload.zipping import study_zip


def _atomic_copy(source: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
    shutil.copyfile(source, partial)
    os.replace(partial, final)


class LocalUploader:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local://{self.root}"

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        with study_zip(files) as archive:
            size = archive.stat().st_size
            _atomic_copy(archive, self.root / target.relative_zip_path)
        return UploadReport(
            self.kind, self.describe(), len(files), size, time.monotonic() - started
        )

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        started = time.monotonic()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        total = 0
        for path in files:
            _atomic_copy(path, self.root / remote_prefix / path.relative_to(local_dir))
            total += path.stat().st_size
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )
