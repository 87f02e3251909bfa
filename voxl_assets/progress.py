"""Per-extract progress, as counts by study state (never identifiers)."""

from __future__ import annotations

from voxl_assets.cohort.ingest import find_extract, study_counts_by_status
from voxl_assets.db import StudyStatus, VoxlDatabase

STATE_ORDER = [s.value for s in StudyStatus]
END_STATE = "end_state"  # metadata key on ehr_bundle: the ready_exports signature exported
ENDED = {StudyStatus.UPLOADED.value, StudyStatus.FILTERED.value, StudyStatus.FAILED.value}


def ready_exports(counts: dict[str, int]) -> str | None:
    """A signature of the extract's end state when every study has ended, else None. The export
    records it (``end_state`` on ``ehr_bundle``), so an extract is exported again only when its
    end state changes (a failed study retried and uploaded)."""
    total = sum(counts.values())
    if total == 0 or any(state not in ENDED for state, n in counts.items() if n):
        return None
    return "-".join(f"{state}{counts.get(state, 0)}" for state in sorted(ENDED))


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
