"""The code location: every asset, sensor and resource of VOXL in one ``Definitions``.

Reading this file tells you the whole system. Resources come from the environment, so the same
definitions run on the embedded default (SQLite, demo VNA, local destination) and in production.
"""

from __future__ import annotations

from dagster import Definitions

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.extract_sensor import new_extract_sensor
from voxl_assets.assets.cohort import cohort_messages


def build_definitions() -> Definitions:
    return Definitions(
        assets=[cohort_messages],
        sensors=[new_extract_sensor],
        resources={
            "voxl_db": VoxlDatabaseResource(),
            "projects": ProjectRegistryResource(),
        },
    )


defs = build_definitions()
