"""Make sure a Dagster instance is configured before the CLI or the demo uses one."""

from __future__ import annotations

import os
from pathlib import Path

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir, make_private_file

LOCAL_DAGSTER_YAML = settings.REPO_ROOT / "deployments" / "local" / "dagster.yaml"
# A run over a range of study partitions logs one "materialization planned" event per asset
# instead of one per asset and partition (600 event writes for a 200-study run otherwise, about a
# third of Dagster's cost per study). What the UI loses: the partitions of a run that fails as a
# whole are not marked failed (VOXL's own per-study state, `voxl status`, is unaffected: a study's
# failure never fails the run). Read by whichever process creates runs: `voxl` and the demo set it
# for themselves and the Dagster processes they start; set it in a deployment's environment too.
PLANNED_EVENTS_VARIABLE = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


def one_planned_event_per_run() -> None:
    """Set ``PLANNED_EVENTS_VARIABLE`` unless the deployment chose otherwise."""
    os.environ.setdefault(PLANNED_EVENTS_VARIABLE, "true")


def ensure_dagster_home() -> Path:
    """Use ``DAGSTER_HOME`` if set, else the embedded default under ``$VOXL_HOME/dagster``; create
    the folder and give it the embedded default's ``dagster.yaml`` when it has none.

    A folder VOXL creates is private (0700), and so is the embedded default's even if it exists
    already: Dagster's storage names runs and partitions (``voxl_assets/at_rest.py``)."""
    one_planned_event_per_run()
    existing = os.environ.get("DAGSTER_HOME")
    home = Path(existing) if existing else settings.voxl_home() / "dagster"
    make_private_dir(home, tighten=not existing)
    target = home / "dagster.yaml"
    if not target.exists():
        make_private_file(target).write_bytes(LOCAL_DAGSTER_YAML.read_bytes())
    os.environ["DAGSTER_HOME"] = str(home)
    if "VOXL_DAGSTER_LOGS_DIR" not in os.environ:
        os.environ["VOXL_DAGSTER_LOGS_DIR"] = str(make_private_dir(home / "logs"))
    return home
