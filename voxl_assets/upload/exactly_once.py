"""Exactly-once delivery: a study recorded as exported to a destination is not sent again.

The key is (study id, ``uploader.describe()``), unique in ``study_exports``. The record is written
only after the upload succeeded; an upload that fails leaves no record (and, by each uploader's
temporary-name-then-rename, nothing at the destination that looks complete), so the next run
sends the study again.

What no system can promise is the moment between the destination accepting the study and the
record being written: a process killed there has delivered the study without knowing it. VOXL
therefore guarantees *at least once, with idempotent destination names, and every resend
detectable*: each attempt is written to ``upload_attempts`` before anything is sent and closed
after; an attempt never closed marks the next one as a resend (``UploadReport.resend``, the
attempt's ``resend`` flag, the asset's metadata). Destinations are named so a resend replaces
rather than duplicates: the zip is named by the pseudonymous study UID and renamed into place
(files, Azure Blob), and DICOMweb stores instances by their (pseudonymous) SOP Instance UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import StudyExport, UploadAttempt, utcnow
from voxl_assets.upload.base import ImageUploader, UploadReport, UploadTarget

SENT = "sent"
FAILED = "failed"


def already_exported(database: VoxlDatabase, study_id: int, destination: str) -> bool:
    with database.session() as session:
        found = session.scalar(
            select(StudyExport.id).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
    return found is not None


def exported_instances(database: VoxlDatabase, study_id: int, destination: str) -> int | None:
    """How many instances the recorded export to ``destination`` sent; None when there is none."""
    with database.session() as session:
        found = session.scalar(
            select(StudyExport.instances).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
    return None if found is None else int(found)


def begin_attempt(database: VoxlDatabase, study_id: int, destination: str) -> tuple[int, bool]:
    """Record an attempt before sending; returns (attempt id, whether an earlier attempt was cut
    off unfinished, so this one is a resend). Earlier unfinished attempts are closed as such."""
    with database.session() as session:
        unfinished = list(
            session.scalars(
                select(UploadAttempt).where(
                    UploadAttempt.study_id == study_id,
                    UploadAttempt.destination == destination,
                    UploadAttempt.finished_at.is_(None),
                )
            )
        )
        for earlier in unfinished:
            earlier.finished_at = utcnow()
            earlier.outcome = "cut off"
        attempt = UploadAttempt(study_id=study_id, destination=destination, resend=bool(unfinished))
        session.add(attempt)
        session.flush()
        return attempt.id, bool(unfinished)


def finish_attempt(database: VoxlDatabase, attempt_id: int, outcome: str) -> None:
    with database.session() as session:
        attempt = session.get(UploadAttempt, attempt_id)
        if attempt is not None:
            attempt.finished_at = utcnow()
            attempt.outcome = outcome


def record_export(
    database: VoxlDatabase,
    study_id: int,
    destination: str,
    report: UploadReport,
    attempt_id: int | None = None,
) -> None:
    """Insert or refresh the (study, destination) record from ``report``, and close the attempt
    in the same transaction."""
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
            attempt = session.get(UploadAttempt, attempt_id) if attempt_id is not None else None
            if attempt is not None:
                attempt.finished_at = utcnow()
                attempt.outcome = SENT
    except IntegrityError:
        # A concurrent run recorded the same export between our read and write: it stands.
        if attempt_id is not None:
            finish_attempt(database, attempt_id, SENT)


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
    The report's ``resend`` says an earlier attempt was cut off after it may have delivered.

    Raises:
        UploadError: the upload failed (``TransientUploadError`` once retries are exhausted);
            nothing is recorded but the failed attempt.
    """
    destination = uploader.describe()
    if not force and already_exported(database, study_id, destination):
        return None
    attempt_id, resend = begin_attempt(database, study_id, destination)
    try:
        report = uploader.upload_study(files, target)
    except BaseException:
        finish_attempt(database, attempt_id, FAILED)
        raise
    if resend:
        report = replace(report, resend=True)
    record_export(database, study_id, destination, report, attempt_id)
    return report
