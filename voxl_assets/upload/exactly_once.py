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

A study topped up after its delivery (the archive gained instances; ``--top-up-cache``) is
re-delivered as the project's ``redeliver_topped_up`` says, exactly once per change: the record
lists the instances the destination holds (``delivered_instances``, by pseudonymous file name,
with the revision that sent them), a change is an instance not listed, and the re-delivery
is recorded with the next revision in the same transaction that closes its attempt. ``replace``
sends the whole study again (a file destination's zip is replaced under the same name; a DICOMweb
store receives every instance again, stored over its copy, so it holds the full study); ``add``
sends only the new instances (a file destination gets ``<uid>.rev<N>.zip`` beside the first zip).
The pseudonymous ids are those of the first delivery: the study is de-identified with the same
project salt, so the mapping table does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import DeliveredInstance, StudyExport, UploadAttempt, utcnow
from voxl_assets.upload.base import ImageUploader, UploadReport, UploadTarget

Redeliver = Literal["never", "replace", "add"]

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


@dataclass(frozen=True)
class Delivered:
    """What a destination holds of a study, as recorded."""

    revision: int
    instances: int
    names: frozenset[str]  # empty for a record written before VOXL listed instances


def delivered(database: VoxlDatabase, study_id: int, destination: str) -> Delivered | None:
    """The study's record at ``destination``, or None when it was never delivered there."""
    with database.session() as session:
        row = session.scalar(
            select(StudyExport).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
        if row is None:
            return None
        names = session.scalars(
            select(DeliveredInstance.name).where(DeliveredInstance.export_id == row.id)
        )
        return Delivered(row.revision, row.instances, frozenset(names))


def new_instances(record: Delivered, files: Sequence[Path]) -> list[Path] | None:
    """The files the destination does not hold yet; None when the record does not list its
    instances (delivered before VOXL did) and the study has more than it counts: which ones are
    new is then unknown."""
    if not record.names:
        return None if len(files) > record.instances else []
    return [path for path in files if path.name not in record.names]


class _RecordedMeanwhile(Exception):
    """Another run recorded a delivery of the study to the destination since ours began."""


def record_export(
    database: VoxlDatabase,
    study_id: int,
    destination: str,
    report: UploadReport,
    attempt_id: int | None = None,
    *,
    held: Sequence[Path] = (),
    previous: Delivered | None = None,
) -> None:
    """Record a delivery and close its attempt, in one transaction: the (study, destination)
    row (created, moved to the next revision from ``previous``, the record this delivery built
    on, or else refreshed) and the instances the destination now holds (``held``, listed once
    each with the revision that first sent them). A delivery another run recorded meanwhile
    stands: ours is only closed as sent."""
    try:
        with database.session() as session:
            row = session.scalar(
                select(StudyExport).where(
                    StudyExport.study_id == study_id,
                    StudyExport.destination == destination,
                )
            )
            if row is None:
                row = StudyExport(study_id=study_id, destination=destination, revision=1)
                session.add(row)
                session.flush()
            elif previous is not None:
                if row.revision != previous.revision:
                    raise _RecordedMeanwhile
                row.revision = previous.revision + 1
            # else: a record without a delivery it builds on is refreshed in place
            row.instances = len(held) or report.instances
            row.bytes = report.bytes
            row.exported_at = utcnow()
            listed = set(
                session.scalars(
                    select(DeliveredInstance.name).where(DeliveredInstance.export_id == row.id)
                )
            )
            session.add_all(
                DeliveredInstance(export_id=row.id, name=name, revision=row.revision)
                for name in sorted({path.name for path in held} - listed)
            )
            attempt = session.get(UploadAttempt, attempt_id) if attempt_id is not None else None
            if attempt is not None:
                attempt.finished_at = utcnow()
                attempt.outcome = SENT
    except (IntegrityError, _RecordedMeanwhile):
        # A concurrent run recorded the same export between our read and write: it stands.
        if attempt_id is not None:
            finish_attempt(database, attempt_id, SENT)


def list_delivered_instances(
    database: VoxlDatabase, study_id: int, destination: str, files: Sequence[Path]
) -> None:
    """List ``files`` as held by a record written before VOXL listed instances (same count)."""
    with database.session() as session:
        row = session.scalar(
            select(StudyExport).where(
                StudyExport.study_id == study_id, StudyExport.destination == destination
            )
        )
        if row is None:
            return
        known = session.scalar(
            select(DeliveredInstance.id).where(DeliveredInstance.export_id == row.id).limit(1)
        )
        if known is None:
            session.add_all(
                DeliveredInstance(export_id=row.id, name=path.name, revision=row.revision)
                for path in files
            )


def upload_study_once(
    database: VoxlDatabase,
    study_id: int,
    uploader: ImageUploader,
    files: Sequence[Path],
    target: UploadTarget,
    *,
    force: bool = False,
    redeliver: Redeliver = "never",
) -> UploadReport | None:
    """Upload unless already recorded for this destination (then None); ``force`` sends the
    whole study again. A recorded study with instances the destination does not hold (it was
    topped up) is re-delivered as ``redeliver`` says, once per change (module docstring). The
    report's ``resend`` says an earlier attempt was cut off after it may have delivered; its
    ``revision`` which delivery of the study this was.

    Raises:
        UploadError: the upload failed (``TransientUploadError`` once retries are exhausted);
            nothing is recorded but the failed attempt.
    """
    destination = uploader.describe()
    record = delivered(database, study_id, destination)
    sending: Sequence[Path] = files
    if record is not None and not force:
        new = new_instances(record, files)
        if new == [] and not record.names:
            list_delivered_instances(database, study_id, destination, files)
        if new == [] or redeliver == "never":
            return None
        if redeliver == "add" and new is not None:
            sending = new
            target = replace(target, added_revision=record.revision + 1)
        # replace, or add without a list of what was held: the whole study under its own name
    attempt_id, resend = begin_attempt(database, study_id, destination)
    try:
        report = uploader.upload_study(sending, target)
    except BaseException:
        finish_attempt(database, attempt_id, FAILED)
        raise
    revision = 1 if record is None else record.revision + 1
    report = replace(report, resend=resend, revision=revision)
    record_export(database, study_id, destination, report, attempt_id, held=files, previous=record)
    return report


def undelivered_instances(
    database: VoxlDatabase, study_id: int, destination: str, files: Sequence[Path]
) -> int:
    """How many of ``files`` a delivered study's destination does not hold (0 if never
    delivered; by count for a record that does not list its instances): what
    ``redeliver_topped_up: never`` holds back."""
    record = delivered(database, study_id, destination)
    if record is None:
        return 0
    new = new_instances(record, files)
    return len(files) - record.instances if new is None else len(new)
