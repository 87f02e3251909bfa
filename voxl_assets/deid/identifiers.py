"""The values a study's output must never contain, and the tags the engine always writes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Written by the engine on every output instance, so always allowed (PS3.15 E.1.1 step 6).
ENGINE_TAGS = {0x00120062, 0x00120063}  # PatientIdentityRemoved, DeidentificationMethod


@dataclass
class StudyIdentifiers:
    """Values that must never appear in the output (normalised to lower case).

    Dates of birth are kept apart: a study date may legitimately equal a newborn's birth date,
    so they are only looked for in non-date attributes.
    """

    values: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)

    def add(self, value: object, *, min_length: int = 1) -> None:
        text = str(value).strip().lower()
        if len(text) >= max(min_length, 1):
            self.values.add(text)

    def add_name(self, value: object) -> None:
        """A person name: the whole name and each component of three letters or more."""
        text = str(value).strip()
        if not text:
            return
        self.add(text)
        for part in re.split(r"[\^=\s,]+", text):
            self.add(part, min_length=3)

    def add_birth_date(self, value: object) -> None:
        text = str(value).strip()
        if text:
            self.birth_dates.add(text.lower())

    def __len__(self) -> int:
        return len(self.values) + len(self.birth_dates)

    def __repr__(self) -> str:  # never print the values
        return f"StudyIdentifiers({len(self)} values)"
