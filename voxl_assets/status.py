"""The `voxl status` report: per extract, studies in each state and the top failure reasons;
then registrations not (yet) ingested, with why, and sources in the extracts folder that could not
be registered."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select

from voxl_assets.db import (
    Extract,
    ExtractRegistration,
    ExtractSourceProblem,
    ExtractStudy,
    RegistrationState,
    Study,
    StudyStatus,
    VoxlDatabase,
)
from voxl_assets.db.models import extract_partition_key

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


def extract_statuses(
    database: VoxlDatabase, project: str | None = None, *, top_reasons: int = 5
) -> list[ExtractStatus]:
    """Status of every ingested extract (of ``project`` if given), oldest first; then the
    registrations not ingested and (without ``project``) the sources that are no registration."""
    with database.session() as session:
        query = select(Extract).order_by(Extract.project, Extract.extract_datetime)
        if project:
            query = query.where(Extract.project == project)
        extracts = list(session.scalars(query))
        registrations = {
            (r.project, r.extract_datetime): r
            for r in session.scalars(
                select(ExtractRegistration).order_by(
                    ExtractRegistration.project, ExtractRegistration.extract_datetime
                )
            )
            if not project or r.project == project
        }
        result = []
        for extract in extracts:
            registration = registrations.get((extract.project, extract.extract_datetime))
            counts = dict(
                session.execute(
                    select(Study.status, func.count(func.distinct(Study.id)))
                    .join(ExtractStudy, ExtractStudy.study_id == Study.id)
                    .where(ExtractStudy.extract_id == extract.id)
                    .group_by(Study.status)
                ).all()
            )
            reasons: Counter[str] = Counter()
            waiting: Counter[str] = Counter()
            for status, reason, waiting_for in session.execute(
                select(Study.status, Study.failure_reason, Study.waiting_for)
                .join(ExtractStudy, ExtractStudy.study_id == Study.id)
                .where(
                    ExtractStudy.extract_id == extract.id,
                    Study.status.in_(
                        [
                            StudyStatus.FAILED.value,
                            StudyStatus.FILTERED.value,
                            StudyStatus.WAITING.value,
                        ]
                    ),
                )
            ):
                if status == StudyStatus.WAITING.value:
                    waiting[waiting_for or "an archive window"] += 1
                else:
                    reasons[f"{status}: {reason or 'no reason recorded'}"] += 1
            result.append(
                ExtractStatus(
                    project=extract.project,
                    extract=extract_partition_key(extract.project, extract.extract_datetime),
                    registered_at=extract.registered_at.isoformat(timespec="seconds"),
                    exported_at=extract.exported_at.isoformat(timespec="seconds")
                    if extract.exported_at
                    else None,
                    total=sum(counts.values()),
                    by_state={state: int(counts.get(state, 0)) for state in STATES},
                    failure_reasons=reasons.most_common(top_reasons),
                    waiting=waiting.most_common(top_reasons),
                    source=extract.source_path,
                    warnings=_warnings(registration),
                )
            )
        for registration in registrations.values():
            if registration.state != RegistrationState.INGESTED.value:
                result.append(_not_ingested(registration))
        if not project:
            problems = session.scalars(
                select(ExtractSourceProblem).order_by(ExtractSourceProblem.source_path)
            )
            result.extend(_source_problem(problem) for problem in problems)
    return result


def _warnings(registration: ExtractRegistration | None) -> list[str]:
    if registration is None:
        return []
    warnings = list(registration.warnings or [])
    if registration.reason:  # an ingested extract whose latest re-read failed
        warnings.append(f"its latest ingest run failed: {registration.reason}")
    return warnings


def _not_ingested(registration: ExtractRegistration) -> ExtractStatus:
    return ExtractStatus(
        project=registration.project,
        extract=extract_partition_key(registration.project, registration.extract_datetime),
        registered_at=registration.registered_at.isoformat(timespec="seconds"),
        exported_at=None,
        total=None,
        by_state=None,
        state=registration.state,
        source=registration.source_path,
        reason=registration.reason,
    )


def _source_problem(problem: ExtractSourceProblem) -> ExtractStatus:
    return ExtractStatus(
        project=None,
        extract=None,
        registered_at=problem.first_seen.isoformat(timespec="seconds"),
        exported_at=None,
        total=None,
        by_state=None,
        state="not_registered",
        source=problem.source_path,
        reason=problem.reason,
    )


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
