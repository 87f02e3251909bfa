"""A folder on this machine: the demo's destination, or a staging area another tool ships.

Everything is written to a hidden ``.<name>.part`` beside its final name, flushed to disk, then
renamed (``os.replace`` is atomic on one filesystem): a reader never sees a half-written zip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from voxl_assets.upload.base import UploadError, UploadReport, UploadTarget
from voxl_assets.upload.zipping import write_zip_file


def partial_name(final_name: str) -> str:
    """The temporary name an upload is written under (hidden, never ends in ``.zip``)."""
    return f".{final_name}.part"


def _replace_atomically(final: Path, write: Callable[[Path], int]) -> int:
    """Write ``final`` through a partial file; ``write(partial) -> size``; removes it on failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(partial_name(final.name))
    try:
        size = write(partial)
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return size


def _copy(source: Path, partial: Path) -> int:
    with source.open("rb") as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
        return dst.tell()


class LocalUploader:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local://{self.root}"

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        try:
            size = _replace_atomically(
                self.root / target.relative_zip_path,
                lambda partial: write_zip_file(files, partial, fsync=True),
            )
        except OSError as exc:
            raise UploadError(f"cannot write to {self.root} ({type(exc).__name__})") from None
        return UploadReport(
            self.kind, self.describe(), len(files), size, time.monotonic() - started
        )

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        started = time.monotonic()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        total = 0
        try:
            for path in files:
                final = self.root / remote_prefix / path.relative_to(local_dir)
                total += _replace_atomically(final, functools.partial(_copy, path))
        except OSError as exc:
            raise UploadError(f"cannot write to {self.root} ({type(exc).__name__})") from None
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )
