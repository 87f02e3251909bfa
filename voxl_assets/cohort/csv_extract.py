"""The pre-Epic escape hatch: extracts as a CSV file, as the hospital's existing tooling writes it.

Columns: procedure_id, mrn, accession_number, project_name, extract_generated_timestamp,
study_date, study_uid; optional series_uid and participant_id; any others are ignored. Cells may
carry stray spaces, and "", NA, N/A, NaN, null, None, <NA>, #N/A and NaT (any case) mean no value.

One file may hold several extracts: one per (project, extract_generated_timestamp), each with its
own partition, status and export. Timestamps are ISO 8601 (``T`` or a space; ``Z`` or an offset,
converted to UTC); study_date is a date or a datetime. Rows are numbered as a spreadsheet shows
them: the header is row 1.

Within one extract, identical rows are folded into one (and counted); two different rows with one
procedure_id are an error. A participant_id, when given, is the study's pseudonymous PatientID
and its id in the mapping table, so it is checked to be one: printable ASCII (DICOM LO), the same
for every row of an MRN, never the MRN or accession number itself.
"""

from __future__ import annotations

import csv
import re
import warnings
from datetime import datetime
from pathlib import Path

import pandas as pd

from voxl_assets.cohort.extract_reader import (
    MAX_LENGTH,
    MESSAGE_COLUMNS,
    SOURCE_COLUMNS,
    CohortTable,
    ExtractSummary,
    check_slug,
    describe_os_error,
)
from voxl_assets.cohort.values import (
    NA_TEXT,
    ExtractError,
    cell_location,
    clean_identifiers,
    clean_ids,
    parse_extract_datetime,
    study_datetimes,
)
from voxl_assets.project_config import slugify

CSV_COLUMNS = (
    "procedure_id",
    "mrn",
    "accession_number",
    "project_name",
    "extract_generated_timestamp",
    "study_date",
    "study_uid",
)
OPTIONAL_CSV_COLUMNS = ("series_uid", "participant_id")
FIRST_DATA_ROW = 2  # the header is row 1
# DICOM LO without the multi-value delimiter: what PatientID can hold as plain ASCII.
PARTICIPANT_ID = re.compile(r"[\x20-\x5b\x5d-\x7e]+")
# An MRN or accession number this short inside a participant id may be a coincidence.
MIN_EMBEDDED_IDENTIFIER = 4


def _first_long_row(path: Path) -> int | str:
    """The spreadsheet row number of the first row with more cells than the header."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        width = len(next(reader, []))
        for number, row in enumerate(reader, start=FIRST_DATA_ROW):
            if len(row) > width:
                return number
    return "?"


def _load(path: Path) -> pd.DataFrame:
    """Every cell as stripped text ('' for the NA spellings), with ``_file`` and ``_row``."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # index_col=False: a first row with one cell too many must not become an index
            # (pandas would shift every column by one); it warns instead, and is refused below.
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False
            )
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
            raise ExtractError(
                f"{path}: not a well-formed CSV file near row {_first_long_row(path)} (a row "
                "with more cells than the header)"
            )
    except UnicodeDecodeError as exc:
        raise ExtractError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as a UTF-8 CSV file"
        ) from None
    except pd.errors.EmptyDataError:
        raise ExtractError(
            f"{path}: is empty; expected a header row and one row per study"
        ) from None
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        near = f" near row {line.group(1)}" if line else ""
        raise ExtractError(
            f"{path}: not a well-formed CSV file{near} (a row with more cells than the header, "
            "or an unclosed quote)"
        ) from None
    except OSError as exc:
        raise ExtractError(f"{path}: cannot be read ({describe_os_error(exc)})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise ExtractError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)} "
            f"(and optionally {', '.join(OPTIONAL_CSV_COLUMNS)})"
        )
    wanted = [c for c in (*CSV_COLUMNS, *OPTIONAL_CSV_COLUMNS) if c in frame.columns]
    frame = frame[wanted].copy()
    for column in wanted:
        stripped = frame[column].str.strip()
        frame[column] = stripped.where(~stripped.str.lower().isin(NA_TEXT), "")
    frame["_file"] = str(path)
    frame["_row"] = range(FIRST_DATA_ROW, len(frame) + FIRST_DATA_ROW)
    return frame


def _extract_of_each_row(frame: pd.DataFrame, path: Path) -> tuple[pd.Series, pd.Series]:
    """(project slug, extract datetime) of every row.

    Raises:
        ExtractError: an empty project_name, one that names no project, or a bad timestamp.
    """
    names, stamps = frame["project_name"], frame["extract_generated_timestamp"]
    for column, values in (("project_name", names), ("extract_generated_timestamp", stamps)):
        empty = values == ""
        if empty.any():
            row = frame.loc[empty.idxmax(), "_row"]
            raise ExtractError(
                f"{cell_location(path, row, column)} is empty; every row names its extract"
            )
    slug_of: dict[str, str] = {}
    for name, row in zip(names, frame["_row"], strict=True):
        if name not in slug_of:
            check_slug(name, where=cell_location(path, row, "project_name"))
            slug_of[name] = slugify(name)
    moment_of: dict[str, datetime] = {}
    for stamp, row in zip(stamps, frame["_row"], strict=True):
        if stamp not in moment_of:
            moment_of[stamp] = parse_extract_datetime(
                stamp, where=cell_location(path, row, "extract_generated_timestamp")
            )
    return names.map(slug_of), stamps.map(moment_of)


def _summary(path: Path, name: str, extract_datetime: datetime) -> ExtractSummary:
    return ExtractSummary(
        project_name=name,
        extract_datetime=extract_datetime,
        settings={"cdm_source_name": name, "source": "csv"},
        git_hash=None,
        source=path,
    )


def read_csv_summaries(path: Path) -> list[ExtractSummary]:
    """The extracts of a CSV file, one per (project, timestamp), in order of first appearance.

    Raises:
        ExtractError: unreadable file, missing columns, no rows, or a row whose project or
            timestamp is empty or bad (that row belongs to no extract), naming file, column, row.
    """
    frame = _load(path)
    if frame.empty:
        raise ExtractError(
            f"{path}: has a header but no rows; the project and extract timestamp come from "
            "the rows, so it holds no extract"
        )
    slugs, stamps = _extract_of_each_row(frame, path)
    seen: dict[tuple[str, datetime], str] = {}
    for slug, stamp, name in zip(slugs, stamps, frame["project_name"], strict=True):
        seen.setdefault((slug, stamp), name)
    return [_summary(path, name, stamp) for (_slug, stamp), name in seen.items()]


def read_csv_extract(path: Path, summary: ExtractSummary | None = None) -> CohortTable:
    """Read the rows of one extract of a CSV file (``summary``; the file's only one if None).

    Raises:
        ExtractError: as ``read_csv_summaries``; a bad procedure_id, identifier, participant_id
            or study_date, an empty mrn, two different rows with one procedure_id, or (without
            ``summary``) a file holding several extracts; naming file, column and row.
    """
    frame = _load(path)
    if frame.empty:
        raise ExtractError(f"{path}: has a header but no rows")
    slugs, stamps = _extract_of_each_row(frame, path)
    if summary is None:
        summaries = read_csv_summaries(path)
        if len(summaries) != 1:
            raise ExtractError(
                f"{path}: holds {len(summaries)} extracts (projects or timestamps); read one "
                "at a time"
            )
        summary = summaries[0]
    mine = (slugs == summary.project_slug) & (stamps == summary.extract_datetime)
    if not mine.any():
        raise ExtractError(
            f"{path}: holds no rows of project {summary.project_slug} at "
            f"{summary.extract_datetime.isoformat(sep=' ')} any more; it changed after it was "
            "registered: register it again with `voxl populate`"
        )
    rows = frame[mine].copy()
    name = rows["project_name"].iloc[0]
    cohort = _cohort_rows(rows)
    folded = _fold_duplicate_rows(cohort)
    imaging = (folded["accession_number"] != "") | (folded["study_uid"] != "")
    messages = folded.loc[imaging, [*MESSAGE_COLUMNS, *SOURCE_COLUMNS]].reset_index(drop=True)
    return CohortTable(
        _summary(path, name, summary.extract_datetime),
        messages,
        rows_read=len(rows),
        skipped_not_imaging=int((~imaging).sum()),
        duplicate_rows_folded=len(cohort) - len(folded),
    )


def _cohort_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The extract's rows cleaned into message columns (plus ``_file`` and ``_row``)."""
    files, numbers = rows["_file"], rows["_row"]

    def identifiers(column: str, kind: str) -> pd.Series:
        if column not in rows:
            return pd.Series("", index=rows.index, dtype=object)
        return clean_identifiers(
            rows[column], files, numbers, column, max_length=MAX_LENGTH[kind], na_text=True
        )

    cohort = pd.DataFrame(
        {
            "procedure_occurrence_id": clean_ids(
                rows["procedure_id"], files, numbers, "procedure_id"
            ),
            "mrn": identifiers("mrn", "mrn"),
            "accession_number": identifiers("accession_number", "accession_number"),
            "study_uid": identifiers("study_uid", "study_uid"),
            "series_uid": identifiers("series_uid", "series_uid"),
            "participant_id": identifiers("participant_id", "participant_id"),
            "study_datetime": study_datetimes(rows["study_date"], files, numbers, "study_date"),
            "_file": files,
            "_row": numbers,
        }
    )
    no_mrn = cohort["mrn"] == ""
    if no_mrn.any():
        raise ExtractError(
            f"{cell_location(files.iloc[0], cohort.loc[no_mrn, '_row'].iloc[0], 'mrn')} is "
            "empty; every study needs the patient's MRN"
        )
    _check_participants(cohort)
    return cohort


def _fold_duplicate_rows(cohort: pd.DataFrame) -> pd.DataFrame:
    """Identical rows become one; two different rows with one procedure_id are an error."""
    folded = cohort.drop_duplicates(subset=list(MESSAGE_COLUMNS), keep="first")
    clashes = folded[folded.duplicated("procedure_occurrence_id", keep=False)]
    if not clashes.empty:
        listed = ", ".join(str(r) for r in clashes["_row"][:6])
        raise ExtractError(
            f"{clashes['_file'].iloc[0]}: column procedure_id: {len(clashes)} rows share a "
            f"procedure_id but differ in other columns (rows {listed}); each procedure is one "
            "study"
        )
    return folded


def _check_participants(cohort: pd.DataFrame) -> None:
    """A participant_id is a pseudonym for one patient: printable ASCII, the same on every row
    of an MRN, one MRN per participant, and neither the row's MRN nor its accession number."""
    given = cohort[cohort["participant_id"] != ""]
    if given.empty:
        return
    file = given["_file"].iloc[0]
    for participant, mrn, accession, row in zip(
        given["participant_id"], given["mrn"], given["accession_number"], given["_row"], strict=True
    ):
        where = cell_location(file, row, "participant_id")
        if not PARTICIPANT_ID.fullmatch(participant):
            raise ExtractError(
                f"{where} must be printable ASCII without a backslash: it becomes the DICOM "
                "PatientID"
            )
        lowered = participant.lower()
        for identifier in (mrn, accession):
            text = identifier.lower()
            if text and (
                text == lowered or (len(text) >= MIN_EMBEDDED_IDENTIFIER and text in lowered)
            ):
                raise ExtractError(
                    f"{where} holds the row's MRN or accession number; a participant id must be "
                    "a pseudonym"
                )
    by_mrn = cohort.groupby("mrn")["participant_id"].nunique()
    mixed = by_mrn[by_mrn > 1].index
    if len(mixed):
        rows = cohort[cohort["mrn"].isin(mixed)]["_row"][:6]
        raise ExtractError(
            f"{file}: column participant_id: the rows of one MRN carry different participant ids "
            f"(or some none: rows {', '.join(str(r) for r in rows)}); one patient is one participant"
        )
    by_participant = given.groupby("participant_id")["mrn"].nunique()
    shared = by_participant[by_participant > 1].index
    if len(shared):
        rows = given[given["participant_id"].isin(shared)]["_row"][:6]
        raise ExtractError(
            f"{file}: column participant_id: one participant id is given to several MRNs (rows "
            f"{', '.join(str(r) for r in rows)}); one participant is one patient"
        )
