"""When an archive may be queried: weekly opening hours in the archive's own time zone.

A clinical PACS must not be loaded while clinicians use it, so a site opens it to VOXL only out of
hours, e.g. weekdays before 08:00 and after 20:00, and all weekend:

    timezone: Europe/London
    open:
      - days: mon-fri
        hours: ["00:00-08:00", "20:00-24:00"]
      - days: sat-sun
        hours: all day

Ranges do not wrap midnight (write 20:00-24:00 and 00:00-08:00): which day a wrapped range belongs
to is easy to get wrong, and the split form says exactly what it means. Times are wall-clock times
in ``timezone``, so the window follows daylight-saving changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAY = "all day"


class WindowConfigError(ValueError):
    """A window that cannot be understood; the message names the field and the fix."""


@dataclass(frozen=True)
class OpeningHours:
    days: frozenset[int]  # 0 = Monday
    start_minute: int  # minutes after midnight, inclusive
    end_minute: int  # exclusive; 1440 is midnight at the end of the day

    def covers(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        return moment.weekday() in self.days and self.start_minute <= minute < self.end_minute


@dataclass(frozen=True)
class TimeWindow:
    timezone: str
    hours: tuple[OpeningHours, ...]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_open(self, now: datetime) -> bool:
        local = _aware(now).astimezone(self.zone)
        return any(h.covers(local) for h in self.hours)

    def next_opening(self, now: datetime) -> datetime:
        """``now`` if open, else the first moment the window opens (timezone-aware, in UTC)."""
        now = _aware(now)
        if self.is_open(now):
            return now
        local = now.astimezone(self.zone)
        candidates = []
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            for h in self.hours:
                if day.weekday() not in h.days:
                    continue
                opening = _local_datetime(day, h.start_minute, self.zone)
                if opening > now:
                    candidates.append(opening)
        if not candidates:  # unreachable for a validated window (every window has hours)
            raise WindowConfigError("the window never opens: give it at least one day and range")
        return min(candidates).astimezone(ZoneInfo("UTC"))

    def describe(self) -> str:
        """``Mon-Fri 00:00-08:00, 20:00-24:00; Sat-Sun all day (Europe/London)``."""
        by_days: dict[frozenset[int], list[str]] = {}
        for h in self.hours:
            text = (
                ALL_DAY
                if (h.start_minute, h.end_minute) == (0, 1440)
                else f"{_hhmm(h.start_minute)}-{_hhmm(h.end_minute)}"
            )
            by_days.setdefault(h.days, []).append(text)
        parts = [f"{_describe_days(days)} {', '.join(ranges)}" for days, ranges in by_days.items()]
        return f"{'; '.join(parts)} ({self.timezone})"


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("time windows need a timezone-aware datetime")
    return moment


def _local_datetime(day: date, minute: int, zone: ZoneInfo) -> datetime:
    if minute >= 1440:
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _describe_days(days: frozenset[int]) -> str:
    ordered = sorted(days)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{DAY_NAMES[ordered[0]].title()}-{DAY_NAMES[ordered[-1]].title()}"
    return ",".join(DAY_NAMES[d].title() for d in ordered)


def _parse_days(text: str, where: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise WindowConfigError(
                f"{where}: days {text!r} not understood: use mon..sun, ranges (mon-fri) and commas"
            )
        start, end = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
        if end < start:
            raise WindowConfigError(
                f"{where}: day range {part!r} runs backwards: write it forwards"
            )
        days.update(range(start, end + 1))
    return frozenset(days)


def _parse_minute(text: str, where: str) -> int:
    hours, _, minutes = text.strip().partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise WindowConfigError(f"{where}: time {text!r} is not HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > 1440:
        raise WindowConfigError(f"{where}: time {text!r} is outside 00:00-24:00")
    return value


def _parse_range(text: str, where: str) -> tuple[int, int]:
    if text.strip().lower() == ALL_DAY:
        return 0, 1440
    start, sep, end = text.partition("-")
    if not sep:
        raise WindowConfigError(f"{where}: hours {text!r} must be HH:MM-HH:MM or '{ALL_DAY}'")
    first, last = _parse_minute(start, where), _parse_minute(end, where)
    if last <= first:
        raise WindowConfigError(
            f"{where}: hours {text!r} wrap midnight or are empty: split them, "
            f"e.g. {start.strip()}-24:00 and 00:00-{end.strip()}"
        )
    return first, last


def parse_window(raw: object, where: str) -> TimeWindow:
    """A ``TimeWindow`` from its YAML form; ``where`` names the file and archive in errors."""
    if not isinstance(raw, dict):
        raise WindowConfigError(f"{where}: window must be a mapping with timezone and open")
    zone = raw.get("timezone")
    if not isinstance(zone, str):
        raise WindowConfigError(f"{where}: window needs a timezone, e.g. Europe/London")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowConfigError(f"{where}: unknown timezone {zone!r} (IANA names)") from None
    spans = raw.get("open")
    if not isinstance(spans, list) or not spans:
        raise WindowConfigError(f"{where}: window needs 'open', a list of days + hours")
    hours: list[OpeningHours] = []
    for index, span in enumerate(spans):
        at = f"{where}: open[{index}]"
        if not isinstance(span, dict) or set(span) != {"days", "hours"}:
            raise WindowConfigError(f"{at} needs exactly 'days' and 'hours'")
        days = _parse_days(str(span["days"]), at)
        ranges = span["hours"] if isinstance(span["hours"], list) else [span["hours"]]
        for text in ranges:
            start, end = _parse_range(str(text), at)
            hours.append(OpeningHours(days, start, end))
    return TimeWindow(zone, tuple(hours))
