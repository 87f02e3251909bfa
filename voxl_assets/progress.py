"""Per-extract progress, as counts by study state (never identifiers)."""

from __future__ import annotations

from voxl_assets.cohort.ingest import find_extract, study_counts_by_status
from voxl_assets.db import StudyStatus, VoxlDatabase

STATE_ORDER = [s.value for s in StudyStatus]


def extract_progress(database: VoxlDatabase, extract_key: str) -> dict[str, int]:
    with database.session() as session:
        extract = find_extract(session, extract_key)
        extract_id = extract.id if extract else None
    if extract_id is None:
        return {}
    return study_counts_by_status(database, [extract_id]).get(extract_id, {})


def extract_progress_markdown(database: VoxlDatabase, extract_key: str) -> str:
    counts = extract_progress(database, extract_key)
    lines = ["| state | studies |", "|---|---:|"]
    lines += [f"| {state} | {counts.get(state, 0)} |" for state in STATE_ORDER]
    lines.append(f"| **total** | {sum(counts.values())} |")
    return "\n".join(lines)
