"""Extracts and studies written straight into a VOXL database, in the states a test needs."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from voxl_assets.db import Extract, ExtractStudy, Study, VoxlDatabase

EXTRACT_DATETIME = datetime(2026, 11, 1, 12, 0)
_numbers = itertools.count(1)


def add_studies(
    database: VoxlDatabase,
    project: str,
    statuses: list[str],
    *,
    extract_datetime: datetime = EXTRACT_DATETIME,
) -> list[int]:
    """An extract of ``project`` (made if new) with one new study per status; their ids."""
    with database.session() as session:
        extract = (
            session.query(Extract)
            .filter_by(project=project, extract_datetime=extract_datetime)
            .one_or_none()
        )
        if extract is None:
            extract = Extract(project=project, extract_datetime=extract_datetime, source_path="x")
            session.add(extract)
            session.flush()
        ids = []
        for status in statuses:
            number = next(_numbers)
            study = Study(project=project, mrn=f"M{number}", accession_number=f"A{number}")
            study.status = status
            session.add(study)
            session.flush()
            session.add(
                ExtractStudy(
                    extract_id=extract.id, study_id=study.id, procedure_occurrence_id=number
                )
            )
            ids.append(study.id)
    return ids


def update_study(database: VoxlDatabase, study_id: int, **values: Any) -> None:
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        for name, value in values.items():
            setattr(study, name, value)
