"""A run's destination clients: one uploader per project and role, built from the project's
definition on first use, kept for the run's next study, closed together at the end.

Keeping a client matters for SFTP, whose session costs 0.1-0.2 s to open, more than a small
study's transfer. Who builds the clients is a parameter: the project's own destinations
(``project_destination_builder``), or one folder for every project (``folder_destination_builder``,
a laptop trying a production project, or a test). No Dagster here: ``resources/destinations.py``
ties a ``DestinationClients`` to the lifetime of a run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from voxl_assets.project_config import (
    LocalDirectoryDestination,
    ProjectDefinition,
)
from voxl_assets.upload.base import FileUploader, ImageUploader
from voxl_assets.upload.factory import (
    local_uploader,
    make_file_uploader,
    make_image_uploader,
)


class Role(StrEnum):
    IMAGES = "images"  # anonymised studies
    EHR = "ehr"  # the per-extract EHR bundle


Builder = Callable[[Role, ProjectDefinition], Any]  # an uploader for the role, or None


class DestinationClients:
    """The uploaders of one run (or sensor tick), per project and role. Thread-safe: the study
    workers of a run share it.

    A client that could not be built (a secret's variable unset) is not remembered, so the next
    study tries again and reports the same ``UploadError``.
    """

    def __init__(self, build: Builder) -> None:
        self._build = build
        self._clients: dict[tuple[str, Role], Any] = {}
        self._lock = threading.Lock()

    def images(self, project: ProjectDefinition) -> ImageUploader | None:
        """The uploader of anonymised studies to ``project``'s image destination; None for
        kind 'none'.

        Raises:
            UploadError: the destination cannot be built (names the variable or the problem).
        """
        uploader: ImageUploader | None = self._get(Role.IMAGES, project)
        return uploader

    def ehr(self, project: ProjectDefinition) -> FileUploader | None:
        """The uploader of EHR bundles to ``project``'s EHR destination; None for kind 'none'.

        Raises:
            UploadError: as ``images``.
        """
        uploader: FileUploader | None = self._get(Role.EHR, project)
        return uploader

    def _get(self, role: Role, project: ProjectDefinition) -> Any:
        key = (project.slug, role)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._build(role, project)
            return self._clients[key]

    def close(self) -> None:
        """End what the clients keep open between studies (SFTP sessions); later calls build
        new clients."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()


def project_destination_builder(
    local_root: Path, env: Mapping[str, str] = os.environ, *, credential: Any = None
) -> Builder:
    """Clients for each project's own destinations, as its definition names them: secrets from
    the variables it names in ``env``, ``kind: local`` folders inside ``local_root``."""

    def build(role: Role, project: ProjectDefinition) -> Any:
        destination = getattr(project.destinations, role.value)
        if isinstance(destination, LocalDirectoryDestination):
            return local_uploader(destination, local_root)
        if role is Role.IMAGES:
            return make_image_uploader(destination, env, credential=credential)
        return make_file_uploader(destination, env)

    return build


def folder_destination_builder(root: Path) -> Builder:
    """Clients that deliver every project into ``root`` (``images/`` and ``ehr/``, then the
    project and extract as usual), whatever its definition names."""

    def build(role: Role, project: ProjectDefinition) -> Any:
        del project  # every project alike
        return local_uploader(LocalDirectoryDestination(kind="local", path=role.value), root)

    return build
