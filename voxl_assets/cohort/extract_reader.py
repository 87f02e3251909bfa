"""Read an OMOP ES extract (or the pre-Epic CSV escape hatch) into cohort messages.

An extract is a directory written by OMOP ES::

    extract_summary.json                       {"datetime": ..., "settings": {"cdm_source_name": ...}}
    public/omop/PROCEDURE_OCCURRENCE.parquet   procedure_occurrence_id, person_id, procedure_datetime
    private/PERSON_LINKS.parquet               person_id, PrimaryMrn
    private/PROCEDURE_OCCURRENCE_LINKS.parquet procedure_occurrence_id, AccessionNumber, StudyUid_X

or the batched layout, where each table is a folder of ``part-N.parquet`` files
(``public/omop/procedure_occurrence/``, ``private/person_links/``,
``private/procedure_occurrence_links/``). The escape hatch is a single CSV file.

Errors name the file, the column and the row (never an identifier value) and say what to do.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from voxl_assets.project_config import slugify

SUMMARY_FILE = "extract_summary.json"
DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
GIT_HASH_KEYS = ("git_hash", "omop_es_git_hash", "commit", "git_commit", "version_hash")


class ExtractError(ValueError):
    """The extract cannot be read; the message names the file and the problem."""


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
    series_uid (str, '' when absent), study_datetime (datetime64 or NaT).
    """

    summary: ExtractSummary
    messages: pd.DataFrame
    rows_read: int
    skipped_not_imaging: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def imaging_studies(self) -> int:
        return len(self.messages)


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
    "study_datetime",
)


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
            ) from exc
        missing = [c for c in table.columns if c not in schema_names]
        if missing:
            raise ExtractError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(table.columns)}"
            )
        wanted = list(table.columns) + [c for c in optional if c in schema_names]
        try:
            frame = pq.read_table(path, columns=wanted).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise ExtractError(f"{path}: cannot read parquet data ({type(exc).__name__})") from exc
        frame["_file"] = str(path)
        frame["_row"] = range(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# --- cleaning ----------------------------------------------------------------------------------


def _clean_ids(frame: pd.DataFrame, column: str) -> pd.Series:
    """Sequential ids may arrive as int, float or string: return int64, erroring on bad rows."""
    numeric = pd.to_numeric(frame[column], errors="coerce")
    bad = numeric.isna() | (numeric.notna() & (numeric != numeric.round()))
    if bad.any():
        row = frame.loc[bad.idxmax()]
        raise ExtractError(
            f"{row['_file']}: row {row['_row']}: column {column} is not an integer id; fix the extract"
        )
    return numeric.astype("int64")


def _clean_identifiers(series: pd.Series) -> pd.Series:
    """Identifiers as stripped strings; missing becomes ''. Floats like 1234.0 lose the '.0'."""

    def clean(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            if value.is_integer():
                return str(int(value))
        return str(value).strip()

    return series.map(clean).astype(str)


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


def _parse_datetimes(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize(None) if values.dt.tz is not None else values
    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        row = frame.loc[bad.idxmax()]
        raise ExtractError(
            f"{row['_file']}: row {row['_row']}: column {column} is not a valid datetime "
            f"(expected e.g. 2024-01-31 13:45:00)"
        )
    return parsed


def parse_datetime(text: str, *, where: str) -> datetime:
    for fmt in DATETIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    raise ExtractError(f"{where}: '{text}' is not a datetime like 2024-01-31 13:45:00")


# --- summary -----------------------------------------------------------------------------------


def read_summary(extract_dir: Path) -> ExtractSummary:
    """Read ``extract_summary.json``.

    Raises:
        ExtractError: missing or invalid file, missing ``datetime`` or ``settings.cdm_source_name``.
    """
    path = extract_dir / SUMMARY_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExtractError(f"{path}: missing; OMOP ES writes it last, wait for it") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ExtractError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or "datetime" not in raw:
        raise ExtractError(f"{path}: field 'datetime' is missing")
    settings = raw.get("settings")
    if not isinstance(settings, dict) or not str(settings.get("cdm_source_name", "")).strip():
        raise ExtractError(f"{path}: field 'settings.cdm_source_name' (the project) is missing")
    extract_datetime = parse_datetime(str(raw["datetime"]), where=f"{path}: field 'datetime'")
    git_hash = next(
        (str(raw[k]) for k in GIT_HASH_KEYS if raw.get(k)),
        next((str(settings[k]) for k in GIT_HASH_KEYS if settings.get(k)), None),
    )
    return ExtractSummary(
        project_name=str(settings["cdm_source_name"]).strip(),
        extract_datetime=extract_datetime,
        settings=settings,
        git_hash=git_hash,
        source=extract_dir,
    )


# --- the parquet extract -----------------------------------------------------------------------


def read_extract(extract_dir: Path) -> CohortTable:
    """Read an OMOP ES extract directory into one row per imaging study.

    Rows without an accession number and without a study UID are not imaging: skipped, counted.

    Raises:
        ExtractError: a missing file or column, unreadable parquet, bad datetime, duplicate rows,
            or an MRN that maps to two persons; nothing is written before this is known.
    """
    summary = read_summary(extract_dir)
    procedures = _read_table(extract_dir, PROCEDURES)
    persons = _read_table(extract_dir, PERSON_LINKS)
    links = _read_table(extract_dir, PROCEDURE_LINKS, optional=OPTIONAL_LINK_COLUMNS)

    procedures["procedure_occurrence_id"] = _clean_ids(procedures, "procedure_occurrence_id")
    procedures["person_id"] = _clean_ids(procedures, "person_id")
    procedures["study_datetime"] = _parse_datetimes(procedures, "procedure_datetime")
    _check_unique(procedures, "procedure_occurrence_id", "procedure occurrence")

    persons["person_id"] = _clean_ids(persons, "person_id")
    persons["mrn"] = _clean_identifiers(persons["PrimaryMrn"])
    _check_unique(persons, "person_id", "person")
    _check_mrn_single_person(persons)

    links["procedure_occurrence_id"] = _clean_ids(links, "procedure_occurrence_id")
    links["accession_number"] = _clean_identifiers(links["AccessionNumber"])
    links["study_uid"] = _clean_identifiers(links["StudyUid_X"])
    links["series_uid"] = _clean_identifiers(links["SeriesUid_X"]) if "SeriesUid_X" in links else ""
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
    imaging = (merged["accession_number"] != "") | (merged["study_uid"] != "")
    skipped = int((~imaging).sum())
    merged = merged[imaging].merge(persons[["person_id", "mrn"]], on="person_id", how="left")
    missing_person = merged["mrn"].isna() | (merged["mrn"] == "")
    if missing_person.any():
        row = merged[missing_person].iloc[0]
        raise ExtractError(
            f"{row['_file']}: row {row['_row']}: person_id has no MRN in {PERSON_LINKS.flat} "
            f"({int(missing_person.sum())} rows); the private link files are incomplete"
        )
    messages = merged[list(MESSAGE_COLUMNS)].reset_index(drop=True)
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


# --- the CSV escape hatch ----------------------------------------------------------------------

CSV_COLUMNS = (
    "procedure_id",
    "mrn",
    "accession_number",
    "project_name",
    "extract_generated_timestamp",
    "study_date",
    "study_uid",
)


def read_csv_extract(path: Path) -> CohortTable:
    """Read the pre-Epic escape hatch: one CSV, one row per study.

    Raises:
        ExtractError: unreadable file, missing columns, several projects or timestamps in one
            file, bad dates or duplicate procedure ids, naming the file, column and row.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ExtractError(f"{path}: not a readable CSV file ({type(exc).__name__})") from exc
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise ExtractError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}"
        )
    frame["_file"] = str(path)
    frame["_row"] = range(2, len(frame) + 2)  # spreadsheet row numbers: header is row 1
    if frame.empty:
        raise ExtractError(f"{path}: has a header but no rows")
    for column in ("project_name", "extract_generated_timestamp"):
        values = frame[column].str.strip().unique()
        if len(values) != 1:
            raise ExtractError(f"{path}: column {column} must hold one value for the whole file")
    project_name = frame["project_name"].iloc[0].strip()
    extract_datetime = parse_datetime(
        frame["extract_generated_timestamp"].iloc[0],
        where=f"{path}: column extract_generated_timestamp",
    )
    frame["procedure_occurrence_id"] = _clean_ids(frame, "procedure_id")
    _check_unique(frame, "procedure_occurrence_id", "procedure")
    frame["study_datetime"] = _parse_datetimes(
        frame.replace({"study_date": {"": None}}), "study_date"
    )
    for source, target in (
        ("mrn", "mrn"),
        ("accession_number", "accession_number"),
        ("study_uid", "study_uid"),
    ):
        frame[target] = _clean_identifiers(frame[source])
    frame["series_uid"] = _clean_identifiers(frame["series_uid"]) if "series_uid" in frame else ""
    no_mrn = frame["mrn"] == ""
    if no_mrn.any():
        raise ExtractError(f"{path}: row {frame.loc[no_mrn, '_row'].iloc[0]}: column mrn is empty")
    imaging = (frame["accession_number"] != "") | (frame["study_uid"] != "")
    summary = ExtractSummary(
        project_name=project_name,
        extract_datetime=extract_datetime,
        settings={"cdm_source_name": project_name, "source": "csv"},
        git_hash=None,
        source=path,
    )
    messages = frame.loc[imaging, list(MESSAGE_COLUMNS)].reset_index(drop=True)
    return CohortTable(
        summary, messages, rows_read=len(frame), skipped_not_imaging=int((~imaging).sum())
    )


def read_csv_summary(path: Path) -> ExtractSummary:
    """The project and extract datetime of a CSV escape-hatch file, reading only what's needed."""
    try:
        head = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=1)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ExtractError(f"{path}: not a readable CSV file ({type(exc).__name__})") from exc
    for column in ("project_name", "extract_generated_timestamp"):
        if column not in head.columns or head.empty:
            raise ExtractError(f"{path}: missing column {column} or no rows")
    name = head["project_name"].iloc[0].strip()
    return ExtractSummary(
        project_name=name,
        extract_datetime=parse_datetime(
            head["extract_generated_timestamp"].iloc[0],
            where=f"{path}: column extract_generated_timestamp",
        ),
        settings={"cdm_source_name": name, "source": "csv"},
        git_hash=None,
        source=path,
    )


def is_csv_extract(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def read_any_summary(path: Path) -> ExtractSummary:
    return read_csv_summary(path) if is_csv_extract(path) else read_summary(path)


def read_any_extract(path: Path) -> CohortTable:
    """Read an extract directory or a CSV escape-hatch file."""
    return read_csv_extract(path) if is_csv_extract(path) else read_extract(path)
