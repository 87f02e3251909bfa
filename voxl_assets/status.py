"""The `voxl status` report: per extract, studies in each state and the top failure reasons;
then registrations not (yet) ingested, with why, and sources in the extracts folder that could not
be registered."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from voxl_assets import settings
from voxl_assets.schema_version import head_revisions
from voxl_assets.states import (
    ArchiveRate,
    RegistrationState,
    StudyStatus,
    extract_partition_key,
)

if TYPE_CHECKING:
    from voxl_assets.db import VoxlDatabase

STATES = [s.value for s in StudyStatus]


@dataclass
class ExtractStatus:
    """One line of the report. ``state``: ``ingested`` (with study counts), ``pending`` or
    ``failed`` (a registration not ingested: no counts; ``reason`` says why it failed), or
    ``not_registered`` (a source in the extracts folder that could not be registered: no
    project, and ``reason`` says why)."""

    project: str | None
    extract: str | None  # the partition key: <project>/<extract-datetime>
    registered_at: str
    exported_at: str | None
    total: int | None
    by_state: dict[str, int] | None
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)
    waiting: list[tuple[str, int]] = field(default_factory=list)
    state: str = RegistrationState.INGESTED.value
    source: str | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_statuses(url: str | None = None, project: str | None = None) -> list[ExtractStatus]:
    """`voxl status`: read through the plain DB-API driver (sqlite3, psycopg), so the command
    answers without loading SQLAlchemy; a database that does not exist yet has no extracts, and
    one whose schema is behind is migrated first (through SQLAlchemy and Alembic, once)."""
    with _current_database(url) as reader:
        return [] if reader is None else _statuses(reader, project, 5)


def read_archive_rates(url: str | None = None) -> list[ArchiveRate]:
    """Every archive's recorded query rate, by name, read as `read_statuses` reads."""
    with _current_database(url) as reader:
        if reader is None:
            return []
        rows = reader.rows(
            "SELECT archive, configured_qps, override_qps FROM archive_rate_limits ORDER BY archive"
        )
    return [ArchiveRate(name, float(configured), override) for name, configured, override in rows]


@contextmanager
def _current_database(url: str | None) -> Iterator[_Reader | None]:
    """A reader of the database at ``url`` (default: the deployment's) at the code's schema, or
    None when its SQLite file does not exist yet (nothing to report; nothing created)."""
    url = url or settings.database_url()
    sqlite_path = _sqlite_path(url)
    if sqlite_path not in (None, ":memory:") and not Path(str(sqlite_path)).exists():
        yield None
        return
    with _connect(url, sqlite_path) as connection:
        current = _schema_is_current(connection)
        if current:
            yield _Reader(connection)
    if current:
        return
    from voxl_assets.db import shared_database

    raw = shared_database(url).engine.raw_connection()
    try:
        yield _Reader(raw)
    finally:
        raw.close()


def extract_statuses(
    database: VoxlDatabase | Any, project: str | None = None, *, top_reasons: int = 5
) -> list[ExtractStatus]:
    """Status of every ingested extract (of ``project`` if given), oldest first; then the
    registrations not ingested and (without ``project``) the sources that are no registration.
    ``database``: a `VoxlDatabase` or an open DB-API connection (sqlite3 or psycopg)."""
    if hasattr(database, "engine"):
        connection = database.engine.raw_connection()
        try:
            return _statuses(_Reader(connection), project, top_reasons)
        finally:
            connection.close()
    return _statuses(_Reader(database), project, top_reasons)


class _Reader:
    """Plain SQL over a DB-API connection, whatever its parameter style."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        module = type(getattr(connection, "dbapi_connection", connection)).__module__
        self.placeholder = "?" if module.startswith("sqlite3") else "%s"

    def rows(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql.replace("?", self.placeholder), tuple(parameters))
            return list(cursor.fetchall())
        finally:
            cursor.close()


def _statuses(reader: _Reader, project: str | None, top_reasons: int) -> list[ExtractStatus]:
    where, parameters = ("WHERE project = ?", [project]) if project else ("", [])
    extracts = reader.rows(
        "SELECT id, project, extract_datetime, source_path, registered_at, exported_at "
        f"FROM extracts {where} ORDER BY project, extract_datetime",
        parameters,
    )
    registrations = {
        (row[1], _datetime(row[2])): row
        for row in reader.rows(
            "SELECT state, project, extract_datetime, source_path, reason, warnings, "
            f"registered_at FROM extract_registrations {where} "
            "ORDER BY project, extract_datetime",
            parameters,
        )
    }
    counts: dict[int, dict[str, int]] = {}
    for extract_id, status, count in reader.rows(
        "SELECT l.extract_id, s.status, COUNT(DISTINCT s.id) FROM extract_studies l "
        "JOIN studies s ON s.id = l.study_id GROUP BY l.extract_id, s.status"
    ):
        counts.setdefault(extract_id, {})[status] = int(count)
    reasons: dict[int, Counter[str]] = {}
    waiting: dict[int, Counter[str]] = {}
    ended = (StudyStatus.FAILED.value, StudyStatus.FILTERED.value, StudyStatus.WAITING.value)
    for extract_id, status, reason, waiting_for, count in reader.rows(
        "SELECT l.extract_id, s.status, s.failure_reason, s.waiting_for, COUNT(*) "
        "FROM extract_studies l JOIN studies s ON s.id = l.study_id "
        "WHERE s.status IN (?, ?, ?) "
        "GROUP BY l.extract_id, s.status, s.failure_reason, s.waiting_for",
        ended,
    ):
        if status == StudyStatus.WAITING.value:
            waiting.setdefault(extract_id, Counter())[waiting_for or "an archive window"] += count
        else:
            key = f"{status}: {reason or 'no reason recorded'}"
            reasons.setdefault(extract_id, Counter())[key] += count
    result = []
    for extract_id, slug, extract_datetime, source, registered_at, exported_at in extracts:
        when = _datetime(extract_datetime)
        by_state = counts.get(extract_id, {})
        result.append(
            ExtractStatus(
                project=slug,
                extract=extract_partition_key(slug, when),
                registered_at=_isoformat(registered_at),
                exported_at=_isoformat(exported_at) if exported_at else None,
                total=sum(by_state.values()),
                by_state={state: by_state.get(state, 0) for state in STATES},
                failure_reasons=reasons.get(extract_id, Counter()).most_common(top_reasons),
                waiting=waiting.get(extract_id, Counter()).most_common(top_reasons),
                source=source,
                warnings=_warnings(registrations.get((slug, when))),
            )
        )
    for (
        state,
        slug,
        extract_datetime,
        source,
        reason,
        _,
        registered_at,
    ) in registrations.values():
        if state != RegistrationState.INGESTED.value:
            result.append(
                ExtractStatus(
                    project=slug,
                    extract=extract_partition_key(slug, _datetime(extract_datetime)),
                    registered_at=_isoformat(registered_at),
                    exported_at=None,
                    total=None,
                    by_state=None,
                    state=state,
                    source=source,
                    reason=reason,
                )
            )
    if not project:
        for source, reason, first_seen in reader.rows(
            "SELECT source_path, reason, first_seen FROM extract_source_problems "
            "ORDER BY source_path"
        ):
            result.append(
                ExtractStatus(
                    project=None,
                    extract=None,
                    registered_at=_isoformat(first_seen),
                    exported_at=None,
                    total=None,
                    by_state=None,
                    state="not_registered",
                    source=source,
                    reason=reason,
                )
            )
    return result


def _warnings(registration: tuple[Any, ...] | None) -> list[str]:
    if registration is None:
        return []
    reason, stored = registration[4], registration[5]
    warnings = list((json.loads(stored) if isinstance(stored, str) else stored) or [])
    if reason:  # an ingested extract whose latest re-read failed
        warnings.append(f"its latest ingest run failed: {reason}")
    return warnings


def _datetime(value: datetime | str) -> datetime:
    # SQLite hands back SQLAlchemy's text form of a DateTime; PostgreSQL a datetime.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _isoformat(value: datetime | str) -> str:
    return _datetime(value).isoformat(timespec="seconds")


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///...`` URL (``:memory:`` for an in-memory one), else None."""
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] != "sqlite":
        return None
    path = unquote(rest[1:].split("?")[0]) if rest.startswith("/") else rest
    return path or ":memory:"


@contextmanager
def _connect(url: str, sqlite_path: str | None) -> Iterator[Any]:
    if sqlite_path is not None:
        with closing(sqlite3.connect(sqlite_path, timeout=30)) as connection:
            yield connection
        return
    import psycopg

    rest = url.partition("://")[2]  # postgresql+psycopg://... -> libpq's own URL form
    with psycopg.connect(f"postgresql://{rest}") as connection:
        yield connection


def _schema_is_current(connection: Any) -> bool:
    try:
        applied = {
            row[0] for row in _Reader(connection).rows("SELECT version_num FROM alembic_version")
        }
    except Exception:  # no alembic_version table: a database never migrated
        if hasattr(connection, "rollback"):
            connection.rollback()
        return False
    return frozenset(applied) == head_revisions()


def render_table(statuses: list[ExtractStatus]) -> str:
    """A plain-text table for the terminal, then what is not ingested and why."""
    if not statuses:
        return "No extracts registered yet."
    ingested = [s for s in statuses if s.by_state is not None]
    lines = _extract_table(ingested) if ingested else ["No extracts ingested yet."]
    registrations = [s for s in statuses if s.by_state is None and s.extract]
    if registrations:
        lines.append("registrations not ingested:")
        for status in registrations:
            lines.append(f"  {status.extract}  {status.state}  from {status.source}")
            if status.reason:
                lines.append(f"    {status.reason}")
    problems = [s for s in statuses if s.extract is None]
    if problems:
        lines.append("not registered from the extracts folder:")
        for status in problems:
            reason = status.reason or ""
            lines.append(
                f"  {reason}"
                if reason.startswith(str(status.source))
                else f"  {status.source}: {reason}"
            )
    return "\n".join(lines)


def _extract_table(statuses: list[ExtractStatus]) -> list[str]:
    header = ["extract", *STATES, "total"]
    rows = [
        [
            str(s.extract),
            *(str((s.by_state or {}).get(state, 0)) for state in STATES),
            str(s.total),
        ]
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    for status in statuses:
        for reason, count in status.failure_reasons:
            lines.append(f"  {status.extract}: {count} x {reason}")
        for window, count in status.waiting:
            lines.append(f"  {status.extract}: {count} waiting for {window}")
        for warning in status.warnings:
            lines.append(f"  {status.extract}: warning: {warning}")
    return lines
