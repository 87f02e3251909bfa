"""Where anonymised studies and EHR bundles go, as Dagster resources that own the clients.

A run (or a sensor tick) gets its own ``DestinationClients``: built per project on first use,
kept for the run's next study (an SFTP session is reused), closed when the run's resources are
torn down, however the run ends. Two kinds, swapped per deployment or in a test:

- ``ProjectDestinationsResource``: each project's own destinations, as its definition in the
  registry names them (DICOMweb, Azure DICOM, FTPS, SFTP, Azure Blob, a local folder). Secrets
  are read from the environment variables the definition names, when the client is built, and
  never shown.
- ``FolderDestinationsResource``: every project delivers into one folder, whatever its
  definition names (a laptop trying a production project; a test).
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from voxl_assets.project_config import ProjectDefinition
from voxl_assets.upload.base import FileUploader, ImageUploader
from voxl_assets.upload.destinations import (
    Builder,
    DestinationClients,
    folder_destination_builder,
    project_destination_builder,
)


class DestinationsResource(ConfigurableResource):
    """The destination clients of a run: assets take this type, a deployment or a test chooses
    the kind (below)."""

    _clients: DestinationClients | None = PrivateAttr(default=None)

    def _builder(self) -> Builder:
        raise NotImplementedError

    @property
    def clients(self) -> DestinationClients:
        """This run's clients (made on first use outside a run; ``close`` them then)."""
        if self._clients is None:
            self._clients = DestinationClients(self._builder())
        return self._clients

    def images(self, project: ProjectDefinition) -> ImageUploader | None:
        """See ``DestinationClients.images``."""
        return self.clients.images(project)

    def ehr(self, project: ProjectDefinition) -> FileUploader | None:
        """See ``DestinationClients.ehr``."""
        return self.clients.ehr(project)

    def close(self) -> None:
        if self._clients is not None:
            self._clients.close()

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._clients = DestinationClients(self._builder())

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()


class ProjectDestinationsResource(DestinationsResource):
    """Each project's own destinations, as its definition in the registry names them (images:
    DICOMweb, Azure DICOM, FTPS, SFTP, Azure Blob or a local folder; EHR bundles: a file
    destination). Clients are kept for the run's next study and closed when the run ends;
    secrets come from the variables the definition names."""

    local_root: str = Field(description="the folder every `kind: local` destination stays inside")

    def _builder(self) -> Builder:
        return project_destination_builder(Path(self.local_root))


class FolderDestinationsResource(DestinationsResource):
    """Every project delivers into one folder (images/ and ehr/), whatever its definition names:
    for trying a production project on a laptop, and for tests."""

    root: str = Field(description="the folder every delivery goes to")

    def _builder(self) -> Builder:
        return folder_destination_builder(Path(self.root))
