"""Read an OMOP ES extract (or the pre-Epic CSV escape hatch) into cohort messages.

An extract is a directory written by OMOP ES::

    extract_summary.json                       {"datetime": ..., "settings": {"cdm_source_name": ...}}
    public/omop/PROCEDURE_OCCURRENCE.parquet   procedure_occurrence_id, person_id, procedure_datetime
    private/PERSON_LINKS.parquet               person_id, PrimaryMrn
    private/PROCEDURE_OCCURRENCE_LINKS.parquet procedure_occurrence_id, AccessionNumber, StudyUid_X

or the batched layout, where each table is a folder of ``part-N.parquet`` files
(``public/omop/procedure_occurrence/``, ``private/person_links/``,
``private/procedure_occurrence_links/``). The escape hatch is a CSV file (``csv_extract.py``),
which may hold several extracts.

Errors name the file, the column and the row (never a cell's value) and say what to do.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from voxl_assets.cohort.values import (
    ExtractError,
    clean_identifiers,
    clean_ids,
    parse_extract_datetime,
    study_datetimes,
)
from voxl_assets.project_config import slugify

__all__ = ["CohortTable", "ExtractError", "ExtractSummary", "read_extract", "read_summary"]

SUMMARY_FILE = "extract_summary.json"
MAX_SUMMARY_BYTES = 1 << 20  # OMOP ES writes a few kB; anything bigger is not a summary
MAX_SUMMARY_DEPTH = 32  # OMOP ES nests two or three levels
GIT_HASH_KEYS = ("git_hash", "omop_es_git_hash", "commit", "git_commit", "version_hash")
MAX_SLUG_LENGTH = 128  # the VOXL database's project column
# The VOXL database's column sizes (DICOM allows 64 characters for all but UIDs' 128 in the db).
MAX_LENGTH = {
    "mrn": 64,
    "accession_number": 64,
    "study_uid": 128,
    "series_uid": 128,
    "participant_id": 64,
}


@dataclass(frozen=True)
class ExtractSummary:
    project_name: str
    extract_datetime: datetime
    settings: dict[str, Any]
    git_hash: str | None
    source: Path

    @property
    def project_slug(self) -> str:
        return slugify(self.project_name)


@dataclass
class CohortTable:
    """The imaging studies of one extract, one row per procedure occurrence.

    ``messages`` columns: procedure_occurrence_id (int64), mrn, accession_number, study_uid,
    series_uid, participant_id (str, '' when absent), study_datetime (datetime64 or NaT), and
    ``_file`` / ``_row``, where each row came from.
    """

    summary: ExtractSummary
    messages: pd.DataFrame
    rows_read: int
    skipped_not_imaging: int
    duplicate_rows_folded: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def imaging_studies(self) -> int:
        return len(self.messages)


def describe_os_error(exc: OSError) -> str:
    """What went wrong reading a file, in words (the path is named by the caller)."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


# --- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    flat: str  # relative path of the flat-layout file
    batched: str  # relative path of the batched-layout folder
    columns: tuple[str, ...]


PROCEDURES = _Table(
    "public/omop/PROCEDURE_OCCURRENCE.parquet",
    "public/omop/procedure_occurrence",
    ("procedure_occurrence_id", "person_id", "procedure_datetime"),
)
PERSON_LINKS = _Table(
    "private/PERSON_LINKS.parquet", "private/person_links", ("person_id", "PrimaryMrn")
)
PROCEDURE_LINKS = _Table(
    "private/PROCEDURE_OCCURRENCE_LINKS.parquet",
    "private/procedure_occurrence_links",
    ("procedure_occurrence_id", "AccessionNumber", "StudyUid_X"),
)
# Optional in the links file: a series-level request (see README, "series requests").
OPTIONAL_LINK_COLUMNS = ("SeriesUid_X",)
# The cohort messages, as both readers (OMOP ES layout and CSV escape hatch) return them.
MESSAGE_COLUMNS = (
    "procedure_occurrence_id",
    "mrn",
    "accession_number",
    "study_uid",
    "series_uid",
    "participant_id",
    "study_datetime",
)
# Kept beside the messages so later checks can name where a study came from.
SOURCE_COLUMNS = ("_file", "_row")


def _part_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def _table_files(extract_dir: Path, table: _Table) -> list[Path]:
    flat = extract_dir / table.flat
    if flat.is_file():
        return [flat]
    folder = extract_dir / table.batched
    parts = sorted(folder.glob("*.parquet"), key=_part_number) if folder.is_dir() else []
    if parts:
        return parts
    raise ExtractError(
        f"{extract_dir}: missing {table.flat} (or a folder {table.batched}/ of part-N.parquet files); "
        "check that OMOP ES finished writing the extract"
    )


def _read_table(extract_dir: Path, table: _Table, optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read the needed columns of ``table`` from every file of its layout, checking each file."""
    frames = []
    for path in _table_files(extract_dir, table):
        try:
            schema_names = set(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as exc:
            raise ExtractError(
                f"{path}: not a readable parquet file ({type(exc).__name__}); re-export it"
            ) from None
        missing = [c for c in table.columns if c not in schema_names]
        if missing:
            raise ExtractError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(table.columns)}"
            )
        wanted = list(table.columns) + [c for c in optional if c in schema_names]
        try:
            # Types as the file has them (binary stays bytes), not as a writer's pandas metadata says.
            frame = pq.read_table(path, columns=wanted).to_pandas(ignore_metadata=True)
        except (OSError, pa.ArrowException) as exc:
            raise ExtractError(f"{path}: cannot read parquet data ({type(exc).__name__})") from None
        frame["_file"] = str(path)
        frame["_row"] = range(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# --- cleaning ----------------------------------------------------------------------------------


def _ids(frame: pd.DataFrame, column: str) -> pd.Series:
    return clean_ids(frame[column], frame["_file"], frame["_row"], column)


def _identifiers(
    frame: pd.DataFrame, column: str, kind: str, *, na_text: bool = False
) -> pd.Series:
    return clean_identifiers(
        frame[column],
        frame["_file"],
        frame["_row"],
        column,
        max_length=MAX_LENGTH[kind],
        na_text=na_text,
    )


def _check_unique(frame: pd.DataFrame, column: str, what: str) -> None:
    dupes = frame[frame.duplicated(column, keep=False)]
    if not dupes.empty:
        first = dupes.iloc[0]
        rows = ", ".join(
            f"{Path(str(f)).name} row {r}"
            for f, r in zip(dupes["_file"][:4], dupes["_row"][:4], strict=False)
        )
        raise ExtractError(
            f"{first['_file']}: duplicate {what} in column {column} ({len(dupes)} rows: {rows}); "
            "each must appear once - fix or re-run the OMOP ES extract"
        )


def _blank(frame: pd.DataFrame) -> pd.Series:
    # Plain Python strings: pandas would store a scalar '' as Arrow strings, which are slow to
    # iterate, and ingest iterates every column of the messages.
    return pd.Series("", index=frame.index, dtype=object)


def check_slug(project_name: str, *, where: str) -> None:
    """A project name must give a slug the registry and the database can hold."""
    slug = slugify(project_name)
    if not slug:
        raise ExtractError(f"{where} has no letters or digits, so it names no project")
    if len(slug) > MAX_SLUG_LENGTH:
        raise ExtractError(f"{where} is longer than {MAX_SLUG_LENGTH} characters as a slug")


# --- summary -----------------------------------------------------------------------------------


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def read_summary(extract_dir: Path) -> ExtractSummary:
    """Read ``extract_summary.json``.

    Raises:
        ExtractError: missing, unreadable, too large, not UTF-8, not JSON, nested too deeply,
            a missing or bad ``datetime``, or a missing ``settings.cdm_source_name``.
    """
    path = extract_dir / SUMMARY_FILE
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SUMMARY_BYTES + 1)
    except FileNotFoundError:
        raise ExtractError(f"{path}: missing; OMOP ES writes it last, wait for it") from None
    except OSError as exc:
        raise ExtractError(f"{path}: cannot be read ({describe_os_error(exc)})") from None
    if len(data) > MAX_SUMMARY_BYTES:
        raise ExtractError(f"{path}: larger than {MAX_SUMMARY_BYTES} bytes; not a summary")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractError(f"{path}: not UTF-8 text (byte {exc.start}); re-export it") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtractError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise ExtractError(f"{path}: JSON nested too deeply; not a summary") from None
    if _depth(raw) > MAX_SUMMARY_DEPTH:
        raise ExtractError(f"{path}: JSON nested more than {MAX_SUMMARY_DEPTH} deep; not a summary")
    if not isinstance(raw, dict) or "datetime" not in raw:
        raise ExtractError(f"{path}: field 'datetime' is missing")
    settings = raw.get("settings")
    name = settings.get("cdm_source_name") if isinstance(settings, dict) else None
    if not isinstance(settings, dict) or not isinstance(name, str) or not name.strip():
        raise ExtractError(f"{path}: field 'settings.cdm_source_name' (the project) is missing")
    check_slug(name, where=f"{path}: field 'settings.cdm_source_name'")
    extract_datetime = parse_extract_datetime(raw["datetime"], where=f"{path}: field 'datetime'")
    git_hash = next(
        (str(raw[k]) for k in GIT_HASH_KEYS if raw.get(k)),
        next((str(settings[k]) for k in GIT_HASH_KEYS if settings.get(k)), None),
    )
    return ExtractSummary(
        project_name=name.strip(),
        extract_datetime=extract_datetime,
        settings=settings,
        git_hash=git_hash[:64] if git_hash else None,
        source=extract_dir,
    )


# --- the parquet extract -----------------------------------------------------------------------


def read_extract(extract_dir: Path) -> CohortTable:
    """Read an OMOP ES extract directory into one row per imaging study.

    Rows without an accession number and without a study UID are not imaging: skipped, counted.

    Raises:
        ExtractError: a missing or unreadable file or column, a bad id, datetime or identifier,
            duplicate rows, or an MRN that maps to two persons; nothing is written before this
            is known.
    """
    try:
        return _read_extract(extract_dir)
    except OSError as exc:  # a folder or file we may not read: name it, not what it holds
        where = exc.filename or extract_dir
        raise ExtractError(f"{where}: cannot be read ({describe_os_error(exc)})") from None


def _read_extract(extract_dir: Path) -> CohortTable:
    summary = read_summary(extract_dir)
    procedures = _read_table(extract_dir, PROCEDURES)
    persons = _read_table(extract_dir, PERSON_LINKS)
    links = _read_table(extract_dir, PROCEDURE_LINKS, optional=OPTIONAL_LINK_COLUMNS)

    procedures["procedure_occurrence_id"] = _ids(procedures, "procedure_occurrence_id")
    procedures["person_id"] = _ids(procedures, "person_id")
    procedures["study_datetime"] = study_datetimes(
        procedures["procedure_datetime"],
        procedures["_file"],
        procedures["_row"],
        "procedure_datetime",
    )
    _check_unique(procedures, "procedure_occurrence_id", "procedure occurrence")

    persons["person_id"] = _ids(persons, "person_id")
    persons["mrn"] = _identifiers(persons, "PrimaryMrn", "mrn")
    _check_unique(persons, "person_id", "person")
    _check_mrn_single_person(persons)

    links["procedure_occurrence_id"] = _ids(links, "procedure_occurrence_id")
    links["accession_number"] = _identifiers(links, "AccessionNumber", "accession_number")
    links["study_uid"] = _identifiers(links, "StudyUid_X", "study_uid")
    links["series_uid"] = (
        _identifiers(links, "SeriesUid_X", "series_uid")
        if "SeriesUid_X" in links
        else _blank(links)
    )
    _check_unique(links, "procedure_occurrence_id", "procedure occurrence link")

    merged = procedures[
        ["procedure_occurrence_id", "person_id", "study_datetime", "_file", "_row"]
    ].merge(
        links[["procedure_occurrence_id", "accession_number", "study_uid", "series_uid"]],
        on="procedure_occurrence_id",
        how="left",
    )
    merged["accession_number"] = merged["accession_number"].fillna("")
    merged["study_uid"] = merged["study_uid"].fillna("")
    merged["series_uid"] = merged["series_uid"].fillna("")
    merged["participant_id"] = _blank(merged)
    imaging = (merged["accession_number"] != "") | (merged["study_uid"] != "")
    skipped = int((~imaging).sum())
    merged = merged[imaging].merge(persons[["person_id", "mrn"]], on="person_id", how="left")
    missing_person = merged["mrn"].isna() | (merged["mrn"] == "")
    if missing_person.any():
        row = merged[missing_person].iloc[0]
        raise ExtractError(
            f"{row['_file']}: row {row['_row']}: column person_id has no MRN in "
            f"{PERSON_LINKS.flat} ({int(missing_person.sum())} rows); the private link files are "
            "incomplete"
        )
    messages = merged[[*MESSAGE_COLUMNS, *SOURCE_COLUMNS]].reset_index(drop=True)
    return CohortTable(summary, messages, rows_read=len(procedures), skipped_not_imaging=skipped)


def _check_mrn_single_person(persons: pd.DataFrame) -> None:
    with_mrn = persons[persons["mrn"] != ""]
    per_mrn = with_mrn.groupby("mrn")["person_id"].nunique()
    ambiguous = per_mrn[per_mrn > 1]
    if not ambiguous.empty:
        rows = with_mrn[with_mrn["mrn"].isin(ambiguous.index)]
        listed = ", ".join(f"row {r}" for r in rows["_row"][:6])
        raise ExtractError(
            f"{rows.iloc[0]['_file']}: column PrimaryMrn: {len(ambiguous)} MRN(s) map to more than "
            f"one person_id ({listed}); OMOP ES must give one person per MRN"
        )


# --- either kind of source ---------------------------------------------------------------------


def is_csv_extract(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and path.is_file()


def read_any_summaries(path: Path) -> list[ExtractSummary]:
    """The extracts a source holds: one for a directory, one per (project, timestamp) for a CSV.

    Raises:
        ExtractError: the source cannot be read or holds no extract, naming what and where.
    """
    from voxl_assets.cohort.csv_extract import read_csv_summaries

    try:
        return read_csv_summaries(path) if is_csv_extract(path) else [read_summary(path)]
    except OSError as exc:
        raise ExtractError(f"{path}: cannot be read ({describe_os_error(exc)})") from None


def read_any_summary(path: Path) -> ExtractSummary:
    """The one extract of ``path`` (a CSV holding several is refused: use read_any_summaries)."""
    summaries = read_any_summaries(path)
    if len(summaries) != 1:
        raise ExtractError(f"{path}: holds {len(summaries)} extracts (projects or timestamps)")
    return summaries[0]


def read_any_extract(path: Path, summary: ExtractSummary | None = None) -> CohortTable:
    """Read an extract directory, or the rows of one extract (``summary``) of a CSV file.

    Raises:
        ExtractError: as ``read_extract`` / ``read_csv_extract``; also when the source no longer
            holds the extract ``summary`` names (it was changed after registration).
    """
    from voxl_assets.cohort.csv_extract import read_csv_extract

    if is_csv_extract(path):
        return read_csv_extract(path, summary)
    cohort = read_extract(path)
    if summary is not None and (
        cohort.summary.project_slug != summary.project_slug
        or cohort.summary.extract_datetime != summary.extract_datetime
    ):
        raise ExtractError(
            f"{path / SUMMARY_FILE}: names another project or extract datetime than when it "
            "was registered; register the changed extract again with `voxl populate`"
        )
    return cohort
