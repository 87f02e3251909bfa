"""Reading VOXL's YAML configuration files without quoting them in errors.

PyYAML's errors quote the offending line with a caret under it. If a configuration path was ever
pointed at a file it should not read (a symbolic link, a mistyped environment variable), that line
would end up in a terminal, a sensor log or a Dagster event. VOXL's messages say where and what
kind of problem instead: the file, the line and column, and PyYAML's problem with quoted
fragments removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


# libyaml's safe loader where PyYAML was built with it (the wheels are): the same documents, a
# tenth of the time (tag-operation files are read at every run's start).
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(ValueError):
    """A configuration file cannot be read as YAML; the message names the file and the position."""


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """Where and what kind of YAML error, without any text of the file."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = _QUOTED.sub("(...)", exc.problem or exc.context or "syntax error")
        problem = re.split(r"['\"]", problem, maxsplit=1)[0].rstrip()  # an unbalanced quote: cut
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML: {problem}{where}"
    return f"not valid YAML ({type(exc).__name__})"


def read_yaml(path: Path) -> Any:
    """The parsed content of ``path`` (YAML's safe loader).

    Raises:
        ConfigFileError: the file is unreadable, not UTF-8, or not YAML; the message names
            ``path`` and never quotes its content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigFileError(
            f"{path}: cannot read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        return yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: {describe_yaml_error(exc)}") from None
