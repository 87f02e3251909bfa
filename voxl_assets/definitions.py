"""The code location: every asset, sensor and resource of VOXL in one ``Definitions``.

Reading this file tells you the whole system. Resources come from the environment, so the same
definitions run on the embedded default (SQLite, demo VNA, local destination) and in production.
"""

from dagster import Definitions, EnvVar

from io_managers.extract_tables import ExtractTablesIOManager
from resources.hashing import HashingResource
from resources.imaging import StoresResource, VnaResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.export_sensor import extract_export_sensor
from sensors.extract_sensor import new_extract_sensor
from sensors.study_sensor import study_batch_sensor
from sensors.window_sensor import archive_window_sensor
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.assets.export import EXTRACT_TABLES, ehr_bundle, mapping_table
from voxl_assets.assets.imaging import study_pipeline
from voxl_assets.at_rest import restrict_umask


def build_definitions() -> Definitions:
    return Definitions(
        assets=[cohort_messages, study_pipeline, mapping_table, ehr_bundle],
        sensors=[
            new_extract_sensor,
            study_batch_sensor,
            archive_window_sensor,
            extract_export_sensor,
        ],
        resources={
            "voxl_db": VoxlDatabaseResource(),
            "projects": ProjectRegistryResource(),
            # The hashing key is a secret: only ever from the environment.
            "hashing": HashingResource(key=EnvVar("VOXL_HASHING_KEY")),
            "vna": VnaResource(),
            "stores": StoresResource(),
            # The per-extract tables (mapping table, exclusions) as parquet under VOXL_HOME.
            EXTRACT_TABLES: ExtractTablesIOManager(),
        },
    )


# Every Dagster process that runs VOXL code (code servers, run workers, step workers) loads this
# module before it writes anything: what it writes is private (voxl_assets/at_rest.py).
restrict_umask()
defs = build_definitions()
