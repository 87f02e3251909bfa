"""The VOXL database and the project registry as Dagster resources."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from voxl_assets import settings
from voxl_assets.db import VoxlDatabase, shared_database
from voxl_assets.project_config import ProjectRegistry


class VoxlDatabaseResource(ConfigurableResource):
    """The VOXL database (``VOXL_DATABASE_URL``; SQLite under ``VOXL_HOME`` by default)."""

    url: str = ""

    @property
    def database(self) -> VoxlDatabase:
        return shared_database(self.url or settings.database_url())


class ProjectRegistryResource(ConfigurableResource):
    """The registered projects (``VOXL_PROJECTS_DIR``; the repository's ``project_definitions``)."""

    directory: str = ""

    def load(self) -> ProjectRegistry:
        # Loaded per use: a merged pull request that adds a project takes effect without restart.
        return ProjectRegistry.load(Path(self.directory) if self.directory else None)
