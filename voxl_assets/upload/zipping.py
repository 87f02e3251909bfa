"""One zip per study, streamed to a temporary file (never built in memory)."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def study_zip(files: Sequence[Path], scratch: Path | None = None) -> Iterator[Path]:
    """A temporary zip of ``files`` (stored, not deflated: DICOM pixels barely compress and the
    CPU is better spent elsewhere); removed on exit."""
    with tempfile.TemporaryDirectory(prefix="voxl-zip-", dir=scratch) as tmp:
        path = Path(tmp) / "study.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for file in files:
                archive.write(file, arcname=file.name)
        yield path
