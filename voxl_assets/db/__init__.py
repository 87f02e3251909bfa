"""The VOXL database: extracts, studies and their progress (SQLAlchemy 2 + Alembic)."""

from voxl_assets.db.engine import VoxlDatabase, make_engine, shared_database, upgrade_database
from voxl_assets.db.models import (
    ArchiveRateLimit,
    Extract,
    ExtractRegistration,
    ExtractSourceProblem,
    ExtractStudy,
    ProjectSalt,
    RegistrationState,
    Study,
    StudyDeidSummary,
    StudyExport,
    StudyStatus,
    UploadAttempt,
)

__all__ = [
    "ArchiveRateLimit",
    "Extract",
    "ExtractRegistration",
    "ExtractSourceProblem",
    "ExtractStudy",
    "ProjectSalt",
    "RegistrationState",
    "Study",
    "StudyDeidSummary",
    "StudyExport",
    "StudyStatus",
    "UploadAttempt",
    "VoxlDatabase",
    "make_engine",
    "shared_database",
    "upgrade_database",
]
