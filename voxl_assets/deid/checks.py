"""Privacy checks on de-identified output, independent of the engine that wrote it.

Both read the written files back, so they test what will actually leave the hospital. Findings
name the file and the tag path, never the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from voxl_assets.deid.identifiers import ENGINE_TAGS, StudyIdentifiers
from voxl_assets.deid.operations import Op, TagOperations, TagPolicy

TEXT_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DT",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
BINARY_VRS = {"OB", "UN", "OW"}
DATE_VRS = {"DA", "DT", "TM"}
TOKEN_SPLIT = re.compile(r"[\s\^\\/,;:=|()\[\]\"']+")
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
MAX_SCANNED_BINARY = 64 * 1024


@dataclass
class CheckFinding:
    file: str
    tag_path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.tag_path}: {self.problem}"


@dataclass
class CheckResult:
    files_checked: int = 0
    findings: list[CheckFinding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def summary(self, limit: int = 5) -> str:
        if self.passed:
            return f"{self.files_checked} files checked, no findings"
        shown = "; ".join(str(f) for f in self.findings[:limit])
        more = len(self.findings) - limit
        return f"{len(self.findings)} findings in {self.files_checked} files: {shown}" + (
            f" (+{more} more)" if more > 0 else ""
        )


_ALLOWED_CACHE: dict[
    int,
    tuple[
        TagOperations, frozenset[int], frozenset[tuple[int, str, int]], frozenset[tuple[int, str]]
    ],
] = {}


def _allowed_sets(
    operations: TagOperations,
) -> tuple[frozenset[int], frozenset[tuple[int, str, int]], frozenset[tuple[int, str]]]:
    """(public tags, private (group, creator, element), private (group, creator)) kept by
    ``operations``; computed once per operations object (one per manufacturer override)."""
    cached = _ALLOWED_CACHE.get(id(operations))
    if cached is not None and cached[0] is operations:
        return cached[1], cached[2], cached[3]
    public = frozenset(
        {tag for tag, op in operations.public.items() if op.op is not Op.DELETE} | ENGINE_TAGS
    )
    private = frozenset(key for key, op in operations.private.items() if op.op is not Op.DELETE)
    creators = frozenset((g, c) for (g, c, _e) in private)
    _ALLOWED_CACHE[id(operations)] = (operations, public, private, creators)
    return public, private, creators


def disallowed_tags(ds: Dataset, operations: TagOperations) -> list[str]:
    """Tag paths in ``ds`` (recursively) that the allow-list does not keep."""
    allowed_public, allowed_private, creators = _allowed_sets(operations)
    found: list[str] = []

    def visit(item: Dataset, prefix: str) -> None:
        block_creators: dict[tuple[int, int], str] = {}
        tags = sorted(item.keys(), key=int)  # int keys: BaseTag compares in Python
        for tag in tags:
            if tag.is_private and 0x10 <= tag.element <= 0xFF:
                block_creators[(tag.group, tag.element)] = str(item[tag].value)
        for tag in tags:
            if tag.is_private:
                if 0x10 <= tag.element <= 0xFF:
                    ok = (tag.group, block_creators[(tag.group, tag.element)]) in creators
                else:
                    creator = block_creators.get((tag.group, tag.element >> 8))
                    ok = creator is not None and (
                        (tag.group, creator, tag.element & 0xFF) in allowed_private
                    )
            else:
                ok = tag in allowed_public
            if not ok:
                found.append(f"{prefix}{tag}")
            if element_vr(item.get_item(tag)) == "SQ":
                for index, child in enumerate(item[tag].value):
                    visit(child, f"{prefix}{tag}[{index}].")

    visit(ds, "")
    return found


def _tokens(text: str) -> Iterator[str]:
    lowered = text.strip().lower()
    if lowered:
        yield lowered
        for token in TOKEN_SPLIT.split(lowered):
            if token and token != lowered:
                yield token


def element_vr(elem: DataElement | RawDataElement) -> str:
    """The element's VR, from the dictionary when the file is implicit VR."""
    if elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return "UN"


def identifier_hits(ds: Dataset, identifiers: StudyIdentifiers) -> list[str]:
    """Tag paths whose value holds an identifier of the study (whole value or whole token).

    Elements still in their encoded form are checked from their bytes (text VRs are ASCII-
    compatible in every character set DICOM allows for them), so nothing is decoded needlessly.
    """
    hits: list[str] = []

    values, birth_dates = identifiers.values, identifiers.birth_dates

    def visit(item: Dataset, prefix: str) -> None:
        for tag in sorted(item.keys(), key=int):
            elem = item.get_item(tag)
            vr = element_vr(elem)
            if vr == "SQ":
                for index, child in enumerate(item[tag].value):
                    visit(child, f"{prefix}{tag}[{index}].")
                continue
            if int(tag) in PIXEL_TAGS or elem.value is None:
                continue
            value = elem.value
            texts: list[str] = []
            if vr in TEXT_VRS or vr in BINARY_VRS:
                if isinstance(value, bytes):
                    text = value[:MAX_SCANNED_BINARY].decode("latin-1").replace("\0", " ")
                    texts = text.split("\\") if vr in TEXT_VRS else [text]
                elif isinstance(value, MultiValue | list):
                    texts = [str(v) for v in value]
                else:
                    texts = [str(value)]
            check_birth = vr not in DATE_VRS
            for text in texts:
                tokens = set(_tokens(text))
                if not tokens.isdisjoint(values) or (
                    check_birth and not tokens.isdisjoint(birth_dates)
                ):
                    hits.append(f"{prefix}{tag}")  # the path is built only for a finding
                    break

    visit(ds, "")
    return hits


def check_output(
    files: Sequence[Path], policy: TagPolicy, identifiers: StudyIdentifiers
) -> tuple[CheckResult, CheckResult]:
    """Read every output file back; returns (allow-list result, identifier result)."""
    allow = CheckResult()
    leaks = CheckResult()
    for path in files:
        # Large values (pixel data) are not read: defer_size leaves them on disk.
        ds = dcmread(path, defer_size=MAX_SCANNED_BINARY)
        manufacturer = str(ds.get("Manufacturer", "") or "")
        operations = policy.for_manufacturer(manufacturer)
        allow.files_checked += 1
        leaks.files_checked += 1
        for tag_path in disallowed_tags(ds, operations):
            allow.findings.append(CheckFinding(path.name, tag_path, "not in the allow-list"))
        for tag_path in identifier_hits(ds, identifiers):
            leaks.findings.append(
                CheckFinding(path.name, tag_path, "holds an identifier of the study")
            )
        for tag_path in identifier_hits(ds.file_meta, identifiers):
            leaks.findings.append(
                CheckFinding(path.name, f"file meta {tag_path}", "holds an identifier of the study")
            )
    return allow, leaks
