"""Paths a project definition names stay inside the folder they are meant for.

A project YAML is reviewed in a pull request, but a path in it is still input: ``../../etc``, an
absolute path or a symbolic link planted in the registry would make VOXL read (and quote in an
error) or write a file anywhere the worker may. Names are therefore checked twice: as written
(relative, no ``..``), when the definition is validated; and as resolved on disk (symbolic links
followed), when the file is opened, against the folder they must stay in.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathEscapeError(ValueError):
    """A path leaves the folder it must stay in; the message names the folder, not file contents."""


def check_relative_name(name: str) -> str:
    """``name`` if it is a relative path of ordinary parts (for pydantic validators).

    Raises:
        ValueError: empty, absolute, home-relative (``~``), with a ``..`` part, a backslash or a
            NUL character.
    """
    if not name.strip():
        raise ValueError("must not be empty")
    if "\\" in name or "\0" in name:
        raise ValueError("must use '/' between folder names (no backslash or NUL)")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("~"):
        raise ValueError("must be a relative path (absolute paths are refused)")
    if ".." in path.parts:
        raise ValueError("must not contain '..' (it has to stay inside its folder)")
    return name


def confined_path(root: Path, name: str) -> Path:
    """``root / name`` with symbolic links resolved, if it stays inside ``root`` (also resolved).

    The target need not exist yet (a destination folder is created on first upload).

    Raises:
        PathEscapeError: ``name`` is not a plain relative path, or it resolves outside ``root``
            (through a symbolic link).
    """
    try:
        check_relative_name(name)
    except ValueError as exc:
        raise PathEscapeError(str(exc)) from None
    base = root.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise PathEscapeError(f"resolves outside {base} (through a symbolic link): refused")
    return target
