"""The export of one extract: mapping table, EHR files, provenance; written deterministically.

``<export-root>/<project>/<extract-datetime>/`` holds ``omop/...`` (the extract's public files in
their layout), ``IMAGE_LINKER.parquet`` (procedure_occurrence_id -> pseudonymous study UID and
patient id, for every exported study), ``IMAGE_EXCLUSIONS.parquet`` (studies not delivered, with
the non-identifying reason), ``DEID_REPORT.parquet`` and ``DEID_REPORT.html`` (what
de-identification did, see ``deid_report.py``) and ``provenance.json`` (with a SHA-256 of every
file). Re-running
writes the same bytes unless more studies were exported since.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from voxl_assets.cohort.ingest import find_extract
from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.deid.tally import DeidTally
from voxl_assets.export.deid_report import (
    REPORT_HTML,
    ReportContext,
    extract_tally,
    report_markdown,
    write_deid_report,
)
from voxl_assets.upload.base import extract_folder_name

LINKER = "IMAGE_LINKER.parquet"
EXCLUSIONS = "IMAGE_EXCLUSIONS.parquet"
PROVENANCE = "provenance.json"


class ExportError(Exception):
    pass


@dataclass
class MappingRows:
    linked: list[
        tuple[int, str, str]
    ]  # procedure_occurrence_id, pseudo study uid, pseudo patient id
    excluded: list[tuple[int, str, str]]  # procedure_occurrence_id, status, reason


def mapping_rows(database: VoxlDatabase, extract_key: str) -> tuple[Extract, MappingRows]:
    """Every study of the extract: exported ones link, the others are listed with their reason."""
    with database.session() as session:
        extract = find_extract(session, extract_key)
        if extract is None:
            raise ExportError(
                f"extract {extract_key} is not registered (run `voxl populate` first)"
            )
        session.expunge(extract)
        exported_ids = set(
            session.scalars(
                select(StudyExport.study_id)
                .join(ExtractStudy, ExtractStudy.study_id == StudyExport.study_id)
                .where(ExtractStudy.extract_id == extract.id)
            )
        )
        rows = session.execute(
            select(
                ExtractStudy.procedure_occurrence_id,
                Study.id,
                Study.status,
                Study.failure_reason,
                Study.waiting_for,
                Study.pseudo_study_uid,
                Study.pseudo_patient_id,
            )
            .join(Study, Study.id == ExtractStudy.study_id)
            .where(ExtractStudy.extract_id == extract.id)
            .order_by(ExtractStudy.procedure_occurrence_id)
        ).all()
    linked, excluded = [], []
    for procedure, study_id, status, reason, waiting, pseudo_study, pseudo_patient in rows:
        if (study_id in exported_ids or status == StudyStatus.UPLOADED.value) and pseudo_study:
            linked.append((int(procedure), str(pseudo_study), str(pseudo_patient or "")))
        else:
            excluded.append((int(procedure), str(status), str(reason or waiting or "not finished")))
    return extract, MappingRows(linked, excluded)


def registered_identifiers(database: VoxlDatabase, extract_key: str) -> list[str]:
    """The identifiers the VOXL database holds for the extract's studies (MRN, accession number,
    study and series UID), for the leak guard; absent ones (stored as '') are left out."""
    with database.session() as session:
        extract = find_extract(session, extract_key)
        if extract is None:
            return []
        rows = session.execute(
            select(Study.mrn, Study.accession_number, Study.study_uid, Study.series_uid)
            .join(ExtractStudy, ExtractStudy.study_id == Study.id)
            .where(ExtractStudy.extract_id == extract.id)
        ).all()
    return sorted({value for row in rows for value in row if value})


def registered_extract(database: VoxlDatabase, extract_key: str) -> Extract:
    with database.session() as session:
        extract = find_extract(session, extract_key)
        if extract is None:
            raise ExportError(
                f"extract {extract_key} is not registered (run `voxl populate` first)"
            )
        session.expunge(extract)
    return extract


def mapping_tables(rows: MappingRows) -> dict[str, pa.Table]:
    """The extract's tables by file name: ``IMAGE_LINKER.parquet`` and ``IMAGE_EXCLUSIONS.parquet``."""
    return {
        LINKER: pa.table(
            {
                "procedure_occurrence_id": pa.array([r[0] for r in rows.linked], pa.int64()),
                "pseudo_study_uid": pa.array([r[1] for r in rows.linked], pa.string()),
                "pseudo_patient_id": pa.array([r[2] for r in rows.linked], pa.string()),
            }
        ),
        EXCLUSIONS: pa.table(
            {
                "procedure_occurrence_id": pa.array([r[0] for r in rows.excluded], pa.int64()),
                "status": pa.array([r[1] for r in rows.excluded], pa.string()),
                "reason": pa.array([r[2] for r in rows.excluded], pa.string()),
            }
        ),
    }


def write_parquet(table: pa.Table, path: Path) -> None:
    # No statistics or writer timestamps that vary: the same rows give the same bytes.
    pq.write_table(table, path, compression="zstd", write_statistics=False, store_schema=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def voxl_version() -> str:
    try:
        return metadata.version("voxl")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class BundleResult:
    directory: Path
    linked: int
    excluded: int
    files: int
    bytes: int
    relative_folder: str  # <project>/<extract-datetime>, the layout at the destination
    deid: DeidTally | None = None  # the de-identification report's tallies
    studies: int = 0  # in the extract

    def metadata(self) -> dict[str, Any]:
        return {
            "studies_linked": self.linked,
            "studies_excluded": self.excluded,
            "files": self.files,
            "bytes": self.bytes,
        }

    def deid_report_markdown(self) -> str:
        return report_markdown(self.deid or DeidTally(), self.studies)

    @property
    def deid_report_page(self) -> Path:
        return self.directory / REPORT_HTML


def public_files(extract_dir: Path) -> list[Path]:
    public = extract_dir / "public"
    if not public.is_dir():
        return []
    return sorted(p for p in public.rglob("*") if p.is_file())


def private_files(extract_dir: Path) -> list[Path]:
    private = extract_dir / "private"
    if not private.is_dir():
        return []
    return sorted(p for p in private.rglob("*.parquet") if p.is_file())


def write_ehr_bundle(
    database: VoxlDatabase,
    extract_key: str,
    export_root: Path,
    tables: dict[str, pa.Table] | None = None,
) -> BundleResult:
    """Write the extract's bundle into a staging folder and swap it into place. ``tables`` are the
    extract's ``mapping_tables`` (read from the database when not given)."""
    if tables is None:
        extract, rows = mapping_rows(database, extract_key)
        tables = mapping_tables(rows)
    else:
        extract = registered_extract(database, extract_key)
    linked, excluded = tables[LINKER].num_rows, tables[EXCLUSIONS].num_rows
    source = Path(extract.source_path)
    relative = f"{extract.project}/{extract_folder_name(extract.extract_datetime)}"
    final = export_root / relative
    staging = export_root / ".staging" / f"{extract.project}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for path in public_files(source):
            target = staging / path.relative_to(source / "public")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        for name, table in tables.items():
            write_parquet(table, staging / name)
        deid = extract_tally(database, extract_key)
        context = ReportContext(
            title="De-identification report",
            project=extract.project,
            scope=f"extract {deid.folder}",
            as_of=deid.as_of,
            voxl_version=voxl_version(),
            studies_in_scope=deid.studies,
        )
        write_deid_report(deid.tally, context, staging)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        provenance = {
            "project": extract.project,
            "extract_datetime": extract.extract_datetime.isoformat(),
            "omop_es_settings": extract.omop_es_settings or {},
            "omop_es_git_hash": extract.omop_es_git_hash,
            "voxl_version": voxl_version(),
            "counts": {"studies_linked": linked, "studies_excluded": excluded},
            "files": {p.relative_to(staging).as_posix(): _sha256(p) for p in files},
        }
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BundleResult(
        final, linked, excluded, len(files) + 1, total, relative, deid.tally, deid.studies
    )


def public_column_names(extract_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in public_files(extract_dir):
        if path.suffix == ".parquet":
            names.update(pq.ParquetFile(path).schema_arrow.names)
    return names
