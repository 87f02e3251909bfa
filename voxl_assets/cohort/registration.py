"""Extract identity: which source (folder or CSV file) holds each (project, extract datetime).

An identity is claimed once. Registering another source for it is refused, naming both paths,
unless the first never got in: a failed registration (and, on request, one still waiting for its
run) is replaced by the new source. Sources in the watched folder that cannot become a
registration at all (unreadable, an unregistered project, a claimed identity) are kept as
problems so `voxl status` shows them until they are fixed or removed.

Reasons stored here are shown to users: they name files, columns and rows, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from voxl_assets.cohort.extract_reader import ExtractSummary
from voxl_assets.cohort.values import ExtractError
from voxl_assets.db import (
    ExtractRegistration,
    ExtractSourceProblem,
    RegistrationState,
    VoxlDatabase,
)
from voxl_assets.db.models import extract_partition_key, utcnow

KEY_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"


class ExtractConflict(ExtractError):
    """Another source already holds this extract's identity (bad input: exit code 2)."""


@dataclass(frozen=True)
class Registration:
    """A registration as its caller needs it (no identifiers: safe to log)."""

    key: str  # the extract partition key <project>/<extract-datetime>
    project: str
    extract_datetime: datetime
    source_path: str
    state: str
    revision: int
    changed: bool  # new, retried or replaced: it needs a cohort run
    replaced: str | None = None  # the source it replaced
    reason: str | None = None
    bad_input: bool = False
    warnings: tuple[str, ...] = ()
    updated_at: datetime | None = None

    @property
    def run_key(self) -> str:
        """The sensor's run key: a new revision (a retry, a replacement) gets a new run."""
        return f"{self.key}#{self.revision}"

    @property
    def source(self) -> Path:
        return Path(self.source_path)


def parse_extract_key(key: str) -> tuple[str, datetime] | None:
    """``<project>/<extract-datetime>`` -> (project, datetime), or None for a malformed key."""
    project, _, stamp = key.partition("/")
    try:
        return project, datetime.strptime(stamp, KEY_TIME_FORMAT)
    except ValueError:
        return None


def _snapshot(
    row: ExtractRegistration, *, changed: bool = False, replaced: str | None = None
) -> Registration:
    return Registration(
        key=extract_partition_key(row.project, row.extract_datetime),
        project=row.project,
        extract_datetime=row.extract_datetime,
        source_path=row.source_path,
        state=row.state,
        revision=row.revision,
        changed=changed,
        replaced=replaced,
        reason=row.reason,
        bad_input=row.bad_input,
        warnings=tuple(row.warnings or ()),
        updated_at=row.updated_at,
    )


def _find(session: Session, project: str, when: datetime) -> ExtractRegistration | None:
    return session.scalar(
        select(ExtractRegistration).where(
            ExtractRegistration.project == project, ExtractRegistration.extract_datetime == when
        )
    )


def find_registration(session: Session, key: str) -> ExtractRegistration | None:
    parsed = parse_extract_key(key)
    return _find(session, *parsed) if parsed else None


def load_registration(database: VoxlDatabase, key: str) -> Registration | None:
    with database.session() as session:
        row = find_registration(session, key)
        return _snapshot(row) if row else None


def _take_over(row: ExtractRegistration, summary: ExtractSummary, source: str) -> None:
    row.source_path = source
    row.omop_es_settings = _json_settings(summary.settings)
    row.omop_es_git_hash = summary.git_hash
    row.state = RegistrationState.PENDING.value
    row.reason, row.bad_input, row.warnings, row.counts = None, False, None, None
    row.revision += 1
    row.updated_at = utcnow()


def register(
    database: VoxlDatabase,
    summary: ExtractSummary,
    project_slug: str,
    *,
    replace_pending: bool = False,
) -> Registration:
    """Claim the extract's identity for ``summary.source``.

    The same source again: unchanged, or re-opened (a new revision) when its ingest failed. Another
    source: it replaces a failed registration (or, with ``replace_pending``, one that has not been
    ingested yet), else it is refused.

    Raises:
        ExtractConflict: the identity is held by another source, naming both paths.
    """
    source = str(summary.source)
    when = summary.extract_datetime
    key = extract_partition_key(project_slug, when)
    for attempt in range(2):  # a concurrent first registration loses the insert: read it again
        try:
            with database.session() as session:
                row = _find(session, project_slug, when)
                if row is None:
                    row = ExtractRegistration(
                        project=project_slug,
                        extract_datetime=when,
                        source_path=source,
                        state=RegistrationState.PENDING.value,
                        bad_input=False,
                        omop_es_settings=_json_settings(summary.settings),
                        omop_es_git_hash=summary.git_hash,
                        revision=1,
                    )
                    session.add(row)
                    session.flush()
                    return _snapshot(row, changed=True)
                failed = row.state == RegistrationState.FAILED.value
                if row.source_path == source:
                    if failed:
                        _take_over(row, summary, source)
                    return _snapshot(row, changed=failed)
                pending = row.state == RegistrationState.PENDING.value
                if failed or (pending and replace_pending):
                    old = row.source_path
                    _take_over(row, summary, source)
                    return _snapshot(row, changed=True, replaced=old)
                raise ExtractConflict(
                    f"extract {key} is already registered from {row.source_path} ({row.state}); "
                    f"{source} has the same project and extract datetime. Keep one of them, or "
                    "give the new one its own extract datetime"
                )
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def register_extract(database: VoxlDatabase, summary: ExtractSummary, project_slug: str) -> str:
    """Register the extract (see ``register``) and return its partition key."""
    return register(database, summary, project_slug).key


def record_ingest_failure(
    database: VoxlDatabase, key: str, source: str, reason: str, *, bad_input: bool
) -> None:
    """Keep why the ingest of ``source`` failed. A registration not yet ingested becomes
    ``failed`` (replaceable); an ingested one keeps its state and shows the reason. Nothing is
    changed when the registration has moved on to another source meanwhile."""
    parsed = parse_extract_key(key)
    if parsed is None:
        return
    with database.session() as session:
        row = _find(session, *parsed)
        if row is None or row.source_path != source:
            return
        if row.state != RegistrationState.INGESTED.value:
            row.state = RegistrationState.FAILED.value
        row.reason, row.bad_input, row.updated_at = reason, bad_input, utcnow()


def mark_ingested(
    session: Session, row: ExtractRegistration, counts: dict[str, int], warnings: list[str]
) -> None:
    """Inside the ingest's transaction: the registration is ingested, with its counts."""
    row.state = RegistrationState.INGESTED.value
    row.reason, row.bad_input = None, False
    row.counts, row.warnings = counts, warnings or None
    row.updated_at = utcnow()


def failed_registrations_under(database: VoxlDatabase, root: Path) -> list[Registration]:
    """Failed registrations whose source lies in ``root`` (the sensor retries changed ones)."""
    prefix = str(root).rstrip("/") + "/"
    with database.session() as session:
        rows = session.scalars(
            select(ExtractRegistration).where(
                ExtractRegistration.state == RegistrationState.FAILED.value
            )
        )
        return [_snapshot(r) for r in rows if r.source_path.startswith(prefix)]


def reopen(database: VoxlDatabase, key: str) -> Registration | None:
    """A failed registration whose source was fixed in place: pending again, new revision."""
    with database.session() as session:
        row = find_registration(session, key)
        if row is None or row.state != RegistrationState.FAILED.value:
            return None
        row.state, row.reason, row.bad_input = RegistrationState.PENDING.value, None, False
        row.revision += 1
        row.updated_at = utcnow()
        return _snapshot(row, changed=True)


# --- sources that did not become registrations ---------------------------------------------


def record_source_problem(database: VoxlDatabase, source: Path, reason: str) -> None:
    with database.session() as session:
        row = session.scalar(
            select(ExtractSourceProblem).where(ExtractSourceProblem.source_path == str(source))
        )
        if row is None:
            session.add(ExtractSourceProblem(source_path=str(source), reason=reason))
        else:
            row.reason, row.last_seen = reason, utcnow()


def clear_source_problem(database: VoxlDatabase, source: Path) -> None:
    with database.session() as session:
        session.execute(
            delete(ExtractSourceProblem).where(ExtractSourceProblem.source_path == str(source))
        )


def prune_source_problems(database: VoxlDatabase, root: Path, present: set[str]) -> None:
    """Forget the problems of sources in ``root`` that are gone (``present``: names there)."""
    prefix = str(root).rstrip("/") + "/"
    with database.session() as session:
        rows = session.execute(select(ExtractSourceProblem.id, ExtractSourceProblem.source_path))
        gone = [
            problem_id
            for problem_id, path in rows
            if path.startswith(prefix) and path[len(prefix) :] not in present
        ]
        if gone:
            session.execute(delete(ExtractSourceProblem).where(ExtractSourceProblem.id.in_(gone)))


def _json_settings(settings: dict[str, object]) -> dict[str, object]:
    return {str(k): _json_safe(v) for k, v in settings.items()}


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
