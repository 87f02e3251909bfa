"""A study's progress in the VOXL database: who it is, and the state transitions of its pipeline.

Reasons stored with a state are shown in `voxl status`, the UI and the export summary, so they
must never contain identifiers: callers pass fixed phrases and counts, not values from DICOM.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import utcnow


@dataclass(frozen=True)
class StudyRequest:
    """What the imaging stages need to know about one study. Holds identifiers: never log it."""

    study_id: int
    project: str
    mrn: str
    accession_number: str
    study_uid: str
    series_uid: str
    study_datetime: datetime | None
    status: StudyStatus
    pseudo_study_uid: str | None
    participant_id: str = ""  # from a CSV extract: the pseudonymous PatientID to write

    @property
    def partition_key(self) -> str:
        return f"{self.project}/{self.study_id}"

    def __repr__(self) -> str:  # keep identifiers out of tracebacks and debug output
        return f"StudyRequest(study {self.partition_key}, status={self.status.value})"

    __str__ = __repr__


def study_id_from_partition_key(key: str) -> int:
    """``<project>/<number>`` -> number. Raises ValueError for a malformed key."""
    project, _, number = key.rpartition("/")
    if not project or not number.isdigit():
        raise ValueError(f"not a study partition key: {key!r} (expected <project>/<number>)")
    return int(number)


def load_study_requests(
    database: VoxlDatabase, partition_keys: Iterable[str]
) -> list[StudyRequest]:
    """The studies behind ``partition_keys``, in the same order; unknown keys are skipped."""
    ids = [study_id_from_partition_key(key) for key in partition_keys]
    found: dict[int, StudyRequest] = {}
    with database.session() as session:
        for start in range(0, len(ids), 900):
            for study in session.scalars(
                select(Study).where(Study.id.in_(ids[start : start + 900]))
            ):
                found[study.id] = StudyRequest(
                    study_id=study.id,
                    project=study.project,
                    mrn=study.mrn,
                    accession_number=study.accession_number,
                    study_uid=study.study_uid,
                    series_uid=study.series_uid,
                    study_datetime=study.study_datetime,
                    status=StudyStatus(study.status),
                    pseudo_study_uid=study.pseudo_study_uid,
                    participant_id=study.participant_id,
                )
    return [found[i] for i in ids if i in found]


def set_status(
    database: VoxlDatabase,
    study_id: int,
    status: StudyStatus,
    *,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    count_attempt: bool = False,
    **columns: Any,
) -> None:
    """Move a study to ``status`` and stamp the time; ``reason`` is kept for failed/filtered/waiting."""
    now = utcnow()
    values: dict[str, Any] = {"status": status.value, "status_updated_at": now, **columns}
    values["failure_reason"] = (
        reason if status in (StudyStatus.FAILED, StudyStatus.FILTERED) else None
    )
    if status is StudyStatus.WAITING:
        values["waiting_for"] = reason
    else:
        values["waiting_for"] = None
        values["not_before"] = columns.get("not_before")
    stamp_column = {
        StudyStatus.RETRIEVED: "retrieved_at",
        StudyStatus.ANONYMISED: "anonymised_at",
        StudyStatus.UPLOADED: "exported_at",
    }.get(status)
    if stamp_column:
        values.setdefault(stamp_column, now)
    if count_attempt:
        values["attempts"] = Study.attempts + 1
    # A connection, not an ORM session: three of these per study, and a session's unit of work
    # doubled their cost (0.5 -> 0.23 ms of CPU each).
    with database.engine.begin() as connection:
        if details:
            current = connection.scalar(select(Study.details).where(Study.id == study_id))
            values["details"] = {**(current or {}), **details}
        connection.execute(update(Study).where(Study.id == study_id).values(**values))


ENDED_FOR_NOW = (
    StudyStatus.UPLOADED.value,
    StudyStatus.FILTERED.value,
    StudyStatus.FAILED.value,
    StudyStatus.WAITING.value,
)


def count_ended_since(database: VoxlDatabase, study_ids: Collection[int], since: datetime) -> int:
    """How many of ``study_ids`` reached an end for now (uploaded, filtered, failed, waiting) at or
    after ``since`` (naive UTC): the progress of a run over those studies."""
    with database.session() as session:
        ended = session.scalars(
            select(Study.id).where(
                Study.status.in_(ENDED_FOR_NOW), Study.status_updated_at >= since
            )
        )
        return sum(1 for study_id in ended if study_id in study_ids)
