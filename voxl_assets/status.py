"""The `voxl status` report: per extract, studies in each state and the top failure reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select

from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import extract_partition_key

STATES = [s.value for s in StudyStatus]


@dataclass
class ExtractStatus:
    project: str
    extract: str  # the partition key: <project>/<extract-datetime>
    registered_at: str
    exported_at: str | None
    total: int
    by_state: dict[str, int]
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)
    waiting: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def extract_statuses(
    database: VoxlDatabase, project: str | None = None, *, top_reasons: int = 5
) -> list[ExtractStatus]:
    """Status of every extract (of ``project`` if given), oldest first."""
    with database.session() as session:
        query = select(Extract).order_by(Extract.project, Extract.extract_datetime)
        if project:
            query = query.where(Extract.project == project)
        extracts = list(session.scalars(query))
        result = []
        for extract in extracts:
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
                )
            )
    return result


def render_table(statuses: list[ExtractStatus]) -> str:
    """A plain-text table for the terminal."""
    if not statuses:
        return "No extracts registered yet."
    header = ["extract", *STATES, "total"]
    rows = [
        [s.extract, *(str(s.by_state[state]) for state in STATES), str(s.total)] for s in statuses
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
    return "\n".join(lines)
