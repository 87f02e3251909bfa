"""Tag-operation files: the allow-list a project's YAML points at.

A file holds ``operations``: one entry per attribute, by ``keyword`` (or ``tag: "gggg,eeee"``) for
public attributes, or by ``group`` + ``private_creator`` + ``element`` (the offset in the block) for
private ones. A manufacturer-override file also has ``manufacturer``: a regex matched against the
instance's Manufacturer. Everything not listed is removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag, Tag

from voxl_assets.config_files import ConfigFileError, read_yaml
from voxl_assets.confinement import PathEscapeError, confined_path
from voxl_assets.deid.tally import ProfileFile
from voxl_assets.project_regex import ProjectRegex, ProjectRegexError, compile_project_regex


class Op(StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    REPLACE = "replace"
    REPLACE_UID = "replace_uid"
    SECURE_HASH = "secure_hash"
    DATE = "date"
    NUMERIC_RANGE = "numeric_range"


@dataclass(frozen=True)
class Operation:
    op: Op
    label: str  # keyword or private name, for messages
    minimum: float | None = None
    maximum: float | None = None
    value: str | None = None  # a fixed replacement, when the file gives one


PrivateKey = tuple[int, str, int]  # (group, private creator, element offset 0x00-0xFF)


@dataclass
class TagOperations:
    """Operations for public tags (by tag) and private tags (by group, creator, offset)."""

    public: dict[int, Operation] = field(default_factory=dict)
    private: dict[PrivateKey, Operation] = field(default_factory=dict)

    def merged(self, other: TagOperations) -> TagOperations:
        """``other`` on top of ``self`` (later files win)."""
        return TagOperations({**self.public, **other.public}, {**self.private, **other.private})


@dataclass(frozen=True)
class ManufacturerOverride:
    pattern: ProjectRegex
    operations: TagOperations
    source: str


@dataclass
class TagPolicy:
    """A project's complete allow-list: base operations plus per-manufacturer overrides."""

    base: TagOperations
    overrides: list[ManufacturerOverride] = field(default_factory=list)
    # The files it was read from, in order, with their SHA-256 (for the de-identification report).
    files: list[ProfileFile] = field(default_factory=list)
    _cache: dict[str, TagOperations] = field(default_factory=dict, repr=False)

    def for_manufacturer(self, manufacturer: str) -> TagOperations:
        """The operations for instances of ``manufacturer`` (cached: called once per instance)."""
        cached = self._cache.get(manufacturer)
        if cached is None:
            cached = self.base
            for override in self.overrides:
                if override.pattern.search(manufacturer):
                    cached = cached.merged(override.operations)
            self._cache[manufacturer] = cached
        return cached


class TagOperationsError(ValueError):
    """A tag-operation file is invalid; the message names the file and the entry."""


def _parse_tag(text: str) -> BaseTag:
    cleaned = text.strip().strip("()").replace(" ", "")
    group, _, element = cleaned.partition(",")
    return Tag(int(group, 16), int(element, 16))


def _parse_entry(path: Path, index: int, entry: Mapping[str, Any]) -> tuple[Any, Operation]:
    where = f"{path}: operations[{index}]"
    if not isinstance(entry, Mapping):
        raise TagOperationsError(f"{where}: expected a mapping, got {type(entry).__name__}")
    known = {"keyword", "tag", "group", "private_creator", "element", "name", "op"}
    known |= {"min", "max", "value"}
    unknown = set(entry) - known
    if unknown:
        raise TagOperationsError(f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        op = Op(entry.get("op", ""))
    except ValueError:
        raise TagOperationsError(
            f"{where}: op must be one of {[o.value for o in Op]}, got {entry.get('op')!r}"
        ) from None
    numbers = {}
    for bound in ("min", "max"):
        if bound in entry:
            if not isinstance(entry[bound], int | float):
                raise TagOperationsError(f"{where}: {bound} must be a number")
            numbers[bound] = float(entry[bound])
    if op is Op.NUMERIC_RANGE and not numbers:
        raise TagOperationsError(f"{where}: numeric_range needs min and/or max")
    value = entry.get("value")
    if "private_creator" in entry:
        group, element = entry.get("group"), entry.get("element")
        if not isinstance(group, int) or group % 2 == 0:
            raise TagOperationsError(f"{where}: group must be an odd (private) group number")
        if not isinstance(element, int) or not 0 <= element <= 0xFF:
            raise TagOperationsError(f"{where}: element must be the offset 0x00-0xFF in the block")
        label = str(entry.get("name") or f"({group:04X},xx{element:02X})")
        operation = Operation(op, label, numbers.get("min"), numbers.get("max"), value)
        return (group, str(entry["private_creator"]), element), operation
    if "keyword" in entry:
        tag = tag_for_keyword(str(entry["keyword"]))
        if tag is None:
            raise TagOperationsError(
                f"{where}: {entry['keyword']!r} is not a DICOM keyword (check the spelling, or use tag:)"
            )
        label = str(entry["keyword"])
    elif "tag" in entry:
        try:
            tag = _parse_tag(str(entry["tag"]))
        except ValueError:
            raise TagOperationsError(
                f"{where}: tag must look like 'gggg,eeee', got {entry['tag']!r}"
            ) from None
        label = str(entry.get("name") or entry["tag"])
    else:
        raise TagOperationsError(f"{where}: needs keyword, tag, or group+private_creator+element")
    if Tag(tag).is_private:
        raise TagOperationsError(f"{where}: private tags need group, private_creator and element")
    return int(tag), Operation(op, label, numbers.get("min"), numbers.get("max"), value)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = read_yaml(path)
    except ConfigFileError as exc:
        raise TagOperationsError(str(exc)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("operations"), list):
        raise TagOperationsError(f"{path}: expected a mapping with an 'operations' list")
    return raw


def load_operations_file(path: Path) -> TagOperations:
    raw = _read(path)
    operations = TagOperations()
    for index, entry in enumerate(raw["operations"]):
        key, operation = _parse_entry(path, index, entry)
        if isinstance(key, tuple):
            operations.private[key] = operation
        else:
            operations.public[key] = operation
    return operations


def load_policy(
    ops_dir: Path, base_files: Iterable[str], override_files: Iterable[str]
) -> TagPolicy:
    """Merge the base files in order (later wins) and load the manufacturer overrides.

    Names are relative to ``ops_dir`` and must stay inside it (symbolic links resolved)."""
    base = TagOperations()
    files = []
    for name in base_files:
        path = _inside(ops_dir, name)
        base = base.merged(load_operations_file(path))
        files.append(_profile_file(path, name))
    overrides = []
    for name in override_files:
        path = _inside(ops_dir, name)
        raw = _read(path)
        files.append(_profile_file(path, name))
        pattern = raw.get("manufacturer")
        if not isinstance(pattern, str):
            raise TagOperationsError(
                f"{path}: manufacturer: a regex is required in an override file"
            )
        try:
            compiled = compile_project_regex(pattern)
        except ProjectRegexError as exc:
            raise TagOperationsError(f"{path}: manufacturer: {exc}") from None
        overrides.append(ManufacturerOverride(compiled, load_operations_file(path), str(path)))
    _check_identity_operations(base, ", ".join(base_files) or "(no base files)")
    for override in overrides:
        _check_identity_operations(base.merged(override.operations), override.source)
    return TagPolicy(base, overrides, files)


def _profile_file(path: Path, name: str) -> ProfileFile:
    """The file's name, SHA-256 of its bytes, and its ``profile:`` line (what it follows)."""
    data = path.read_bytes()
    profile = _read(path).get("profile")
    return ProfileFile(
        name, hashlib.sha256(data).hexdigest(), str(profile) if isinstance(profile, str) else ""
    )


# Every written instance needs its identity: the class as it is, the instance, series and study
# as pseudonymous UIDs (they also name the output files and keep references consistent).
# Deleting one would leave instances that overwrite each other and objects no viewer can place;
# keeping an instance UID would fail every study at the privacy check.
_IDENTITY_OPERATIONS = {
    0x00080016: ("SOPClassUID", Op.KEEP),
    0x00080018: ("SOPInstanceUID", Op.REPLACE_UID),
    0x0020000D: ("StudyInstanceUID", Op.REPLACE_UID),
    0x0020000E: ("SeriesInstanceUID", Op.REPLACE_UID),
}


def _check_identity_operations(operations: TagOperations, where: str) -> None:
    for tag, (keyword, required) in _IDENTITY_OPERATIONS.items():
        operation = operations.public.get(tag)
        if operation is None or operation.op is not required:
            found = operation.op.value if operation else "not listed (removed)"
            raise TagOperationsError(
                f"{where}: {keyword} must have op {required.value} (it has: {found}); every "
                "written instance needs it"
            )


def _inside(ops_dir: Path, name: str) -> Path:
    try:
        return confined_path(ops_dir, name)
    except PathEscapeError as exc:
        raise TagOperationsError(f"{ops_dir / name}: {exc}") from None
