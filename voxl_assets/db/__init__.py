"""The VOXL database: extracts, studies and their progress (SQLAlchemy 2 + Alembic)."""

from voxl_assets.db.engine import VoxlDatabase, make_engine, upgrade_database
from voxl_assets.db.models import (
    Extract,
    ExtractStudy,
    ProjectSalt,
    Study,
    StudyExport,
    StudyStatus,
    UploadAttempt,
)

__all__ = [
    "Extract",
    "ExtractStudy",
    "ProjectSalt",
    "Study",
    "StudyExport",
    "StudyStatus",
    "UploadAttempt",
    "VoxlDatabase",
    "make_engine",
    "upgrade_database",
]
