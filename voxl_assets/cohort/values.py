"""Cell values of an extract: ids, identifiers and datetimes, cleaned or refused.

Every refusal names the file, the column and the row and says what to do; it never repeats the
cell's value, because a bad cell may hold an identifier (an MRN typed into the wrong column), and
these messages reach the sensor log, the Dagster UI and ``voxl status``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Above this a float cannot hold every integer: an id written as a float may already be wrong.
FLOAT_EXACT_MAX = 2**53
# Spellings of "no value" in CSV files written by spreadsheets, R and pandas (compared lower case).
NA_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none", "<na>", "#n/a", "nat"})
# Unicode category Cc: C0 controls (NUL, tab, newline, CR...), DEL and the C1 controls.
CONTROL_PATTERN = r"[\x00-\x1f\x7f-\x9f]"
CONTROL_CHARACTER = re.compile(CONTROL_PATTERN)
ISO_EXAMPLE = "ISO 8601, e.g. 2024-01-31 13:45:00 or 2024-01-31T13:45:00Z"


class ExtractError(ValueError):
    """The extract cannot be read; the message names the file and the problem, never a value."""


def cell_location(file: object, row: object, column: str) -> str:
    """``<file>: row <n>: column <c>``, the prefix of every cell error."""
    return f"{file}: row {row}: column {column}"


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in NA_TEXT


# --- datetimes ---------------------------------------------------------------------------------


def parse_iso(text: str) -> datetime | None:
    """An ISO 8601 date or datetime (``T`` or space, ``Z`` or an offset, fractions), or None."""
    text = text.strip()
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # its message repeats the text: never pass it on
        return None


def parse_extract_datetime(text: object, *, where: str) -> datetime:
    """An extract's timestamp, to the second: one with ``Z`` or an offset becomes UTC, so the
    same instant written two ways is one extract; one without is taken as written.

    Raises:
        ExtractError: not a date or datetime (the message holds ``where``, not the text).
    """
    parsed = parse_iso(text) if isinstance(text, str) else None
    if parsed is None:
        raise ExtractError(f"{where} is not a datetime ({ISO_EXAMPLE})")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


def _study_timestamp(value: object) -> object:
    """A Timestamp, NaT when the cell is empty, None when it is bad. Wall-clock time is kept."""
    if _is_missing(value):
        return pd.NaT
    if isinstance(value, str):
        value = parse_iso(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime) and 1677 < value.year < 2262:  # datetime64[ns]'s range
        return pd.Timestamp(value.replace(tzinfo=None))
    return None


def study_datetimes(values: pd.Series, files: pd.Series, rows: pd.Series, column: str) -> pd.Series:
    """Study dates or datetimes as naive datetime64 (NaT when absent). An offset is dropped,
    not applied: DICOM study dates are the scanner's local time.

    Raises:
        ExtractError: a cell that is not a date or datetime, naming its file and row.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize(None) if values.dt.tz is not None else values
    by_text: dict[str, object] = {}  # extracts repeat their dates: parse each text once
    converted = []
    for value in values:
        if isinstance(value, str):
            if value not in by_text:
                by_text[value] = _study_timestamp(value)
            converted.append(by_text[value])
        else:
            converted.append(_study_timestamp(value))
    bad = [c is None for c in converted]
    if any(bad):
        first = values.index[bad.index(True)]
        raise ExtractError(
            f"{cell_location(files[first], rows[first], column)} is not a date or datetime "
            f"({ISO_EXAMPLE})"
        )
    return pd.to_datetime(pd.Series(converted, index=values.index, dtype=object))


# --- ids -----------------------------------------------------------------------------------------


def _integer_or_none(value: object) -> int | None:
    """An exact integer from an int, an integral float or a numeric string, else None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value) or not float(value).is_integer():
            return None
        return int(value) if abs(float(value)) <= FLOAT_EXACT_MAX else None
    if isinstance(value, str | bytes):
        text = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        if not number.is_finite() or number != number.to_integral_value():
            return None
        return int(number)
    return None


def _plain_numpy(dtype: object, kind: str) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind == kind


def clean_ids(values: pd.Series, files: pd.Series, rows: pd.Series, column: str) -> pd.Series:
    """Sequential ids as int64. They may arrive as int, float or text; each must be a whole
    number that fits a signed 64-bit integer (and, written as a float, be exact: at most 2^53).

    Raises:
        ExtractError: naming the first bad cell's file, column and row (empty, or not such a
            number).
    """
    dtype = values.dtype
    if _plain_numpy(dtype, "i"):
        return values.astype("int64")
    if _plain_numpy(dtype, "u"):
        bad = values > INT64_MAX
    elif _plain_numpy(dtype, "f"):
        array = values.to_numpy()
        with np.errstate(invalid="ignore"):
            out_of_range = ~np.isfinite(array) | (np.abs(array) > FLOAT_EXACT_MAX)
            bad = pd.Series(out_of_range | (array != np.round(array)), index=values.index)
    else:
        numbers = [_integer_or_none(v) for v in values]
        bad = pd.Series(
            [n is None or not INT64_MIN <= n <= INT64_MAX for n in numbers], index=values.index
        )
        if not bad.any():
            return pd.Series(numbers, index=values.index, dtype="int64")
    if bad.any():
        first = bad.idxmax()
        problem = (
            "is empty; every row needs its id"
            if _is_missing(values[first])
            else "is not a whole number that fits a signed 64-bit integer (ids run from -2^63 "
            "to 2^63-1; written as floats, at most 2^53)"
        )
        raise ExtractError(f"{cell_location(files[first], rows[first], column)} {problem}")
    return values.astype("int64")


# --- identifiers ---------------------------------------------------------------------------------


class _Refused:
    """Why a cell was refused (a reason, never the value)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _clean_identifier(value: object, *, na_text: bool) -> str | _Refused:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if float(value).is_integer() and abs(float(value)) <= FLOAT_EXACT_MAX:
            return str(int(value))
        return _Refused("is a fractional number, not an identifier")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return _Refused("is binary data that is not UTF-8 text; write identifiers as text")
    text = str(value).strip()
    if na_text and text.lower() in NA_TEXT:
        return ""
    if CONTROL_CHARACTER.search(text):
        return _Refused(
            "holds a control character (newline, carriage return, NUL, tab...); identifiers "
            "are single-line text"
        )
    return text


def clean_identifiers(
    values: pd.Series,
    files: pd.Series,
    rows: pd.Series,
    column: str,
    *,
    max_length: int,
    na_text: bool = False,
) -> pd.Series:
    """Identifiers as stripped strings ('' when missing; 1234.0 loses its '.0'); binary cells
    decoded as UTF-8. ``na_text``: "NA", "null"... (CSV spellings of nothing) are missing too.

    Raises:
        ExtractError: binary that is not UTF-8, a control character, a fractional number or a
            value longer than ``max_length``, naming the first bad cell's file, column and row.
    """
    if _all_text(values):
        return _clean_text_identifiers(values, files, rows, column, max_length, na_text)
    cleaned = [_clean_identifier(v, na_text=na_text) for v in values]
    for position, item in enumerate(cleaned):
        problem = (
            item.reason
            if isinstance(item, _Refused)
            else f"is longer than {max_length} characters; check the column holds what its "
            "name says"
            if len(item) > max_length
            else None
        )
        if problem:
            index = values.index[position]
            raise ExtractError(f"{cell_location(files[index], rows[index], column)} {problem}")
    return pd.Series(cleaned, index=values.index, dtype=object).astype(str)


def _all_text(values: pd.Series) -> bool:
    if isinstance(values.dtype, pd.StringDtype):
        return True
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    )


def _clean_text_identifiers(
    values: pd.Series,
    files: pd.Series,
    rows: pd.Series,
    column: str,
    max_length: int,
    na_text: bool,
) -> pd.Series:
    """``clean_identifiers`` for a column of text, vectorised (extracts have 10^5 rows)."""
    text = values.astype("string").str.strip()
    if na_text:
        text = text.mask(text.str.lower().isin(NA_TEXT), "")
    text = text.fillna("")
    for bad, problem in (
        (
            text.str.contains(CONTROL_PATTERN, regex=True),
            "holds a control character (newline, carriage return, NUL, tab...); identifiers "
            "are single-line text",
        ),
        (
            text.str.len() > max_length,
            f"is longer than {max_length} characters; check the column holds what its name says",
        ),
    ):
        if bad.any():
            first = bad.idxmax()
            raise ExtractError(f"{cell_location(files[first], rows[first], column)} {problem}")
    return pd.Series(text.to_numpy(dtype=object, na_value=""), index=values.index, dtype=object)
