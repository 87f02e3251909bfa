"""Scan everything VOXL wrote for identifiers (bytes, so SQLite files and logs are covered)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def files_holding(
    root: Path, needles: Iterable[str], allowed: Iterable[Path]
) -> tuple[int, list[str]]:
    """(files scanned, files holding any needle) under ``root``, skipping ``allowed`` folders and
    the VOXL database, which are the only places identifiers may live."""
    encoded = [n.encode() for n in needles if n]
    allowed = list(allowed)
    scanned, leaking = 0, []
    for path in root.rglob("*"):
        if (
            not path.is_file()
            or path.name.startswith("voxl.db")
            or any(a in path.parents for a in allowed)
        ):
            continue
        scanned += 1
        data = path.read_bytes()
        if any(n in data for n in encoded):
            leaking.append(str(path.relative_to(root)))
    return scanned, leaking
