"""Exactly-once delivery: a study recorded as exported to a destination is not sent again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.upload.base import UploadReport, UploadTarget


def already_exported(database: VoxlDatabase, study_id: int, destination: str) -> bool:
    with database.session() as session:
        found = session.scalar(
            select(StudyExport.id).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
    return found is not None


def upload_study_once(
    database: VoxlDatabase,
    study_id: int,
    uploader: Any,
    files: Sequence[Path],
    target: UploadTarget,
    *,
    force: bool = False,
) -> UploadReport | None:
    """Upload unless already recorded (None then); the record is written only after success."""
    destination = uploader.describe()
    if not force and already_exported(database, study_id, destination):
        return None
    report: UploadReport = uploader.upload_study(files, target)
    with database.session() as session:
        if force:
            session.execute(
                delete(StudyExport).where(
                    StudyExport.study_id == study_id, StudyExport.destination == destination
                )
            )
        session.add(
            StudyExport(
                study_id=study_id,
                destination=destination,
                instances=report.instances,
                bytes=report.bytes,
            )
        )
    return report
