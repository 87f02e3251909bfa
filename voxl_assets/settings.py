"""Process-wide settings read from the environment.

Everything that differs between a laptop and the hospital deployment is an environment variable,
so the same code location runs on both. Secrets never live here: they are named in a project's
definition and read through Dagster ``EnvVar`` at the point of use.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def voxl_home() -> Path:
    """The data directory of the embedded default (``VOXL_HOME``, default ``./.voxl``)."""
    return Path(os.environ.get("VOXL_HOME", ".voxl")).resolve()


def database_url() -> str:
    """The VOXL database: ``VOXL_DATABASE_URL``, else SQLite under ``VOXL_HOME``."""
    url = os.environ.get("VOXL_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{voxl_home() / 'voxl.db'}"


def extracts_dir() -> Path:
    """The folder the extract sensor watches (``VOXL_EXTRACTS_DIR``)."""
    return Path(os.environ.get("VOXL_EXTRACTS_DIR", str(voxl_home() / "extracts"))).resolve()


def projects_dir() -> Path:
    """The project registry (``VOXL_PROJECTS_DIR``, default the repository's ``project_definitions``)."""
    default = REPO_ROOT / "project_definitions"
    return Path(os.environ.get("VOXL_PROJECTS_DIR", str(default))).resolve()


def raw_cache_dir() -> Path:
    """Where identifiable studies are cached (``VOXL_RAW_CACHE_DIR``)."""
    return Path(os.environ.get("VOXL_RAW_CACHE_DIR", str(voxl_home() / "raw-cache"))).resolve()


def anon_store_dir() -> Path:
    """Where anonymised studies wait for upload (``VOXL_ANON_STORE_DIR``)."""
    return Path(os.environ.get("VOXL_ANON_STORE_DIR", str(voxl_home() / "anon-store"))).resolve()


def export_dir() -> Path:
    """Root of the per-extract export directories (``VOXL_EXPORT_DIR``)."""
    return Path(os.environ.get("VOXL_EXPORT_DIR", str(voxl_home() / "exports"))).resolve()


def secrets_dir() -> Path:
    """Durable, non-git home of per-project salts (``VOXL_SECRETS_DIR``)."""
    return Path(os.environ.get("VOXL_SECRETS_DIR", str(voxl_home() / "secrets"))).resolve()


def local_destination_root() -> Path:
    """The folder every ``kind: local`` destination's ``path`` stays inside
    (``VOXL_LOCAL_DESTINATION_ROOT``, default ``VOXL_HOME``)."""
    value = os.environ.get("VOXL_LOCAL_DESTINATION_ROOT")
    return Path(value).resolve() if value else voxl_home()
