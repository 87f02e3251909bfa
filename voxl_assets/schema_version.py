"""Which migration the VOXL database must be at, read from the migration files themselves.

Free of SQLAlchemy and Alembic (whose imports cost most of a second): every `voxl` command and
sensor tick checks the schema, and `voxl status` reads the database without SQLAlchemy at all.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "db" / "migrations"

_REVISION_LINE = re.compile(r"^(down_revision|revision)\b[^=\n]*=\s*(.+)$", re.MULTILINE)


@cache
def head_revisions() -> frozenset[str]:
    """The newest migration(s): revisions that no other revision names as its ``down_revision``."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text()):
            parsed = ast.literal_eval(value.strip())
            if name == "revision":
                revisions.add(parsed)
            elif isinstance(parsed, str):
                parents.add(parsed)
            elif parsed:
                parents.update(parsed)
    return frozenset(revisions - parents)
