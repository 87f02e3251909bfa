"""Persist an extract and its cohort messages in the VOXL database, idempotently.

Re-ingesting the same extract inserts nothing: studies are unique per (project, MRN, accession,
study UID, series UID) and an extract lists each procedure_occurrence_id once. The ``extracts``
row, the studies, their links and the registration's new state are written in one transaction,
so a failed ingest leaves only its registration (with the reason) behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pandas as pd
from sqlalchemy import Connection, Table, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from voxl_assets.cohort.extract_reader import CohortTable, ExtractSummary, read_any_extract
from voxl_assets.cohort.registration import (
    Registration,
    find_registration,
    mark_ingested,
    parse_extract_key,
    register_extract,
)
from voxl_assets.cohort.values import ExtractError
from voxl_assets.db import Extract, ExtractRegistration, ExtractStudy, Study, VoxlDatabase
from voxl_assets.db.models import StudyStatus, extract_partition_key, study_partition_key, utcnow

BATCH = 5000
WHOLE_PROJECT_SCAN_ABOVE = 2000
StudyIdentity = tuple[str, str, str, str]
EMPTY_EXTRACT_WARNING = "0 imaging studies: the extract was accepted but has nothing to retrieve"

__all__ = [
    "IngestCounts",
    "find_extract",
    "ingest_registered",
    "persist_cohort",
    "register_extract",
]


class RegistrationChanged(RuntimeError):
    """The registration moved to another source while this ingest read the old one."""


@dataclass(frozen=True)
class IngestCounts:
    """What one ingest did; safe to show anywhere (no identifiers)."""

    rows_read: int
    imaging_studies: int
    skipped_not_imaging: int
    new_studies: int
    already_known: int
    study_partition_keys: list[str]
    duplicate_rows_folded: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {
            "rows_read": self.rows_read,
            "imaging_studies": self.imaging_studies,
            "new_studies": self.new_studies,
            "already_known": self.already_known,
            "skipped_not_imaging": self.skipped_not_imaging,
            "duplicate_rows_folded": self.duplicate_rows_folded,
        }


def find_extract(session: Session, partition_key: str) -> Extract | None:
    """The ingested extract behind a partition key, or None."""
    parsed = parse_extract_key(partition_key)
    if parsed is None:
        return None
    project, when = parsed
    return session.scalar(
        select(Extract).where(Extract.project == project, Extract.extract_datetime == when)
    )


def ingest_registered(database: VoxlDatabase, registration: Registration) -> IngestCounts:
    """Read the registration's source (its one extract) and persist it.

    Raises:
        ExtractError: bad content, naming file, column and row (nothing is written).
        RegistrationChanged: the registration moved to another source meanwhile.
    """
    expected = ExtractSummary(
        project_name=registration.project,
        extract_datetime=registration.extract_datetime,
        settings={},
        git_hash=None,
        source=registration.source,
    )
    cohort = read_any_extract(registration.source, expected)
    return persist_cohort(database, cohort, registration.project)


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
    """Store the extract, its studies and their procedure_occurrence_ids in one transaction,
    and mark its registration ingested.

    Raises:
        LookupError: the extract is not registered.
        RegistrationChanged: the registration now belongs to another source.
        ExtractError: a participant_id that contradicts one recorded by an earlier extract.
    """
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
    participant_of: dict[StudyIdentity, str] = {
        identity: participant
        for identity, participant in zip(
            identities_per_row, messages["participant_id"], strict=True
        )
        if participant
    }
    unique_identities = list(first_datetime)
    key = extract_partition_key(project_slug, cohort.summary.extract_datetime)

    with db.session() as session:
        registration = find_registration(session, key)
        if registration is None:
            raise LookupError(
                f"extract {key} is not registered; run `voxl populate` or let the sensor "
                "register it"
            )
        if registration.source_path != str(cohort.summary.source):
            raise RegistrationChanged(
                f"extract {key} was registered again from {registration.source_path} while "
                f"{cohort.summary.source} was read; that registration's own run ingests it"
            )
        extract = _extract_row(session, registration)
        known = _existing_study_ids(session, project_slug, unique_identities)
        if participant_of:
            _reconcile_participants(session, project_slug, known, participant_of, messages)
        now = utcnow()
        new_rows = [
            {
                "project": project_slug,
                "mrn": mrn,
                "accession_number": accession,
                "study_uid": uid,
                "series_uid": series,
                "participant_id": participant_of.get((mrn, accession, uid, series), ""),
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
        counts = IngestCounts(
            rows_read=cohort.rows_read,
            imaging_studies=cohort.imaging_studies,
            skipped_not_imaging=cohort.skipped_not_imaging,
            new_studies=len(unique_identities) - len(known),
            already_known=len(known),
            study_partition_keys=keys,
            duplicate_rows_folded=cohort.duplicate_rows_folded,
            warnings=[EMPTY_EXTRACT_WARNING] if cohort.imaging_studies == 0 else [],
        )
        mark_ingested(session, registration, counts.as_metadata(), counts.warnings)
    return counts


def _extract_row(session: Session, registration: ExtractRegistration) -> Extract:
    """The ``extracts`` row of a registration, created on its first ingest."""
    extract = session.scalar(
        select(Extract).where(
            Extract.project == registration.project,
            Extract.extract_datetime == registration.extract_datetime,
        )
    )
    if extract is None:
        extract = Extract(
            project=registration.project,
            extract_datetime=registration.extract_datetime,
            source_path=registration.source_path,
            omop_es_settings=registration.omop_es_settings,
            omop_es_git_hash=registration.omop_es_git_hash,
        )
        session.add(extract)
        session.flush()
    elif extract.source_path != registration.source_path:
        extract.source_path = registration.source_path  # a replaced, never-ingested source
    return extract


def _row_of(messages: pd.DataFrame, identity: StudyIdentity) -> str:
    """``<file>: row <n>`` of the first message of a study (for errors; no values)."""
    match = (
        (messages["mrn"] == identity[0])
        & (messages["accession_number"] == identity[1])
        & (messages["study_uid"] == identity[2])
        & (messages["series_uid"] == identity[3])
    )
    first = messages[match].iloc[0]
    return f"{first['_file']}: row {first['_row']}" if "_file" in messages else "a row"


def _reconcile_participants(
    session: Session,
    project: str,
    known: dict[StudyIdentity, int],
    participant_of: dict[StudyIdentity, str],
    messages: pd.DataFrame,
) -> None:
    """Check the extract's participant ids against the project's studies and fill them in on
    known studies that had none and are not de-identified yet.

    Raises:
        ExtractError: a participant id that differs from the one a study (or another study of
            the same MRN) already has, or one that already names another MRN.
    """

    def refuse(identity: StudyIdentity, problem: str) -> ExtractError:
        return ExtractError(f"{_row_of(messages, identity)}: column participant_id {problem}")

    by_mrn = {identity[0]: (identity, p) for identity, p in participant_of.items()}
    by_participant = {p: identity for identity, p in participant_of.items()}
    mrns, participants = list(by_mrn), list(by_participant)
    for start in range(0, max(len(mrns), len(participants)), 500):
        rows = session.execute(
            select(Study.mrn, Study.participant_id).where(
                Study.project == project,
                Study.participant_id != "",
                or_(
                    Study.mrn.in_(mrns[start : start + 500]),
                    Study.participant_id.in_(participants[start : start + 500]),
                ),
            )
        )
        for mrn, participant in rows:
            if mrn in by_mrn and by_mrn[mrn][1] != participant:
                raise refuse(
                    by_mrn[mrn][0],
                    "differs from the participant id an earlier extract gave this patient",
                )
            if participant in by_participant and by_participant[participant][0] != mrn:
                raise refuse(
                    by_participant[participant],
                    "is already the participant id of another patient in this project",
                )
    known_ids = {known[i]: i for i in participant_of if i in known}
    ids = list(known_ids)
    fill: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        for study_id, recorded, pseudo_patient in session.execute(
            select(Study.id, Study.participant_id, Study.pseudo_patient_id).where(
                Study.id.in_(ids[start : start + 500])
            )
        ):
            wanted = participant_of[known_ids[study_id]]
            if recorded == wanted:
                continue
            if recorded or pseudo_patient:
                raise refuse(
                    known_ids[study_id],
                    "is new for a study already de-identified under another patient id; it "
                    "cannot change after delivery",
                )
            fill[study_id] = wanted
    for study_id, participant in fill.items():
        session.execute(
            update(Study).where(Study.id == study_id).values(participant_id=participant)
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
