"""Finding complete extracts in the watched folder and registering them (no Dagster).

One tick looks at every source (extract folder or CSV file) directly in the folder. Whatever is
wrong with one source - an unreadable folder, a summary that is not JSON, an unregistered
project, an identity another source holds - becomes a problem of that source, reported once and
kept for `voxl status`; every other source goes on in the same tick.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from voxl_assets.cohort.extract_reader import (
    SUMMARY_FILE,
    describe_os_error,
    is_csv_extract,
    read_any_summaries,
)
from voxl_assets.cohort.registration import (
    ExtractConflict,
    Registration,
    clear_source_problem,
    failed_registrations_under,
    prune_source_problems,
    record_source_problem,
    register,
    reopen,
)
from voxl_assets.cohort.values import ExtractError
from voxl_assets.db import VoxlDatabase
from voxl_assets.project_config import ProjectRegistry


def candidate_extracts(root: Path) -> Iterator[Path]:
    """Extract directories (with or without their summary yet) and CSV files directly in ``root``."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or is_csv_extract(entry):
            yield entry


def newest_change(path: Path) -> float:
    """Latest mtime of ``path`` or anything under it."""
    if path.is_file():
        return path.stat().st_mtime
    newest = path.stat().st_mtime
    for directory, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime)
            except FileNotFoundError:  # renamed away while we looked: still being written
                return time.time()
    return newest


def is_complete(path: Path, *, quiet_seconds: float, now: float | None = None) -> bool:
    """Complete: a CSV, or a directory with ``extract_summary.json``; and nothing changed in it
    for ``quiet_seconds`` (a file still growing has a fresh mtime).

    Raises:
        OSError: the folder cannot be looked into (permission denied...).
    """
    if path.is_dir() and not (path / SUMMARY_FILE).is_file():
        return False
    now = time.time() if now is None else now
    return now - newest_change(path) >= quiet_seconds


@dataclass
class ScanReport:
    """What one look at the folder found; messages hold paths and reasons, never values."""

    to_run: list[Registration] = field(default_factory=list)  # each needs a cohort run
    problems: list[str] = field(default_factory=list)  # new problems, to log as errors
    notices: list[str] = field(default_factory=list)  # registrations, to log as info
    seen: set[str] = field(default_factory=set)  # names of sources fully registered
    reported: dict[str, str] = field(default_factory=dict)  # name -> its reported problem


def scan_extracts(
    database: VoxlDatabase,
    registry: ProjectRegistry,
    root: Path,
    *,
    quiet_seconds: float,
    seen: set[str],
    reported: dict[str, str],
) -> ScanReport:
    """Register every new complete source in ``root``; retry failed ones changed in place."""
    report = ScanReport(seen=set(seen), reported=dict(reported))
    try:
        sources = list(candidate_extracts(root))
    except OSError as exc:
        _report(report, database, root, f"{root}: cannot be read ({describe_os_error(exc)})")
        return report
    for path in sources:
        if path.name in report.seen:
            continue
        try:
            problem = _register_source(report, database, registry, path, quiet_seconds)
        except OSError as exc:
            problem = f"{path}: cannot be read ({describe_os_error(exc)})"
        except Exception as exc:  # one source must never stop the others
            problem = f"{path}: cannot be registered ({type(exc).__name__})"
        if problem:
            _report(report, database, path, problem)
        elif path.name in report.seen and report.reported.pop(path.name, None) is not None:
            clear_source_problem(database, path)
    _retry_fixed_in_place(report, database, root, quiet_seconds)
    prune_source_problems(database, root, {p.name for p in sources})
    for name in set(report.reported) - {p.name for p in sources}:
        del report.reported[name]
    return report


def _register_source(
    report: ScanReport,
    database: VoxlDatabase,
    registry: ProjectRegistry,
    path: Path,
    quiet_seconds: float,
) -> str | None:
    """Register each extract of ``path``; the problem that stopped any of them, or None."""
    summary_file = path / SUMMARY_FILE
    if path.is_dir() and summary_file.exists() and not summary_file.is_file():
        return f"{summary_file}: is not a file; OMOP ES writes the summary as a JSON file"
    if not is_complete(path, quiet_seconds=quiet_seconds):
        return None
    try:
        summaries = read_any_summaries(path)
    except ExtractError as exc:
        return str(exc)
    problems = []
    for summary in summaries:
        slug = summary.project_slug
        if slug not in registry:
            problems.append(
                f"{path}: project '{slug}' is not registered (no YAML in project_definitions/); "
                "not processing it"
            )
            continue
        try:
            registration = register(database, summary, slug)
        except ExtractConflict as exc:
            problems.append(str(exc))
            continue
        if registration.changed:
            report.to_run.append(registration)
            replaced = f", replacing {registration.replaced}" if registration.replaced else ""
            report.notices.append(
                f"extract {path.name} registered as partition {registration.key}{replaced}"
            )
    if problems:
        return "; ".join(problems)
    report.seen.add(path.name)
    return None


def _report(report: ScanReport, database: VoxlDatabase, source: Path, problem: str) -> None:
    """A problem is logged (and kept for `voxl status`) when it is new or has changed."""
    if report.reported.get(source.name) == problem:
        return
    report.reported[source.name] = problem
    report.problems.append(problem)
    record_source_problem(database, source, problem)


def _retry_fixed_in_place(
    report: ScanReport, database: VoxlDatabase, root: Path, quiet_seconds: float
) -> None:
    """A failed extract whose files changed since it failed (and have settled) runs again."""
    now = time.time()
    for failed in failed_registrations_under(database, root):
        if failed.updated_at is None:
            continue
        try:
            changed = newest_change(failed.source)
        except OSError:
            continue  # gone or unreadable: the scan above reports it
        failed_at = failed.updated_at.replace(tzinfo=UTC).timestamp()
        if changed > failed_at and now - changed >= quiet_seconds:
            retried = reopen(database, failed.key)
            if retried is not None:
                report.to_run.append(retried)
                report.notices.append(
                    f"extract {failed.source.name} changed since its ingest failed: "
                    f"partition {failed.key} runs again"
                )
