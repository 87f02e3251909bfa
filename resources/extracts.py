"""The folder OMOP ES writes extracts into, as the extract sensor watches it."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


class ExtractsFolderResource(ConfigurableResource):
    """Where new extracts arrive (folders and escape-hatch CSV files); one is read once nothing
    in it has changed for ``quiet_seconds``, so a half-copied extract is never read."""

    directory: str = Field(description="the folder the extract sensor watches")
    quiet_seconds: float = Field(
        default=30.0, description="an extract must be unchanged this long before it is read"
    )

    @property
    def path(self) -> Path:
        return Path(self.directory).resolve()
