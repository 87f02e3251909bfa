"""Finding complete extracts in the watched folder (plain file-system logic, no Dagster)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from voxl_assets.cohort.extract_reader import SUMMARY_FILE, is_csv_extract


def candidate_extracts(root: Path) -> Iterator[Path]:
    """Extract directories (with or without their summary yet) and CSV files directly in ``root``."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or is_csv_extract(entry):
            yield entry


def newest_change(path: Path) -> float:
    """Latest mtime of ``path`` or anything under it."""
    if path.is_file():
        return path.stat().st_mtime
    newest = path.stat().st_mtime
    for directory, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime)
            except FileNotFoundError:  # renamed away while we looked: still being written
                return time.time()
    return newest


def is_complete(path: Path, *, quiet_seconds: float, now: float | None = None) -> bool:
    """Complete: a CSV, or a directory with ``extract_summary.json``; and nothing changed in it
    for ``quiet_seconds`` (a file still growing has a fresh mtime)."""
    if path.is_dir() and not (path / SUMMARY_FILE).is_file():
        return False
    now = time.time() if now is None else now
    return now - newest_change(path) >= quiet_seconds
