"""The values a study's output must never contain, and the tags the engine always writes.

Values are kept as given and compiled once per study into an ``IdentifierMatcher`` under the
shared rules of ``voxl_assets/identifier_rules.py`` (the leak guard uses the same rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxl_assets.identifier_rules import (
    IdentifierMatcher,
    Needle,
    date_needles,
    identifier_needles,
    looks_like_uid,
    name_needles,
    uid_needles,
)

# Written by the engine on every output instance, so always allowed (PS3.15 E.1.1 step 6).
ENGINE_TAGS = {0x00120062, 0x00120063}  # PatientIdentityRemoved, DeidentificationMethod


@dataclass
class StudyIdentifiers:
    """A study's identifiers: MRNs, accession numbers and other ids, names, dates of birth and
    source UIDs, as found in the cohort request and in every instance's header."""

    ids: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    _matcher: IdentifierMatcher | None = field(default=None, repr=False)

    def _added(self, bucket: set[str], value: object) -> None:
        text = str(value).strip()
        if text and text not in bucket:
            bucket.add(text)
            self._matcher = None

    def add(self, value: object, *, min_length: int = 1) -> None:
        """An identifying value (an id; a UID when it looks like one)."""
        text = str(value).strip()
        if len(text) < min_length:
            return
        if looks_like_uid(text):
            self._added(self.uids, text)
        else:
            self._added(self.ids, text)

    def add_uid(self, value: object) -> None:
        self._added(self.uids, value)

    def add_name(self, value: object) -> None:
        self._added(self.names, value)

    def add_birth_date(self, value: object) -> None:
        self._added(self.birth_dates, value)

    def needles(self) -> list[Needle]:
        found: list[Needle] = []
        for value in self.ids:
            found += identifier_needles(value)
        for value in self.uids:
            found += uid_needles(value)
        for value in self.names:
            found += name_needles(value)
        for value in self.birth_dates:
            found += date_needles(value)
        return found

    def matcher(self) -> IdentifierMatcher:
        """The compiled needles (rebuilt only after a value was added)."""
        if self._matcher is None:
            self._matcher = IdentifierMatcher(self.needles())
        return self._matcher

    def __len__(self) -> int:
        return len(self.ids) + len(self.names) + len(self.birth_dates) + len(self.uids)

    def __repr__(self) -> str:  # never print the values
        return f"StudyIdentifiers({len(self)} values)"
