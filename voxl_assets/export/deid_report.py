"""The de-identification report: what left the hospital, for the information-governance team.

Per extract (written with the export bundle) or per sample folder (``voxl deid-preview``):
``DEID_REPORT.parquet`` (one row per fact, long format) and ``DEID_REPORT.html`` (the same, a
self-contained page: no script, no external link). It sums the engine's per-study tallies
(``voxl_assets/deid/tally.py``, kept in the VOXL database): every attribute seen with the
operation applied and how often, what was removed as not allowed, private blocks by creator,
filters with reasons and counts, the checks run and passed, and the tag-operation files with
their SHA-256. Tags, keywords, reasons and counts: no value of any instance.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydicom.datadict import get_private_entry, keyword_for_tag
from sqlalchemy import select

from voxl_assets.cohort.ingest import find_extract
from voxl_assets.db import ExtractStudy, StudyDeidSummary, VoxlDatabase
from voxl_assets.deid.study import ALLOW_LIST_CHECK, IDENTIFIER_CHECK
from voxl_assets.deid.tally import (
    CREATOR_ELEMENT,
    DELETED,
    NO_CREATOR,
    PRIVATE_ELEMENT,
    REMOVED,
    DeidTally,
    tag_text,
)
from voxl_assets.upload.base import extract_folder_name

REPORT_PARQUET = "DEID_REPORT.parquet"
REPORT_HTML = "DEID_REPORT.html"
CHECK_DESCRIPTIONS = {
    ALLOW_LIST_CHECK: "every written element is in the project's allow-list (read back from the "
    "encoded bytes of each instance before it is written)",
    IDENTIFIER_CHECK: "no identifier of the study (MRN, accession number, names, birth dates, "
    "source UIDs) in any written element, in any character set, nor in pixel-data text segments",
}
LEAK_GUARD_NOTE = (
    "The export's leak guard then scans every file of the bundle, this report included, for the "
    "values of the extract's private files; its result is the ehr_bundle asset check."
)


@dataclass
class ReportContext:
    """What the report is about; nothing identifying (a project slug and an extract time)."""

    title: str
    project: str
    scope: str  # "extract 2026-11-01T12-00-00" or "preview of a sample folder"
    as_of: (
        datetime | None
    )  # the newest study tally summed (not the clock: same tallies, same bytes)
    voxl_version: str
    studies_in_scope: int
    notes: list[str] = field(default_factory=list)


@dataclass
class ExtractTally:
    tally: DeidTally
    studies: int  # in the extract, de-identified or not
    project: str
    folder: str  # the extract's folder name (its datetime)
    as_of: datetime | None  # the newest study tally


def extract_tally(database: VoxlDatabase, extract_key: str) -> ExtractTally:
    """The extract's studies' tallies summed; a study not de-identified yet has no tally and
    adds nothing but its count."""
    with database.session() as session:
        extract = find_extract(session, extract_key)
        if extract is None:
            raise KeyError(f"extract {extract_key} is not registered")
        study_ids = list(
            session.scalars(
                select(ExtractStudy.study_id).where(ExtractStudy.extract_id == extract.id)
            )
        )
        summaries = session.execute(
            select(StudyDeidSummary.summary, StudyDeidSummary.updated_at)
            .join(ExtractStudy, ExtractStudy.study_id == StudyDeidSummary.study_id)
            .where(ExtractStudy.extract_id == extract.id)
            .order_by(StudyDeidSummary.study_id)
        ).all()
        project, folder = extract.project, extract_folder_name(extract.extract_datetime)
    tally = DeidTally()
    for summary, _updated in summaries:
        tally.merge(DeidTally.from_json(summary))
    as_of = max((updated for _summary, updated in summaries), default=None)
    return ExtractTally(tally, len(set(study_ids)), project, folder, as_of)


# --- the rows -------------------------------------------------------------------------------


def attribute_name(number: int, creator: str) -> str:
    """The keyword of a public tag, the dictionary name of a private one ('' when unknown)."""
    if number & CREATOR_ELEMENT:
        return "PrivateCreator"
    if number & PRIVATE_ELEMENT:
        tag = (number >> 16 & 0xFFFF) << 16 | 0x1000 | (number & 0xFF)
        try:
            return str(get_private_entry(tag, creator)[2])
        except KeyError:
            return ""
    return keyword_for_tag(number) or ""


@dataclass(frozen=True)
class Row:
    section: str
    tag: str = ""
    name: str = ""
    private_creator: str = ""
    operation: str = ""
    count: int = 0
    detail: str = ""


def report_rows(tally: DeidTally, context: ReportContext) -> list[Row]:
    """Every fact of the report, as rows (the parquet file, and the HTML page's tables)."""
    rows = [
        Row("summary", name="studies in scope", count=context.studies_in_scope),
        Row("summary", name="studies de-identified", count=tally.studies),
        Row("summary", name="studies with instances written", count=tally.studies_written),
        Row("summary", name="studies filtered out entirely", count=tally.studies_filtered),
        Row(
            "summary", name="studies stopped by a privacy check", count=tally.studies_failed_checks
        ),
        Row("summary", name="instances read", count=tally.instances_in),
        Row("summary", name="instances written", count=tally.instances_out),
    ]
    for (name, sha), studies in sorted(tally.profile_files.items()):
        rows.append(
            Row("profile_file", name=name, count=studies, detail=f"sha256:{sha}")
            if not tally.profiles.get(name)
            else Row(
                "profile_file",
                name=name,
                operation=tally.profiles[name],
                count=studies,
                detail=f"sha256:{sha}",
            )
        )
    for name, check in sorted(tally.checks.items()):
        rows.append(
            Row(
                "check",
                name=name,
                operation=f"{check.studies_passed} of {check.studies_run} studies passed",
                count=check.instances_checked,
                detail=CHECK_DESCRIPTIONS.get(name, ""),
            )
        )
    for reason, count in sorted(tally.filtered.items()):
        rows.append(Row("filter", name=reason, operation="instances left out", count=count))
    for reason, count in sorted(tally.refused.items()):
        rows.append(Row("refusal", name=reason, operation="instances refused", count=count))
    for group, creator, kept, removed in tally.private_blocks():
        rows.append(
            Row(
                "private_block",
                tag=f"({group:04X},xxxx)",
                private_creator=creator,
                operation="elements kept / removed",
                count=kept + removed,
                detail=f"{kept} kept, {removed} removed",
            )
        )
    for (number, creator, operation), count in sorted(tally.attributes.items()):
        rows.append(
            Row(
                "attribute",
                tag=tag_text(number),
                name=attribute_name(number, creator),
                private_creator=creator,
                operation=operation,
                count=count,
            )
        )
    for change, count in sorted(tally.vr_changes.items()):
        rows.append(Row("vr_change", name=change, operation="kept element's VR", count=count))
    return rows


def report_table(rows: list[Row]) -> pa.Table:
    return pa.table(
        {
            "section": pa.array([r.section for r in rows], pa.string()),
            "tag": pa.array([r.tag for r in rows], pa.string()),
            "name": pa.array([r.name for r in rows], pa.string()),
            "private_creator": pa.array([r.private_creator for r in rows], pa.string()),
            "operation": pa.array([r.operation for r in rows], pa.string()),
            "count": pa.array([r.count for r in rows], pa.int64()),
            "detail": pa.array([r.detail for r in rows], pa.string()),
        }
    )


def operation_totals(tally: DeidTally) -> list[tuple[str, int, int]]:
    """(operation, distinct attributes, occurrences), most frequent first."""
    attributes: Counter[str] = Counter()
    occurrences: Counter[str] = Counter()
    for (_number, _creator, operation), count in tally.attributes.items():
        attributes[operation] += 1
        occurrences[operation] += count
    return sorted(
        ((op, attributes[op], occurrences[op]) for op in attributes), key=lambda t: (-t[2], t[0])
    )


# --- the page -------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;
color:#1d2433;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:2px solid
#d5dbe6;padding-bottom:.2em}.sub{color:#5b6477;margin-top:0}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{text-align:left;padding:.3em .6em;
border-bottom:1px solid #e4e8ef;vertical-align:top}th{background:#f1f4f9;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.92em}
.ok{color:#176f2c;font-weight:600}.bad{color:#a4161a;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}.card{background:#f1f4f9;border-radius:6px;
padding:.6em 1em;min-width:9em}.card b{display:block;font-size:1.5em}
.op-keep{color:#176f2c}.op-removed{color:#a4161a}.op-replace{color:#7a4d00}
details summary{cursor:pointer;font-weight:600;margin:.6em 0}
"""


def _cell(value: object, numeric: bool = False) -> str:
    text = html.escape(str(value))
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    if not rows:
        return '<p class="sub">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(_cell(v, i in numeric) for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _op_class(operation: str) -> str:
    if operation.startswith(("removed", DELETED)):
        return "op-removed"
    if operation.startswith("keep"):
        return "op-keep"
    return "op-replace"


def report_html(tally: DeidTally, context: ReportContext) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    cards = [
        ("studies in scope", context.studies_in_scope),
        ("studies written", tally.studies_written),
        ("filtered out", tally.studies_filtered),
        ("stopped by a check", tally.studies_failed_checks),
        ("instances read", tally.instances_in),
        ("instances written", tally.instances_out),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(context.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(context.title)}</h1>",
        f"<p class='sub'>project <b>{esc(context.project)}</b> &middot; {esc(context.scope)} "
        + (
            f"&middot; tallies as of {esc(context.as_of.strftime('%Y-%m-%d %H:%M UTC'))} "
            if context.as_of
            else ""
        )
        + f"&middot; VOXL {esc(context.voxl_version)}</p>",
        "<p>What the de-identification engine did to every instance of these studies, counted "
        "while it ran. Tags, keywords, private creators, reasons and counts only: no value of "
        "any instance is in this report.</p>",
        "<div class='cards'>"
        + "".join(f"<div class='card'><b>{n}</b>{esc(label)}</div>" for label, n in cards)
        + "</div>",
    ]
    parts += [f"<p>{esc(note)}</p>" for note in context.notes]
    parts.append("<h2>Tag-operation files (the allow-list)</h2>")
    parts.append(
        _table(
            ["file", "PS3.15 Annex E options it follows", "SHA-256", "studies"],
            [
                [name, tally.profiles.get(name, ""), sha, studies]
                for (name, sha), studies in sorted(tally.profile_files.items())
            ],
            {3},
        )
    )
    parts.append("<h2>Checks run on every written instance</h2>")
    check_rows = []
    for name, check in sorted(tally.checks.items()):
        passed = check.studies_passed == check.studies_run
        verdict = (
            f"<span class='{'ok' if passed else 'bad'}'>"
            f"{check.studies_passed} of {check.studies_run} studies passed</span>"
        )
        check_rows.append(
            f"<tr><td><code>{esc(name)}</code></td><td>{esc(CHECK_DESCRIPTIONS.get(name, ''))}"
            f"</td><td>{verdict}</td><td class='n'>{check.instances_checked}</td></tr>"
        )
    parts.append(
        "<table><thead><tr><th>check</th><th>what it asserts</th><th>result</th>"
        "<th>instances checked</th></tr></thead><tbody>" + "".join(check_rows) + "</tbody></table>"
        if check_rows
        else "<p class='sub'>none run</p>"
    )
    parts.append(f"<p class='sub'>{esc(LEAK_GUARD_NOTE)}</p>")
    parts.append("<h2>Filters</h2>")
    parts.append(
        _table(
            ["reason", "instances left out"],
            [[r, c] for r, c in sorted(tally.filtered.items())],
            {1},
        )
    )
    if tally.refused:
        parts.append("<h2>Instances refused as broken</h2>")
        parts.append(
            _table(["reason", "instances"], [[r, c] for r, c in sorted(tally.refused.items())], {1})
        )
    parts.append("<h2>Operations applied</h2>")
    parts.append(
        _table(
            ["operation", "attributes", "occurrences"],
            [[op, a, n] for op, a, n in operation_totals(tally)],
            {1, 2},
        )
    )
    removed = [
        [tag_text(n), attribute_name(n, c), k]
        for (n, c, op), k in sorted(tally.attributes.items())
        if op == REMOVED and not n & (PRIVATE_ELEMENT | CREATOR_ELEMENT)
    ]
    parts.append("<h2>Removed as not allowed (public attributes)</h2>")
    parts.append(_table(["tag", "keyword", "occurrences"], removed, {2}))
    parts.append("<h2>Private blocks by creator</h2>")
    parts.append(
        _table(
            ["group", "private creator", "elements kept", "elements removed"],
            [
                [f"({g:04X},xxxx)", c if c else NO_CREATOR, kept, gone]
                for g, c, kept, gone in tally.private_blocks()
            ],
            {2, 3},
        )
    )
    parts.append(f"<h2>Every attribute seen ({len(tally.attributes)} tag and operation pairs)</h2>")
    attribute_rows = "".join(
        f"<tr><td><code>{esc(tag_text(n))}</code></td><td>{esc(attribute_name(n, c))}</td>"
        f"<td>{esc(c)}</td><td class='{_op_class(op)}'>{esc(op)}</td><td class='n'>{k}</td></tr>"
        for (n, c, op), k in sorted(tally.attributes.items())
    )
    parts.append(
        "<table><thead><tr><th>tag</th><th>keyword</th><th>private creator</th>"
        "<th>operation</th><th>occurrences</th></tr></thead><tbody>"
        + attribute_rows
        + "</tbody></table>"
    )
    if tally.vr_changes:
        parts.append("<h2>Kept elements whose VR was corrected</h2>")
        parts.append(
            _table(
                ["change", "occurrences"],
                [[c, k] for c, k in sorted(tally.vr_changes.items())],
                {1},
            )
        )
    parts.append("</body></html>\n")
    return "".join(parts)


def report_markdown(tally: DeidTally, studies_in_scope: int) -> str:
    """A short summary for the asset's metadata in the UI (the page has the detail)."""
    lines = [
        f"**{tally.studies_written}** of {studies_in_scope} studies written, "
        f"{tally.studies_filtered} filtered out, {tally.studies_failed_checks} stopped by a "
        f"check; {tally.instances_out} of {tally.instances_in} instances written.",
        "",
        "| check | studies passed | instances checked |",
        "|---|---|---|",
    ]
    for name, check in sorted(tally.checks.items()):
        lines.append(
            f"| {name} | {check.studies_passed} of {check.studies_run} | "
            f"{check.instances_checked} |"
        )
    lines += ["", "| operation | attributes | occurrences |", "|---|---|---|"]
    lines += [f"| {op} | {a} | {n} |" for op, a, n in operation_totals(tally)]
    if tally.filtered:
        lines += ["", "| filter | instances |", "|---|---|"]
        lines += [f"| {r} | {c} |" for r, c in sorted(tally.filtered.items())]
    lines += ["", "| tag-operation file | sha256 |", "|---|---|"]
    lines += [f"| {n} | `{s[:16]}...` |" for (n, s) in sorted(tally.profile_files)]
    return "\n".join(lines)


def write_deid_report(tally: DeidTally, context: ReportContext, folder: Path) -> list[Path]:
    """Write ``DEID_REPORT.parquet`` and ``DEID_REPORT.html`` into ``folder``."""
    from voxl_assets.export.bundle import write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    parquet, page = folder / REPORT_PARQUET, folder / REPORT_HTML
    write_parquet(report_table(report_rows(tally, context)), parquet)
    page.write_text(report_html(tally, context), encoding="utf-8")
    return [parquet, page]
