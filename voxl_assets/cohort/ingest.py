"""Persist an extract and its cohort messages in the VOXL database, idempotently.

Re-ingesting the same extract inserts nothing: studies are unique per (project, MRN, accession,
study UID, series UID) and an extract lists each procedure_occurrence_id once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pandas as pd
from sqlalchemy import Connection, Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from voxl_assets.cohort.extract_reader import CohortTable, ExtractSummary
from voxl_assets.db import Extract, ExtractStudy, Study, VoxlDatabase
from voxl_assets.db.models import StudyStatus, extract_partition_key, study_partition_key, utcnow

BATCH = 5000
WHOLE_PROJECT_SCAN_ABOVE = 2000
StudyIdentity = tuple[str, str, str, str]


@dataclass(frozen=True)
class IngestCounts:
    """What one ingest did; safe to show anywhere (no identifiers)."""

    rows_read: int
    imaging_studies: int
    skipped_not_imaging: int
    new_studies: int
    already_known: int
    study_partition_keys: list[str]

    def as_metadata(self) -> dict[str, int]:
        return {
            "rows_read": self.rows_read,
            "imaging_studies": self.imaging_studies,
            "new_studies": self.new_studies,
            "already_known": self.already_known,
            "skipped_not_imaging": self.skipped_not_imaging,
        }


def register_extract(db: VoxlDatabase, summary: ExtractSummary, project_slug: str) -> str:
    """Record the extract (once) and return its partition key ``<project>/<datetime>``."""
    with db.session() as session:
        existing = session.scalar(
            select(Extract).where(
                Extract.project == project_slug,
                Extract.extract_datetime == summary.extract_datetime,
            )
        )
        if existing is None:
            session.add(
                Extract(
                    project=project_slug,
                    extract_datetime=summary.extract_datetime,
                    source_path=str(summary.source),
                    omop_es_settings=_json_safe(summary.settings),
                    omop_es_git_hash=summary.git_hash,
                )
            )
    return extract_partition_key(project_slug, summary.extract_datetime)


def find_extract(session: Session, partition_key: str) -> Extract | None:
    """The extract behind a partition key, or None."""
    project, _, stamp = partition_key.partition("/")
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H-%M-%S")
    except ValueError:
        return None
    return session.scalar(
        select(Extract).where(Extract.project == project, Extract.extract_datetime == when)
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _insert_ignore(connection: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING in batches, on SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = connection.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), BATCH):
        statement = insert(table).on_conflict_do_nothing()
        connection.execute(statement, list(rows[start : start + BATCH]))


def _chunks(items: Sequence[StudyIdentity], size: int) -> Iterator[Sequence[StudyIdentity]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_study_ids(
    session: Session, project: str, identities: Sequence[StudyIdentity]
) -> dict[StudyIdentity, int]:
    """Ids of the studies among ``identities`` that the project already has."""
    found: dict[StudyIdentity, int] = {}
    if not identities:
        return found
    columns = (Study.mrn, Study.accession_number, Study.study_uid, Study.series_uid)
    if len(identities) > WHOLE_PROJECT_SCAN_ABOVE:
        # One streamed pass over the project's studies beats thousands of tuple-IN probes (whose
        # plans go wrong on PostgreSQL while the table's statistics are stale after a big insert).
        wanted = set(identities)
        rows = session.execute(
            select(Study.id, *columns)
            .where(Study.project == project)
            .execution_options(yield_per=20000)
        )
        for study_id, mrn, accession, uid, series in rows:
            if (mrn, accession, uid, series) in wanted:
                found[(mrn, accession, uid, series)] = study_id
        return found
    for chunk in _chunks(identities, 500):
        rows = session.execute(
            select(Study.id, *columns).where(Study.project == project, tuple_(*columns).in_(chunk))
        )
        for study_id, mrn, accession, uid, series in rows:
            found[(mrn, accession, uid, series)] = study_id
    return found


def _insert_studies(
    connection: Connection, rows: Sequence[dict[str, Any]]
) -> dict[StudyIdentity, int]:
    """Insert new studies (ignoring ones a concurrent ingest just added); ids of those inserted."""
    inserted: dict[StudyIdentity, int] = {}
    if not rows:
        return inserted
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    table = cast(Table, Study.__table__)
    statement = (
        insert(table)
        .on_conflict_do_nothing()
        .returning(
            table.c.id, table.c.mrn, table.c.accession_number, table.c.study_uid, table.c.series_uid
        )
    )
    for start in range(0, len(rows), BATCH):
        result = connection.execute(statement, list(rows[start : start + BATCH]))
        for study_id, mrn, accession, uid, series in result:
            inserted[(mrn, accession, uid, series)] = study_id
    return inserted


def _none_if_nat(value: object) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).to_pydatetime()


def persist_cohort(db: VoxlDatabase, cohort: CohortTable, project_slug: str) -> IngestCounts:
    """Store the extract's studies and their procedure_occurrence_ids in one transaction."""
    messages = cohort.messages
    identities_per_row: list[StudyIdentity] = list(
        zip(
            messages["mrn"],
            messages["accession_number"],
            messages["study_uid"],
            messages["series_uid"],
            strict=True,
        )
    )
    first_datetime: dict[StudyIdentity, datetime | None] = {}
    for identity, when in zip(identities_per_row, messages["study_datetime"], strict=True):
        first_datetime.setdefault(identity, _none_if_nat(when))
    unique_identities = list(first_datetime)

    with db.session() as session:
        extract = session.scalar(
            select(Extract).where(
                Extract.project == project_slug,
                Extract.extract_datetime == cohort.summary.extract_datetime,
            )
        )
        if extract is None:
            raise LookupError(
                f"extract {extract_partition_key(project_slug, cohort.summary.extract_datetime)} "
                "is not registered; run `voxl populate` or let the sensor register it"
            )
        known = _existing_study_ids(session, project_slug, unique_identities)
        now = utcnow()
        new_rows = [
            {
                "project": project_slug,
                "mrn": mrn,
                "accession_number": accession,
                "study_uid": uid,
                "series_uid": series,
                "study_datetime": first_datetime[(mrn, accession, uid, series)],
                "status": StudyStatus.QUEUED.value,
                "status_updated_at": now,
                "created_at": now,
                "attempts": 0,
            }
            for (mrn, accession, uid, series) in unique_identities
            if (mrn, accession, uid, series) not in known
        ]
        connection = session.connection()
        ids = known | _insert_studies(connection, new_rows)
        missing = [
            i for i in unique_identities if i not in ids
        ]  # added concurrently by another ingest
        ids |= _existing_study_ids(session, project_slug, missing)
        links = [
            {
                "extract_id": extract.id,
                "study_id": ids[identity],
                "procedure_occurrence_id": int(proc),
            }
            for identity, proc in zip(
                identities_per_row, messages["procedure_occurrence_id"], strict=True
            )
        ]
        _insert_ignore(connection, ExtractStudy.__table__, links)
        keys = [study_partition_key(project_slug, i) for i in sorted(set(ids.values()))]
    return IngestCounts(
        rows_read=cohort.rows_read,
        imaging_studies=cohort.imaging_studies,
        skipped_not_imaging=cohort.skipped_not_imaging,
        new_studies=len(unique_identities) - len(known),
        already_known=len(known),
        study_partition_keys=keys,
    )


def study_counts_by_status(
    db: VoxlDatabase, extract_ids: Iterable[int] | None = None
) -> dict[int, dict[str, int]]:
    """Per extract id: number of its studies in each status."""
    from sqlalchemy import func

    with db.session() as session:
        query = (
            select(ExtractStudy.extract_id, Study.status, func.count(func.distinct(Study.id)))
            .join(Study, Study.id == ExtractStudy.study_id)
            .group_by(ExtractStudy.extract_id, Study.status)
        )
        if extract_ids is not None:
            query = query.where(ExtractStudy.extract_id.in_(list(extract_ids)))
        result: dict[int, dict[str, int]] = {}
        for extract_id, status, count in session.execute(query):
            result.setdefault(extract_id, {})[status] = count
    return result
