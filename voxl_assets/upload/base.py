"""The one small interface every destination implements.

An uploader is built from a project's destination definition plus the environment (secrets are read
from the variables the definition names, never from files in git). It must be safe to retry: a
failed upload leaves nothing that looks complete at the destination.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


def extract_folder_name(extract_datetime: datetime) -> str:
    """The ``<extract-datetime>`` path component: sortable, no characters that upset FTP or Azure."""
    return extract_datetime.strftime("%Y-%m-%dT%H-%M-%S")


@dataclass(frozen=True)
class UploadTarget:
    """Where a study goes. Holds only pseudonymous values, so it may be logged."""

    project: str
    extract_datetime: datetime
    pseudo_study_uid: str
    # Set when only the instances a topped-up study gained are sent (``redeliver_topped_up:
    # add``): the delivery's revision, which names their zip beside the first one.
    added_revision: int | None = None

    @property
    def relative_zip_path(self) -> str:
        """``<project>/<extract-datetime>/dicom/<pseudonymous-study-uid>.zip`` (file destinations);
        ``<uid>.rev<N>.zip`` for the instances added at revision N."""
        name = self.pseudo_study_uid
        if self.added_revision is not None:
            name = f"{name}.rev{self.added_revision}"
        return f"{self.project}/{extract_folder_name(self.extract_datetime)}/dicom/{name}.zip"


@dataclass(frozen=True)
class UploadReport:
    """What an upload did; safe for asset metadata (no identifiers, no secrets)."""

    kind: str
    destination: str
    instances: int
    bytes: int
    seconds: float
    # Sent again after an earlier attempt was cut off without a record (its process died): the
    # destination may have received it twice; idempotent naming keeps one copy there.
    resend: bool = False
    # Which delivery of the study this was: 1 the first, more for a topped-up study's
    # re-deliveries (and forced resends).
    revision: int = 1


class UploadError(Exception):
    """An upload failed for a reason worth showing (message holds no secret and no identifier)."""


class TransientUploadError(UploadError):
    """Worth retrying: the peer was down, the connection dropped, a 5xx."""


class ImageUploader(Protocol):
    kind: str

    def describe(self) -> str:
        """A stable, secret-free name of the destination (``ftps://host:21/root``): the exactly-once key."""
        ...

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        """Send one anonymised study (its DICOM files) atomically."""
        ...


class FileUploader(Protocol):
    kind: str

    def describe(self) -> str: ...

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        """Send every file under ``local_dir`` to ``<remote_prefix>/<relative path>``, each atomically."""
        ...
