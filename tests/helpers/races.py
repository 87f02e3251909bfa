"""Races between processes, staged in one: what another process does between two steps."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


def folders_deleted_by_another_once_listed(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = (".trash", ".staging")
) -> None:
    """Listing a folder called one of ``names`` returns its entries as they were, but "another
    process" deletes each of them just after: whoever removes them next finds them gone.
    ``monkeypatch.undo()`` ends it."""
    listed = Path.iterdir

    def listed_then_deleted_by_another(path: Path) -> Iterator[Path]:
        entries = list(listed(path))
        if path.name in names:
            for entry in entries:
                shutil.rmtree(entry)
        return iter(entries)

    monkeypatch.setattr(Path, "iterdir", listed_then_deleted_by_another)
