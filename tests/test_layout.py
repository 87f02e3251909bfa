"""The code's layering: every import points down.

``imaging/`` runs a study through retrieval (``vna/``), de-identification (``deid/``) and upload
(``upload/``); those import the study's outcomes and state from modules below all of them
(``outcomes.py``, ``study_state.py``), never from ``imaging/`` or from the Dagster layer above.
"""

import ast
from pathlib import Path

import pytest

from voxl_assets import settings

PACKAGE = settings.REPO_ROOT / "voxl_assets"
# The domain packages and modules below the study pipeline, and what they must not import.
LOWER = ["vna", "deid", "upload", "cohort", "export", "db", "outcomes.py", "study_state.py"]
ABOVE = (
    "voxl_assets.imaging",
    "voxl_assets.assets",
    "voxl_assets.definitions",
    "voxl_assets.orchestration",
    "voxl_assets.cli",
    "sensors",
    "resources",
    "io_managers",
    "dagster",
)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files(part: str) -> list[Path]:
    target = PACKAGE / part
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("part", LOWER)
def test_lower_modules_import_nothing_from_above(part: str) -> None:
    upward = [
        f"{path.relative_to(settings.REPO_ROOT)} imports {name}"
        for path in _files(part)
        for name in _imports(path)
        if any(name == above or name.startswith(above + ".") for above in ABOVE)
    ]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from voxl_assets.imaging.pipeline import Stage\n    return Stage\n"
    )
    assert _imports(module) == ["voxl_assets.imaging.pipeline"]
