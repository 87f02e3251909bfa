"""Encoding a de-identified header quickly: the file meta and the elements the operations changed.

pydicom's writer is general and slow (about 10 us per element). A de-identified header holds a few
dozen elements, most still in their encoded form (copied byte for byte by the engine) and a handful
of changed strings and numbers; these are encoded here directly. Anything unusual (sequences,
non-ASCII text, number strings, big endian) returns None and goes through pydicom instead.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.multival import MultiValue

LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_META_VERSION = b"\x00\x01"


def element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    """Tag, VR and length of one element, little endian."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", length)
    if vr in LONG_LENGTH_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length)
    return head + vr.encode() + struct.pack("<H", length)


def _values(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def encode_value(vr: str, value: Any) -> bytes | None:
    """The encoded, even-length value, or None when pydicom must encode it."""
    if value is None:
        return b""
    if vr in TEXT_VRS:
        parts = _values(value)
        if not all(isinstance(p, str) for p in parts):
            return None  # PersonName, numbers in text VRs...: pydicom knows their forms
        text = "\\".join(parts)
        if not text.isascii():
            return None  # the character set decides the bytes
        data = text.encode("ascii")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data
    number_format = _NUMBER_FORMATS.get(vr)
    if number_format is not None:
        parts = _values(value)
        if not all(isinstance(p, int | float) for p in parts):
            return None
        return struct.pack(f"<{len(parts)}{number_format}", *parts)
    return None


def encode_element(tag: int, vr: str, value: Any, implicit: bool) -> bytes | None:
    data = encode_value(vr, value)
    if data is None:
        return None
    return element_header(tag, vr, len(data), implicit) + data


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Preamble, ``DICM`` and the file meta group (always explicit VR little endian), as pydicom's
    ``write_file_meta_info(enforce_standard=True)`` writes it."""
    elements = [
        (0x00020001, "OB", _META_VERSION),
        (0x00020002, "UI", sop_class_uid),
        (0x00020003, "UI", sop_instance_uid),
        (0x00020010, "UI", transfer_syntax_uid),
        (0x00020012, "UI", implementation_class_uid),
        (0x00020013, "SH", implementation_version_name),
    ]
    body = bytearray()
    for tag, vr, value in elements:
        if isinstance(value, bytes):
            data = value
        else:
            encoded = encode_value(vr, value)
            if encoded is None:
                raise ValueError(f"file meta ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not ASCII")
            data = encoded
        body += element_header(tag, vr, len(data), implicit=False) + data
    group_length = element_header(0x00020000, "UL", 4, implicit=False) + struct.pack(
        "<I", len(body)
    )
    return b"\0" * 128 + b"DICM" + group_length + bytes(body)
