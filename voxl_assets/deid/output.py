"""Encoding a de-identified header, and the in-memory identifier check on exactly those bytes.

The header is encoded into memory first (file meta and dataset; the pixel data that follows is
copied byte for byte from the source later), then checked, then written, so a failing instance
never reaches the store. The check is a prefilter over the whole encoded header that is cheap
when nothing is found, which is almost always:

- the bytes folded at C speed (ASCII letters lower-cased, ASCII separators removed) and searched
  with an Aho-Corasick automaton of the study's identifiers: every ASCII-compatible reading of
  every element, nested items and private blocks included, whatever its VR or length;
- the values that are not plain ASCII (other character sets, ISO 2022 escapes, binary bytes)
  decoded in each of the instance's character sets and folded exactly;
- numeric identifiers as 32/64-bit integer and float bytes anywhere in the header, and number
  strings in exponent notation parsed.

Anything the prefilter flags is confirmed, with the boundaries and exemptions of the matching
rules, by ``checks.identifier_hits`` on the header parsed back from the encoded bytes: the same
function the independent checker runs on written files.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element

from voxl_assets.deid import checks
from voxl_assets.deid.checks import (
    binary_number_hits,
    element_vr,
    number_string_hits,
    value_texts,
)
from voxl_assets.deid.encoding import element_header, encode_element, encode_file_meta
from voxl_assets.deid.hidden_text import may_hide_identifiers, may_hide_text
from voxl_assets.identifier_rules import IdentifierMatcher, fold, fold_ascii_bytes

BIG_ENDIAN = "1.2.840.10008.1.2.2"
IMPLICIT = "1.2.840.10008.1.2"
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_NUMBER_STRINGS = frozenset({"IS", "DS"})


@dataclass
class EncodedHeader:
    """A de-identified header as it will be written, and the values the prefilter must decode."""

    data: bytes
    little_endian: bool = True
    pixel_range: tuple[int, int] | None = None  # pixel data inside ``data`` (slow path)
    texts: list[tuple[str, bytes]] = field(default_factory=list)  # (VR, value): not plain ASCII
    exponents: list[bytes] = field(default_factory=list)  # number strings with an exponent
    hidden: list[tuple[bool, bytes]] = field(default_factory=list)  # (binary VR, value): see below


def _triage(header: EncodedHeader, tag: int, vr: str, value: bytes) -> None:
    if tag in PIXEL_TAGS:
        return
    binary = vr in checks.BINARY_VRS
    if may_hide_text(value, binary=binary):  # base64, hex or UTF-16 to decode
        header.hidden.append((binary, value))
    if not value.isascii() or 0x1B in value:
        header.texts.append((vr, value))
    elif vr in _NUMBER_STRINGS and (0x45 in value or 0x65 in value):
        header.exponents.append(value)


def _triage_items(header: EncodedHeader, items: Iterable[object], encodings: list[str]) -> None:
    for item in items:
        if isinstance(item, Dataset):
            for _path, tag, vr, raw in checks.leaf_values(item, "", encodings):
                _triage(header, tag, vr, raw)


def encode_instance_header(ds: Dataset, encodings: list[str]) -> EncodedHeader:
    """Preamble, file meta and the dataset (without pixel data still to be copied).

    Elements still in their encoded form and in the output's encoding are written back byte for
    byte; changed strings and numbers are encoded directly (``encoding.py``); only what remains
    (sequences, non-ASCII text, number strings) goes through pydicom's encoder. That is most of
    the engine's speed: pydicom's writer re-encodes every element.
    """
    meta = ds.file_meta
    syntax = _text(meta, 0x00020010)
    if syntax == BIG_ENDIAN:  # retired, rare: pydicom's writer, on the fully read dataset
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        header = EncodedHeader(out.getvalue(), little_endian=False)
        parsed = dcmread(io.BytesIO(header.data))
        for _path, tag, vr, raw in checks.leaf_values(parsed, "", encodings):
            _triage(header, tag, vr, raw)
        return header
    implicit = syntax == IMPLICIT
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    buffer.write(
        encode_file_meta(
            _text(meta, 0x00020002),
            _text(meta, 0x00020003),
            syntax,
            _text(meta, 0x00020012),
            _text(meta, 0x00020013),
        )
    )
    header = EncodedHeader(b"")
    charsets = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    for tag in sorted(ds.keys(), key=int):  # int keys: BaseTag compares in Python
        number = int(tag)
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            if (
                elem.is_little_endian
                and elem.is_implicit_VR == implicit
                and elem.value is not None
                and elem.length != 0xFFFFFFFF
                and (raw_vr := element_vr(elem)) != "SQ"
            ):
                value = elem.value
                buffer.write(element_header(number, raw_vr, len(value), implicit))
                buffer.write(value)
                _triage(header, number, raw_vr, value)
                continue
            elem = ds[tag]
        vr = element_vr(elem)
        encoded = None if vr == "SQ" else encode_element(number, vr, elem.value, implicit)
        if encoded is None:
            part = DicomBytesIO()
            part.is_little_endian = True
            part.is_implicit_VR = implicit
            write_data_element(part, elem, charsets)
            encoded = part.getvalue()
        start = buffer.tell()
        buffer.write(encoded)
        if number in PIXEL_TAGS:
            header.pixel_range = (start, buffer.tell())
        elif vr == "SQ":
            _triage_items(header, elem.value, encodings)
        else:
            _triage(header, number, vr, _value_of(encoded, vr, implicit))
    header.data = buffer.getvalue()
    return header


def _text(ds: Dataset, tag: int) -> str:
    """An ASCII value as stored (the engine writes the file meta encoded), else as pydicom has it."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \0")
    return str(value)


def _value_of(encoded: bytes, vr: str, implicit: bool) -> bytes:
    if implicit:
        return encoded[8:]
    return (
        encoded[12:]
        if len(encoded) >= 12
        and encoded[4:6]
        in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV")
        else encoded[8:]
    )


def _scanned_bytes(header: EncodedHeader) -> bytes:
    if header.pixel_range is None:
        return header.data
    start, end = header.pixel_range
    return header.data[:start] + b"\0" + header.data[end:]


def may_hold_identifiers(
    header: EncodedHeader, matcher: IdentifierMatcher, encodings: list[str]
) -> bool:
    """The prefilter: False only when no identifier can be in ``header``."""
    if not len(matcher):
        return False
    data = _scanned_bytes(header)
    if matcher.candidates_in_folded_bytes(fold_ascii_bytes(data)):
        return True
    if matcher.numbers and binary_number_hits(data, matcher.numbers, header.little_endian):
        return True
    if any(may_hide_identifiers(value, matcher, binary=binary) for binary, value in header.hidden):
        return True
    for vr, value in header.texts:
        for text in value_texts(value, vr, encodings):
            if matcher.any_in_folded(fold(text)):
                return True
    return any(number_string_hits(value, matcher.numbers) for value in header.exponents)


def output_identifier_hits(
    header: EncodedHeader, matcher: IdentifierMatcher, encodings: list[str]
) -> list[str]:
    """Tag paths of ``header`` that hold an identifier (the prefilter, then the exact check)."""
    if not may_hold_identifiers(header, matcher, encodings):
        return []
    parsed = dcmread(io.BytesIO(header.data), force=True)
    hits = checks.identifier_hits(parsed, matcher, encodings=encodings) + [
        f"file meta {path}" for path in checks.identifier_hits(parsed.file_meta, matcher)
    ]
    if parsed.preamble and parsed.preamble.strip(b"\0"):
        hits.append("preamble")
    return hits
