"""Exactly-once delivery: a study recorded as exported to a destination is not sent again.

The key is (study id, ``uploader.describe()``), unique in ``study_exports``. The record is written
only after the upload succeeded; an upload that fails leaves no record (and, by each uploader's
temporary-name-then-rename, nothing at the destination that looks complete), so the next run
sends the study again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import StudyExport, utcnow
from voxl_assets.upload.base import ImageUploader, UploadReport, UploadTarget


def already_exported(database: VoxlDatabase, study_id: int, destination: str) -> bool:
    with database.session() as session:
        found = session.scalar(
            select(StudyExport.id).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
    return found is not None


def record_export(
    database: VoxlDatabase, study_id: int, destination: str, report: UploadReport
) -> None:
    """Insert or refresh the (study, destination) record from ``report``."""
    try:
        with database.session() as session:
            row = session.scalar(
                select(StudyExport).where(
                    StudyExport.study_id == study_id,
                    StudyExport.destination == destination,
                )
            )
            if row is None:
                row = StudyExport(study_id=study_id, destination=destination)
                session.add(row)
            row.instances = report.instances
            row.bytes = report.bytes
            row.exported_at = utcnow()
    except IntegrityError:
        # A concurrent run recorded the same export between our read and write: it stands.
        pass


def upload_study_once(
    database: VoxlDatabase,
    study_id: int,
    uploader: ImageUploader,
    files: Sequence[Path],
    target: UploadTarget,
    *,
    force: bool = False,
) -> UploadReport | None:
    """Upload unless already recorded for this destination (then None); ``force`` sends again.

    Raises:
        UploadError: the upload failed (``TransientUploadError`` once retries are exhausted);
            nothing is recorded.
    """
    destination = uploader.describe()
    if not force and already_exported(database, study_id, destination):
        return None
    report = uploader.upload_study(files, target)
    record_export(database, study_id, destination, report)
    return report
