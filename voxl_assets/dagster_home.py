"""Make sure a Dagster instance is configured before the CLI or the demo uses one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from voxl_assets import settings

LOCAL_DAGSTER_YAML = settings.REPO_ROOT / "deployments" / "local" / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """Use ``DAGSTER_HOME`` if set, else the embedded default under ``$VOXL_HOME/dagster``; create
    the folder and give it the embedded default's ``dagster.yaml`` when it has none."""
    existing = os.environ.get("DAGSTER_HOME")
    home = Path(existing) if existing else settings.voxl_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(LOCAL_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault("VOXL_DAGSTER_LOGS_DIR", str(home / "logs"))
    return home
