"""The VOXL database and the project registry as Dagster resources."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from voxl_assets.db import VoxlDatabase, shared_database
from voxl_assets.project_config import ProjectRegistry


class VoxlDatabaseResource(ConfigurableResource):
    """The VOXL database: study state, pseudonyms, upload records (the only store of
    identifiers besides the raw cache)."""

    url: str = Field(description="SQLAlchemy URL (SQLite file or PostgreSQL)")

    @property
    def database(self) -> VoxlDatabase:
        return shared_database(self.url)


class ProjectRegistryResource(ConfigurableResource):
    """The registered projects: one YAML per project, added by pull request; each names its
    tag operations, filters and destinations."""

    directory: str = Field(description="the registry folder (project_definitions/)")

    def load(self) -> ProjectRegistry:
        """Every project, loaded per use: a merged pull request that adds a project takes effect
        without a restart.

        Raises:
            ProjectConfigError: a definition is invalid (the message names file and field).
        """
        return ProjectRegistry.load(Path(self.directory))
