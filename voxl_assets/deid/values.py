"""Value rules of the tag operations: dummy values, dates, numeric ranges (valid for each VR)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

DateOption = Literal["keep", "truncate_to_year", "truncate_to_month", "shift"]

# PS3.5 6.2: maximum lengths of the string VRs that a hash may be written into.
MAX_LENGTH_BY_VR = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "UC": 64, "UI": 64}

DUMMY_BY_VR: dict[str, object] = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "CS": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "UC": "ANONYMOUS",
    "AE": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "FL": 0.0,
    "FD": 0.0,
}


def dummy_value(vr: str) -> object:
    """A fixed value valid for ``vr``; empty for VRs with no sensible dummy (binary, sequences)."""
    return DUMMY_BY_VR.get(vr, b"" if vr in {"OB", "OW", "OF", "OD", "OL", "OV", "UN"} else "")


def _parse_da(text: str) -> date | None:
    text = text.strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def transform_date(text: str, option: DateOption, shift_days: int) -> str:
    """A DA value under the project's date option; an unparseable date becomes the dummy date
    (we cannot tell what it reveals, so it must not survive)."""
    if option == "keep" or not text.strip():
        return text
    parsed = _parse_da(text)
    if parsed is None:
        return str(DUMMY_BY_VR["DA"])
    if option == "truncate_to_year":
        return f"{parsed.year:04d}0101"
    if option == "truncate_to_month":
        return f"{parsed.year:04d}{parsed.month:02d}01"
    return (parsed - timedelta(days=shift_days)).strftime("%Y%m%d")


def transform_time(text: str, option: DateOption) -> str:
    """A TM value: kept, except that truncation keeps only the hour."""
    if option in ("keep", "shift") or not text.strip():
        return text
    hour = text.strip()[:2]
    return f"{hour}0000" if hour.isdigit() else str(DUMMY_BY_VR["TM"])


def transform_datetime(text: str, option: DateOption, shift_days: int) -> str:
    """A DT value: the date part as for DA, the time part as for TM; any offset is dropped."""
    text = text.strip()
    if option == "keep" or not text:
        return text
    day = transform_date(text[:8].ljust(8, "0") if len(text) >= 4 else text, option, shift_days)
    time_part = text[8:14]
    return day + (transform_time(time_part, option) if time_part else "")


def clamp_number(value: float, minimum: float | None, maximum: float | None) -> float:
    if minimum is not None and value < minimum:
        return minimum
    if maximum is not None and value > maximum:
        return maximum
    return value


def clamp_age(text: str, minimum: float | None, maximum: float | None) -> str:
    """An AS value (``nnnY``, ``nnnM``...) clamped in years; an unparseable age is dropped to the
    dummy. Only year ages are compared with the bounds (months, weeks, days are under a year)."""
    text = text.strip()
    if not text:
        return text
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return str(DUMMY_BY_VR["AS"])
    if text[3] != "Y":
        return text
    years = clamp_number(float(text[:3]), minimum, maximum)
    return f"{int(years):03d}Y"
