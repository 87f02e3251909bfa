"""What de-identification did, counted: the tallies behind the de-identification report.

The engine counts, while it walks each instance, every attribute it meets (at any depth) with the
operation it applied; a study's tally adds its filters, refusals, checks and the tag-operation
files (with their SHA-256) it ran under; an extract's tally is the sum of its studies'. Only tags,
keywords, private creators, reasons and counts: never a value (private creators, which are
values, are checked against the study's identifiers before they are kept, see ``safe_creator``).
Plain JSON for the VOXL database; no pyarrow or Dagster here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxl_assets.identifier_rules import IdentifierMatcher

# Operations that are not an allow-list entry's op.
REMOVED = "removed: not in the allow-list"
DELETED = "delete"  # listed with op delete
CREATOR_KEPT = "keep (private creator of a kept element)"
CREATOR_REMOVED = "removed: no kept element in the block"
NO_CREATOR = "(no private creator)"
WITHHELD_CREATOR = "(creator withheld: it holds an identifier)"
MAX_CREATOR_LENGTH = 64  # LO

# A private element is counted under (group << 16) | PRIVATE_ELEMENT | offset, whatever block the
# instance put it in ("(gggg,xxEE)"); its creator element under (group << 16) | CREATOR_ELEMENT.
PRIVATE_ELEMENT = 0x1_0000_0000
CREATOR_ELEMENT = 0x2_0000_0000

AttributeKey = tuple[int, str, str]  # (tag, private creator or "", operation)


def private_key(group: int, offset: int) -> int:
    return PRIVATE_ELEMENT | group << 16 | offset


def creator_key(group: int) -> int:
    return CREATOR_ELEMENT | group << 16


def tag_text(number: int) -> str:
    """``(gggg,eeee)``, ``(gggg,xxEE)`` for a private element, ``(gggg,00xx)`` for a creator."""
    group = number >> 16 & 0xFFFF
    if number & PRIVATE_ELEMENT:
        return f"({group:04X},xx{number & 0xFF:02X})"
    if number & CREATOR_ELEMENT:
        return f"({group:04X},00xx)"
    return f"({group:04X},{number & 0xFFFF:04X})"


def safe_creator(creator: str, matcher: IdentifierMatcher | None) -> str:
    """A private creator fit for the report: printable, at most 64 characters, and withheld when
    it holds one of the study's identifiers (a creator is a value a file can fill with anything)."""
    if not creator:
        return NO_CREATOR
    text = "".join(c if c.isprintable() else "?" for c in creator.strip())[:MAX_CREATOR_LENGTH]
    if matcher is not None and matcher.find(text):
        return WITHHELD_CREATOR
    return text


@dataclass(frozen=True)
class ProfileFile:
    """A tag-operation file a study was de-identified under."""

    name: str  # relative to project_definitions/tag-operations/
    sha256: str
    profile: str  # the file's ``profile:`` line (which PS3.15 Annex E options it follows)


@dataclass
class CheckTally:
    studies_run: int = 0
    studies_passed: int = 0
    instances_checked: int = 0


@dataclass
class DeidTally:
    """Counts for one study, or summed over an extract's studies."""

    studies: int = 0
    studies_written: int = 0  # studies with at least one instance written
    studies_filtered: int = 0  # every instance filtered out
    studies_failed_checks: int = 0
    instances_in: int = 0
    instances_out: int = 0
    attributes: Counter[AttributeKey] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)  # instances, by reason
    refused: Counter[str] = field(default_factory=Counter)  # broken instances, by reason
    vr_changes: Counter[str] = field(default_factory=Counter)
    checks: dict[str, CheckTally] = field(default_factory=dict)
    profile_files: dict[tuple[str, str], int] = field(
        default_factory=dict
    )  # (name, sha) -> studies
    profiles: dict[str, str] = field(default_factory=dict)  # name -> profile line

    def add_profile_files(self, files: Iterable[ProfileFile]) -> None:
        for file in files:
            key = (file.name, file.sha256)
            self.profile_files[key] = self.profile_files.get(key, 0) + 1
            self.profiles[file.name] = file.profile

    def add_check(self, name: str, passed: bool, instances: int) -> None:
        tally = self.checks.setdefault(name, CheckTally())
        tally.studies_run += 1
        tally.studies_passed += int(passed)
        tally.instances_checked += instances

    def merge(self, other: DeidTally) -> None:
        for name in (
            "studies",
            "studies_written",
            "studies_filtered",
            "studies_failed_checks",
            "instances_in",
            "instances_out",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.attributes.update(other.attributes)
        self.filtered.update(other.filtered)
        self.refused.update(other.refused)
        self.vr_changes.update(other.vr_changes)
        for name, check in other.checks.items():
            mine = self.checks.setdefault(name, CheckTally())
            mine.studies_run += check.studies_run
            mine.studies_passed += check.studies_passed
            mine.instances_checked += check.instances_checked
        for key, count in other.profile_files.items():
            self.profile_files[key] = self.profile_files.get(key, 0) + count
        self.profiles.update(other.profiles)

    def private_blocks(self) -> list[tuple[int, str, int, int]]:
        """(group, creator, elements kept, elements removed), by group and creator."""
        blocks: dict[tuple[int, str], list[int]] = {}
        for (number, creator, operation), count in self.attributes.items():
            if not number & PRIVATE_ELEMENT:
                continue
            counts = blocks.setdefault((number >> 16 & 0xFFFF, creator), [0, 0])
            counts[0 if not operation.startswith(("removed", DELETED)) else 1] += count
        return [(g, c, kept, removed) for (g, c), (kept, removed) in sorted(blocks.items())]

    # --- JSON, for the VOXL database ---------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "studies_written": self.studies_written,
            "studies_filtered": self.studies_filtered,
            "studies_failed_checks": self.studies_failed_checks,
            "instances_in": self.instances_in,
            "instances_out": self.instances_out,
            "attributes": [[n, c, o, k] for (n, c, o), k in sorted(self.attributes.items())],
            "filtered": dict(sorted(self.filtered.items())),
            "refused": dict(sorted(self.refused.items())),
            "vr_changes": dict(sorted(self.vr_changes.items())),
            "checks": {
                name: [c.studies_run, c.studies_passed, c.instances_checked]
                for name, c in sorted(self.checks.items())
            },
            "profile_files": [[n, s, k] for (n, s), k in sorted(self.profile_files.items())],
            "profiles": dict(sorted(self.profiles.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeidTally:
        tally = cls(
            studies=int(data.get("studies", 0)),
            studies_written=int(data.get("studies_written", 0)),
            studies_filtered=int(data.get("studies_filtered", 0)),
            studies_failed_checks=int(data.get("studies_failed_checks", 0)),
            instances_in=int(data.get("instances_in", 0)),
            instances_out=int(data.get("instances_out", 0)),
        )
        for number, creator, operation, count in data.get("attributes", []):
            tally.attributes[(int(number), str(creator), str(operation))] = int(count)
        tally.filtered.update({str(k): int(v) for k, v in data.get("filtered", {}).items()})
        tally.refused.update({str(k): int(v) for k, v in data.get("refused", {}).items()})
        tally.vr_changes.update({str(k): int(v) for k, v in data.get("vr_changes", {}).items()})
        for name, (run, passed, instances) in data.get("checks", {}).items():
            tally.checks[str(name)] = CheckTally(int(run), int(passed), int(instances))
        for name, sha, count in data.get("profile_files", []):
            tally.profile_files[(str(name), str(sha))] = int(count)
        tally.profiles.update({str(k): str(v) for k, v in data.get("profiles", {}).items()})
        return tally
