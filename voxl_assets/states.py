"""The states a study and an extract registration go through, and the partition keys.

Kept free of SQLAlchemy (the tables in `voxl_assets.db.models` use these) so that `voxl status`
can read the database through the plain DB-API driver and answer at once.
"""

from __future__ import annotations

import enum
from datetime import datetime


class StudyStatus(enum.StrEnum):
    """Where a study is in the pipeline. ``filtered`` and ``failed`` end it without upload."""

    QUEUED = "queued"
    WAITING = "waiting"  # for an archive's time window
    RETRIEVED = "retrieved"
    ANONYMISED = "anonymised"
    UPLOADED = "uploaded"
    FILTERED = "filtered"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (StudyStatus.UPLOADED, StudyStatus.FILTERED, StudyStatus.FAILED)


class RegistrationState(enum.StrEnum):
    """Where a registered extract is: waiting for its cohort run, ingested, or failed (with a
    non-identifying reason) and replaceable by a corrected copy."""

    PENDING = "pending"
    INGESTED = "ingested"
    FAILED = "failed"


def extract_partition_key(project: str, extract_datetime: datetime) -> str:
    """``<project-slug>/<extract-datetime>``: no identifiers, sorts by time."""
    return f"{project}/{extract_datetime.strftime('%Y-%m-%dT%H-%M-%S')}"


def study_partition_key(project: str, study_id: int) -> str:
    """``<project-slug>/<study-number>``: the study's row id, never an identifier."""
    return f"{project}/{study_id}"
