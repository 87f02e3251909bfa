"""The states a study and an extract registration go through, an archive's query rate, and the
partition keys.

Kept free of SQLAlchemy (the tables in `voxl_assets.db.models` use these) so that `voxl status`
can read the database through the plain DB-API driver and answer at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ArchiveRate:
    """An archive's query rate as recorded in the VOXL database (`voxl archives rate`)."""

    archive: str
    configured_qps: float
    override_qps: float | None

    @property
    def effective_qps(self) -> float:
        return self.override_qps if self.override_qps is not None else self.configured_qps

    def describe(self) -> str:
        if self.override_qps is None:
            return f"archive {self.archive}: {self.effective_qps:g} queries/s (configured)"
        return (
            f"archive {self.archive}: {self.effective_qps:g} queries/s "
            f"(set by `voxl archives rate`; configured {self.configured_qps:g})"
        )
