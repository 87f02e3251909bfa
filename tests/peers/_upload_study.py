"""Shared bits of the upload tests: a small anonymised-looking study, a target, a VOXL database."""

from __future__ import annotations

import zipfile
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from voxl_assets.db import Study, VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.upload.base import UploadTarget

TARGET = UploadTarget("demo-project", datetime(2026, 11, 1, 12, 0), "2.25.31415926535897932384")


def anonymised_study(directory: Path, instances: int = 4, size: int = 64) -> list[Path]:
    """Real DICOM files that look de-identified (pseudonymous patient, no accession)."""
    spec = StudySpec(
        patient_id="f3a9c2d1e8b7",
        accession_number="",
        patient_name="",
        birth_date="",
        rows=size,
        columns=size,
        series=[SeriesSpec(instances=instances)],
    )
    return write_study(spec, directory)


def top_up(files: list[Path], count: int) -> list[Path]:
    """``count`` more instances of the same study beside ``files`` (new SOP Instance UIDs, named
    by them as the anonymised store names its files); returns the whole study."""
    template = pydicom.dcmread(files[0])
    added = []
    for _ in range(count):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = files[0].parent / f"{template.SOPInstanceUID}.dcm"
        template.save_as(path, enforce_file_format=True)
        added.append(path)
    return sorted([*files, *added])


def zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every entry's CRC checks out
        return set(archive.namelist())


def database_with_study(directory: Path, study_id: int = 1) -> VoxlDatabase:
    database = VoxlDatabase(f"sqlite:///{directory}/v.db")
    with database.session() as session:
        session.add(Study(id=study_id, project="demo-project", mrn="m", accession_number="a"))
    return database


def export_count(database: VoxlDatabase) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(StudyExport)) or 0)


def leftovers(root: Path) -> list[str]:
    """Partial files (``.<name>.part``) under ``root``."""
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".part"))
