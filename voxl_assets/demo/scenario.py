"""The demo scenario: a generated archive and OMOP ES extract that exercise every path.

Studies over CT, MR and DX; a few missing from the archive; one of a modality the project does
not keep (US); one registered in the archive under another study UID (found by MRN + accession).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from voxl_assets.synthetic import (
    ExtractRow,
    SeriesSpec,
    StudySpec,
    synthetic_extract_rows,
    write_omop_extract,
    write_study,
)

MODALITY_CYCLE = ("CT", "MR", "DX")


@dataclass
class Scenario:
    rows: list[ExtractRow]
    extract_dir: Path
    archive_dir: Path
    missing: list[int] = field(default_factory=list)  # procedure ids not in the archive
    filtered: list[int] = field(default_factory=list)  # procedure ids of a modality not kept
    by_mrn_accession: list[int] = field(default_factory=list)  # found only by MRN + accession

    @property
    def expected_uploaded(self) -> list[int]:
        ended = set(self.missing) | set(self.filtered)
        return [
            r.procedure_occurrence_id for r in self.rows if r.procedure_occurrence_id not in ended
        ]


def build_scenario(
    root: Path,
    studies: int = 12,
    *,
    missing: int = 2,
    instances: int = 3,
    rows_columns: int = 64,
    extract_datetime: datetime = datetime(2026, 11, 1, 12, 0),
    seed: int = 7,
) -> Scenario:
    """Write the archive (``root/archive``) and the extract (``root/extracts/<name>``)."""
    rows = synthetic_extract_rows(studies, seed=seed)
    archive = root / "archive"
    scenario = Scenario(
        rows, root / "extracts" / f"omop-es-{extract_datetime:%Y%m%d-%H%M%S}", archive
    )
    for index, row in enumerate(rows):
        procedure = row.procedure_occurrence_id
        if index < missing:
            scenario.missing.append(procedure)
            continue
        modality = MODALITY_CYCLE[index % len(MODALITY_CYCLE)]
        study_uid = row.study_uid
        if index == missing:
            modality = "US"
            scenario.filtered.append(procedure)
        elif index == missing + 1:
            study_uid = f"2.25.{secrets.randbits(96)}"  # emergency imaging: another UID
            scenario.by_mrn_accession.append(procedure)
        spec = StudySpec(
            patient_id=row.mrn,
            accession_number=row.accession_number,
            study_uid=study_uid,
            modality=modality,
            study_datetime=row.study_datetime,
            series=[SeriesSpec(instances=instances)],
            rows=rows_columns,
            columns=rows_columns,
        )
        write_study(spec, archive / f"study-{procedure:05d}")
    write_omop_extract(scenario.extract_dir, rows, extract_datetime=extract_datetime)
    return scenario
