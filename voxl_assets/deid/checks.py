"""Privacy and integrity checks on de-identified output, independent of the engine that wrote it.

``check_output`` and ``check_integrity`` read written files back with pydicom, so they test what
will actually leave the hospital; ``identifier_hits`` is also how the engine confirms what its
fast in-memory prefilter flags. Every element is checked whatever its VR, whole (no length
cut-off), at any depth, decoded in each of the instance's character sets (and as UTF-8 and
Latin-1), under the shared matching rules of ``voxl_assets/identifier_rules.py``; number strings
and binary numbers are compared with numeric identifiers; text hidden as base64, hex or UTF-16
is decoded and looked in (``hidden_text.py``); UI values must be well-known or pseudonymous. Findings name the file and the tag path, never the offending value.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary

from voxl_assets.deid.embedded_text import UncheckedSegments, marker_segments, segment_texts
from voxl_assets.deid.hidden_text import hidden_hits
from voxl_assets.deid.identifiers import ENGINE_TAGS, StudyIdentifiers
from voxl_assets.deid.operations import Op, TagOperations, TagPolicy
from voxl_assets.identifier_rules import IdentifierMatcher

DATE_VRS = frozenset({"DA", "DT", "TM"})
NUMBER_STRING_VRS = frozenset({"IS", "DS"})
BINARY_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT"}
)
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
PSEUDONYMOUS_UID_PREFIX = "2.25."  # what the keyed UID replacement writes
# Well-known UIDs, and the implementation class UID the engine writes into every file meta.
WELL_KNOWN_UIDS = frozenset(UID_dictionary) | {PYDICOM_IMPLEMENTATION_UID}
MIN_BINARY_NUMBER = 100_000  # smaller numbers are everyday counts and sizes


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
        # The dataset's own mapping and plain ints: this runs for every element written.
        elements = item._dict
        block_creators: dict[tuple[int, int], str] = {}
        private: list[int] = []
        for tag, elem in elements.items():
            if tag >> 16 & 1:
                private.append(tag)
                if 0x10 <= tag & 0xFFFF <= 0xFF:
                    block_creators[(tag >> 16, tag & 0xFFFF)] = str(item[tag].value)
            elif tag not in allowed_public:
                found.append(f"{prefix}{BaseTag(tag)}")
            if elem.VR == "SQ":
                for index, child in enumerate(item[tag].value):
                    visit(child, f"{prefix}{BaseTag(tag)}[{index}].")
        for number in private:
            group, element = number >> 16, number & 0xFFFF
            if 0x10 <= element <= 0xFF:
                ok = (group, block_creators[(group, element)]) in creators
            else:
                creator = block_creators.get((group, element >> 8))
                ok = creator is not None and (group, creator, element & 0xFF) in allowed_private
            if not ok:
                found.append(f"{prefix}{BaseTag(number)}")

    visit(ds, "")
    return sorted(found)


def element_vr(elem: DataElement | RawDataElement) -> str:
    """The element's VR, from the dictionary when the file is implicit VR."""
    if elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return "UN"


def instance_encodings(ds: Dataset) -> list[str]:
    """Python codecs of the instance's SpecificCharacterSet (ISO 2022 extensions included)."""
    elem = ds.get_item(0x00080005)
    if elem is None or elem.value is None:
        return ["iso8859"]
    value = elem.value
    if isinstance(value, bytes):
        terms = [t.strip(" \0") for t in value.decode("latin-1").split("\\")]
    else:
        terms = [value] if isinstance(value, str) else [str(v) for v in value]
    try:
        return list(dict.fromkeys(convert_encodings(terms or [""])))
    except (LookupError, ValueError):
        return ["iso8859"]


def value_texts(value: bytes, vr: str, encodings: Sequence[str]) -> list[str]:
    """Every reading of ``value`` as text: the instance's character sets together (with ISO 2022
    escapes, reset at the VR's delimiters) and one by one, UTF-8 and Latin-1."""
    if value.isascii() and 0x1B not in value:
        return [value.decode("ascii")]
    texts = []
    delimiters = {0x5E, 0x3D, 0x5C} if vr == "PN" else {0x5C, 0x0D, 0x0A, 0x09, 0x0C}
    for chosen in (set(), delimiters):
        with contextlib.suppress(LookupError, ValueError):
            texts.append(decode_bytes(value, list(encodings), chosen))
    for codec in (*encodings, "utf-8", "latin-1"):
        try:
            texts.append(value.decode(codec, "replace"))
        except LookupError:
            continue
    return list(dict.fromkeys(texts))


def number_string_hits(value: bytes, numbers: frozenset[int]) -> bool:
    """Whether an IS/DS value holds a numeric identifier in any notation (4.7000022E7...)."""
    if not numbers:
        return False
    if not any(n >= MIN_BINARY_NUMBER for n in numbers):
        return False
    for part in value.decode("latin-1").split("\\"):
        try:
            number = float(part.strip(" \0"))
        except ValueError:
            continue
        if number.is_integer() and int(number) in numbers and number >= MIN_BINARY_NUMBER:
            return True
    return False


@lru_cache(maxsize=64)
def number_patterns(numbers: frozenset[int], little_endian: bool = True) -> tuple[bytes, ...]:
    """The bytes of each numeric identifier as a 32- and 64-bit integer and float."""
    order = "<" if little_endian else ">"
    patterns: set[bytes] = set()
    for number in numbers:
        if number < MIN_BINARY_NUMBER:
            continue
        if number < 2**32:
            patterns.add(struct.pack(order + "I", number))
        if number < 2**64:
            patterns.add(struct.pack(order + "Q", number))
        patterns.add(struct.pack(order + "f", float(number)))
        patterns.add(struct.pack(order + "d", float(number)))
    return tuple(sorted(patterns))


def binary_number_hits(value: bytes, numbers: frozenset[int], little_endian: bool = True) -> bool:
    """Whether ``value`` holds a numeric identifier as a 32- or 64-bit integer or float, at any
    byte offset (an OB or UN value may put it anywhere; a VR label may lie)."""
    return any(pattern in value for pattern in number_patterns(numbers, little_endian))


def _encoded(elem: DataElement, encodings: list[str]) -> bytes:
    """The value bytes of an element pydicom has converted, as pydicom would write them."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_data_element(buffer, elem, encodings)
    return buffer.getvalue()[8:]


def leaf_values(
    ds: Dataset, prefix: str, encodings: list[str]
) -> Iterable[tuple[str, int, str, bytes]]:
    """(tag path, tag, VR, value bytes) of every element that is not a sequence, at any depth."""
    for tag in sorted(ds.keys(), key=int):
        elem = ds.get_item(tag)
        vr = element_vr(elem)
        if vr == "SQ" or (
            isinstance(elem, RawDataElement) and elem.length == 0xFFFFFFFF and vr in ("UN", "SQ")
        ):
            value = ds[tag].value
            if isinstance(value, Iterable):
                for index, child in enumerate(value):
                    if isinstance(child, Dataset):
                        yield from leaf_values(child, f"{prefix}{tag}[{index}].", encodings)
                continue
        if elem.value is None:
            continue
        if isinstance(elem, RawDataElement):
            raw = elem.value if isinstance(elem.value, bytes) else b""
        else:
            raw = elem.value if isinstance(elem.value, bytes) else _encoded(elem, encodings)
        yield f"{prefix}{tag}", int(tag), vr, raw


def identifier_hits(
    ds: Dataset,
    identifiers: StudyIdentifiers | IdentifierMatcher,
    *,
    uids: bool = False,
    encodings: Sequence[str] = (),
) -> list[str]:
    """Tag paths whose value holds an identifier of the study, with ``uids`` also those whose
    UI value is neither well-known nor pseudonymous. Values are read in the instance's character
    sets and in ``encodings`` (the source's, when the output lost them). Pixel data is not read
    as text."""
    matcher = identifiers.matcher() if isinstance(identifiers, StudyIdentifiers) else identifiers
    encodings = list(dict.fromkeys([*instance_encodings(ds), *encodings]))
    little = getattr(ds, "is_little_endian", None) is not False
    hits: list[str] = []
    for path, tag, vr, raw in leaf_values(ds, "", encodings):
        if tag in PIXEL_TAGS or not raw:
            continue
        try:
            dictionary = dictionary_VR(tag) if not tag >> 16 & 1 else ""
        except KeyError:
            dictionary = ""
        in_date = vr in DATE_VRS or dictionary in DATE_VRS
        if (
            any(
                matcher.find(text, in_date_attribute=in_date)
                for text in value_texts(raw, vr, encodings)
            )
            or (
                (vr in NUMBER_STRING_VRS or dictionary in NUMBER_STRING_VRS)
                and number_string_hits(raw, matcher.numbers)
            )
            or binary_number_hits(raw, matcher.numbers, little)
            or hidden_hits(raw, matcher, binary=vr in BINARY_VRS or dictionary in BINARY_VRS)
            or (uids and vr == "UI" and _foreign_uid(raw))
        ):
            hits.append(path)
    return hits


def _foreign_uid(raw: bytes) -> bool:
    for value in raw.decode("latin-1").split("\\"):
        uid = value.strip(" \0")
        if uid and uid not in WELL_KNOWN_UIDS and not uid.startswith(PSEUDONYMOUS_UID_PREFIX):
            return True
    return False


PIXEL_TEXT = "(7FE0,0010) text segment of the compressed pixel data (JPEG COM/APPn)"


def pixel_text_hits(payloads: Sequence[bytes], matcher: IdentifierMatcher) -> list[str]:
    """``[PIXEL_TEXT]`` when a comment or application segment of the pixel data's codestreams
    (``embedded_text.marker_segments``) holds an identifier, read as a person might see it."""
    if payloads and any(matcher.find(text) for text in segment_texts(payloads)):
        return [PIXEL_TEXT]
    return []


def _pixel_segments(ds: Dataset) -> list[bytes]:
    elem = ds.get_item(0x7FE00010)
    if elem is None or not getattr(ds["PixelData"], "is_undefined_length", False):
        return []
    payloads: list[bytes] = []
    fragments = generate_fragments(ds.PixelData)
    next(fragments, None)  # the basic offset table
    for fragment in fragments:
        payloads += marker_segments(fragment)
    return payloads


def check_output(
    files: Sequence[Path], policy: TagPolicy, identifiers: StudyIdentifiers
) -> tuple[CheckResult, CheckResult]:
    """Read every output file back; returns (allow-list result, identifier result)."""
    allow = CheckResult()
    leaks = CheckResult()
    matcher = identifiers.matcher()
    for path in files:
        allow.files_checked += 1
        leaks.files_checked += 1
        try:
            ds = dcmread(path)
        except Exception as exc:
            for result in (allow, leaks):
                result.findings.append(
                    CheckFinding(path.name, "file", f"not readable ({type(exc).__name__})")
                )
            continue
        preamble = ds.preamble or b""
        if preamble.strip(b"\0") and matcher.find(preamble.decode("latin-1")):
            leaks.findings.append(CheckFinding(path.name, "preamble", "holds an identifier"))
        manufacturer = str(ds.get("Manufacturer", "") or "")
        operations = policy.for_manufacturer(manufacturer)
        for tag_path in disallowed_tags(ds, operations):
            allow.findings.append(CheckFinding(path.name, tag_path, "not in the allow-list"))
        try:
            segments = _pixel_segments(ds)
        except UncheckedSegments:
            leaks.findings.append(CheckFinding(path.name, PIXEL_TEXT, "too many segments to read"))
            segments = []
        for tag_path in pixel_text_hits(segments, matcher):
            leaks.findings.append(CheckFinding(path.name, tag_path, "holds an identifier"))
        for tag_path in identifier_hits(ds, matcher, uids=True):
            leaks.findings.append(
                CheckFinding(
                    path.name, tag_path, "holds an identifier of the study or a source UID"
                )
            )
        for tag_path in identifier_hits(ds.file_meta, matcher, uids=True):
            leaks.findings.append(
                CheckFinding(path.name, f"file meta {tag_path}", "holds an identifier of the study")
            )
    return allow, leaks


def check_integrity(files: Sequence[Path]) -> CheckResult:
    """Every file re-reads with pydicom, completely: its structure whole to the last byte, its
    pixel data as long as the image needs (fragments closed when encapsulated), its file meta
    naming its own SOP Instance UID."""
    from voxl_assets.deid.header_scan import scan_instance  # the structure walk, shared

    result = CheckResult()
    for path in files:
        result.files_checked += 1
        try:
            ds = dcmread(path)
        except Exception as exc:
            result.findings.append(
                CheckFinding(path.name, "file", f"not readable ({type(exc).__name__})")
            )
            continue
        scan = scan_instance(path)
        if scan.refusal is not None:
            result.findings.append(CheckFinding(path.name, "file", scan.refusal.value))
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not sop or sop != str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")):
            result.findings.append(
                CheckFinding(
                    path.name, "(0008,0018)", "SOP Instance UID missing or unlike the file meta's"
                )
            )
        problem = _pixel_problem(ds)
        if problem:
            result.findings.append(CheckFinding(path.name, "(7FE0,0010)", problem))
    return result


def _pixel_problem(ds: Dataset) -> str | None:
    if "PixelData" not in ds:
        image = "Rows" in ds and "Columns" in ds and "SpectroscopyData" not in ds
        return "an image without pixel data" if image else None
    data = ds.PixelData
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_encapsulated:
        if not data.startswith(b"\xfe\xff\x00\xe0"):
            return "encapsulated pixel data without items"
        cursor, fragments = 0, 0
        while cursor + 8 <= len(data):
            tag, length = struct.unpack_from("<II", data, cursor)
            if tag == 0xE0DDFFFE:
                break
            if tag != 0xE000FFFE or cursor + 8 + length > len(data):
                return "encapsulated pixel data broken"
            fragments += 1
            cursor += 8 + length
        return None if fragments >= 2 else "encapsulated pixel data without fragments"
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return "pixel data without Rows, Columns or BitsAllocated"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")) in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        samples = 2
    if len(data) < (rows * columns * samples * frames * bits + 7) // 8:
        return "pixel data shorter than the image needs"
    return None
