"""The code location: every asset, sensor and resource of VOXL in one ``Definitions``.

Reading this file tells you the whole system. The resources are chosen per deployment by one
variable, ``VOXL_DEPLOYMENT``, as Dagster's example projects do:

- ``local`` (the default): the embedded default. SQLite and every folder under ``VOXL_HOME``
  (``./.voxl``), each replaced by its variable where one is set. With
  ``VOXL_LOCAL_DELIVERY_DIR`` set, every project delivers into that folder instead of its own
  destinations (trying a production project on a laptop).
- ``production``: nothing is guessed. ``VOXL_DATABASE_URL`` must be set, and every folder comes
  from its variable or from ``VOXL_HOME``; a run whose setting is missing fails at launch naming
  the variable. Deliveries always go to the projects' own destinations.

Each setting is given here, from its variable (``resources/environment.py``), so the UI's
resource page shows how the deployment is configured; secrets are ``EnvVar``s, never shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster import Definitions, EnvVar

from io_managers.extract_tables import ExtractTablesIOManager
from resources.destinations import FolderDestinationsResource, ProjectDestinationsResource
from resources.environment import configured
from resources.extracts import ExtractsFolderResource
from resources.hashing import HashingResource
from resources.imaging import StoresResource, VnaResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.export_sensor import extract_export_sensor
from sensors.extract_sensor import new_extract_sensor
from sensors.study_sensor import study_batch_sensor
from sensors.window_sensor import archive_window_sensor
from voxl_assets import settings
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.assets.export import EXTRACT_TABLES, ehr_bundle, mapping_table
from voxl_assets.assets.imaging import study_pipeline
from voxl_assets.at_rest import restrict_umask
from voxl_assets.dagster_storage import keep_event_log_engines
from voxl_assets.distributed import executor_from_environment

DEPLOYMENT_VARIABLE = "VOXL_DEPLOYMENT"
DEPLOYMENTS = ("local", "production")


def _shared_resources(home: Path | None) -> dict[str, Any]:
    """What both deployments configure alike; ``home`` gives the folders' defaults (None: each
    folder's variable is required)."""

    def folder(name: str) -> str | None:
        return None if home is None else str(home / name)

    folders = {
        "raw_cache_dir": folder("raw-cache"),
        "anonymised_dir": folder("anon-store"),
        "export_dir": folder("exports"),
    }
    return {
        "projects": configured(
            ProjectRegistryResource,
            {"directory": "VOXL_PROJECTS_DIR"},
            directory=str(settings.REPO_ROOT / "project_definitions"),
        ),
        "extracts": configured(
            ExtractsFolderResource,
            {"directory": "VOXL_EXTRACTS_DIR", "quiet_seconds": "VOXL_EXTRACT_QUIET_SECONDS"},
            **_given(directory=folder("extracts")),
        ),
        # The hashing key is a secret: only ever from the environment, required at launch. A
        # hashing service (VOXL_HASHING_URL) holds the key and salts itself (its token is
        # secret): a deployment that uses one has no key to set.
        "hashing": configured(
            HashingResource,
            {"remote_url": "VOXL_HASHING_URL", "remote_token": "VOXL_HASHING_TOKEN"},
            **({} if os.environ.get("VOXL_HASHING_URL") else {"key": EnvVar("VOXL_HASHING_KEY")}),
        ),
        "vna": configured(
            VnaResource,
            {
                "archives_file": "VOXL_ARCHIVES_FILE",
                "kind": "VOXL_VNA_KIND",
                "host": "VOXL_VNA_HOST",
                "port": "VOXL_VNA_PORT",
                "ae_title": "VOXL_VNA_AE_TITLE",
                "calling_ae_title": "VOXL_AE_TITLE",
                "retrieve": "VOXL_VNA_RETRIEVE",
                "store_scp_port": "VOXL_STORE_SCP_PORT",
                "store_scp_host": "VOXL_STORE_SCP_HOST",
                "move_source_addresses": "VOXL_VNA_MOVE_SOURCE_ADDRESSES",
                "dicomweb_url": "VOXL_VNA_DICOMWEB_URL",
                "queries_per_second": "VOXL_VNA_QUERIES_PER_SECOND",
                "timeout_seconds": "VOXL_VNA_TIMEOUT_SECONDS",
                "retry_delay_seconds": "VOXL_VNA_RETRY_DELAY_SECONDS",
                "study_workers": "VOXL_STUDY_WORKERS",
            },
        ),
        "stores": configured(
            StoresResource,
            {
                "raw_cache_dir": "VOXL_RAW_CACHE_DIR",
                "raw_cache_max_bytes": "VOXL_RAW_CACHE_MAX_BYTES",
                "anonymised_dir": "VOXL_ANON_STORE_DIR",
                "anonymised_max_bytes": "VOXL_ANON_STORE_MAX_BYTES",
                "anonymised_retention_hours": "VOXL_ANONYMISED_RETENTION_HOURS",
                "export_dir": "VOXL_EXPORT_DIR",
            },
            **_given(**folders),
        ),
        # The per-extract tables (mapping table, exclusions) as parquet.
        EXTRACT_TABLES: configured(
            ExtractTablesIOManager,
            {"base_dir": "VOXL_TABLES_DIR"},
            **_given(base_dir=folder("tables")),
        ),
    }


def _given(**values: str | None) -> dict[str, str]:
    """The defaults a deployment has (a folder under VOXL_HOME); None: no default."""
    return {name: value for name, value in values.items() if value is not None}


def local_resources() -> dict[str, Any]:
    """The embedded default: SQLite and every folder under ``VOXL_HOME``."""
    home = settings.voxl_home()
    if os.environ.get("VOXL_LOCAL_DELIVERY_DIR"):
        destinations: Any = configured(
            FolderDestinationsResource, {"root": "VOXL_LOCAL_DELIVERY_DIR"}
        )
    else:
        destinations = configured(
            ProjectDestinationsResource,
            {"local_root": "VOXL_LOCAL_DESTINATION_ROOT"},
            local_root=str(home),
        )
    return {
        **_shared_resources(home),
        "voxl_db": configured(
            VoxlDatabaseResource,
            {"url": "VOXL_DATABASE_URL"},
            url=f"sqlite:///{home / 'voxl.db'}",
        ),
        "destinations": destinations,
    }


def production_resources() -> dict[str, Any]:
    """A hospital deployment: the database is always named, never a SQLite file by default,
    and the folders come from their variables or from ``VOXL_HOME`` when that is set."""
    value = os.environ.get("VOXL_HOME")
    home = Path(value).resolve() if value else None
    return {
        **_shared_resources(home),
        "voxl_db": configured(VoxlDatabaseResource, {"url": "VOXL_DATABASE_URL"}),
        "destinations": configured(
            ProjectDestinationsResource,
            {"local_root": "VOXL_LOCAL_DESTINATION_ROOT"},
            **_given(local_root=str(home) if home else None),
        ),
    }


def deployment() -> str:
    """The deployment ``VOXL_DEPLOYMENT`` names (``local`` when unset).

    Raises:
        ValueError: it names neither ``local`` nor ``production``.
    """
    name = os.environ.get(DEPLOYMENT_VARIABLE, "local") or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"{DEPLOYMENT_VARIABLE} must be one of {', '.join(DEPLOYMENTS)}")
    return name


def deployment_resources() -> dict[str, Any]:
    """The resources of the deployment this environment names, configured from it now."""
    return production_resources() if deployment() == "production" else local_resources()


def build_definitions() -> Definitions:
    return Definitions(
        assets=[cohort_messages, study_pipeline, mapping_table, ehr_bundle],
        sensors=[
            new_extract_sensor,
            study_batch_sensor,
            archive_window_sensor,
            extract_export_sensor,
        ],
        resources=deployment_resources(),
        # VOXL_EXECUTOR=celery: steps on Celery workers of several hosts (voxl_assets/distributed.py)
        executor=executor_from_environment(),
    )


# Every Dagster process that runs VOXL code (code servers, run workers, step workers) loads this
# module before it writes anything: what it writes is private (voxl_assets/at_rest.py).
restrict_umask()
# Run workers load these definitions: their event writes to a SQLite event log reuse engines.
keep_event_log_engines()
defs = build_definitions()
