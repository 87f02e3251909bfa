"""Text that compressed pixel data carries beside the image: JPEG comment and application segments.

A JPEG, JPEG-LS or JPEG 2000 codestream may hold free text ahead of the image data: comment
segments (COM, written by some capture software with the patient's name or number) and
application segments (APP0-APP15: JFIF, EXIF with its descriptions and owner names, ICC profiles,
Adobe). The engine copies pixel data byte for byte, so this text would leave with the study unless
it is read. This module finds those segments in each fragment that starts a codestream by walking
the marker structure up to the start of the image data, reading only the segment payloads (a few
bytes to a few kilobytes per frame); the image data itself is never read. A JPEG 2000 codestream
may also hold COM segments in each tile-part header (ISO/IEC 15444-1 A.4): those are read too,
the tile data between them skipped by each tile-part's length.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable

_JPEG_SOI = b"\xff\xd8"
_J2K_SOC = b"\xff\x4f"
_JPEG_SOS = 0xDA
_J2K_SOT = 0x90
_J2K_SOD = 0x93
_J2K_COM = 0x64
_TEXT_MARKERS = frozenset({0xFE, *range(0xE0, 0xF0)})  # COM, APP0-APP15
# TEM, RST0-7, SOI and EOI. An EOI before the image data ends no header a decoder would read, but
# what follows it still leaves with the file: the walk steps over it and reads on.
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xDA)})
# A frame's markers all come before its image data: tens of segments in practice (an ICC profile
# takes at most 255 APP2 segments). A walk that meets more without reaching the image data is
# refused rather than cut short (text past the cut would go unread) or left to run on through a
# malformed frame of tiny segments.
MAX_MARKERS = 1 << 16


class UncheckedSegments(ValueError):
    """A frame's marker segments run on past ``MAX_MARKERS`` without reaching its image data:
    its text cannot all be read, so the instance cannot be passed."""


def marker_segments(data: bytes | mmap.mmap, start: int = 0, end: int | None = None) -> list[bytes]:
    """The COM and APPn payloads of a JPEG/JPEG-LS frame, or the COM payloads of a JPEG 2000
    codestream (main and tile-part headers), that starts at ``start`` in ``data`` (a fragment
    ending at ``end``); [] for anything else. A header's walk stops at the image data (SOS, SOT,
    SOD) or at the first byte that is not a marker. Reads ``data`` in place (a memory-mapped
    file is not copied).

    Raises:
        UncheckedSegments: more than ``MAX_MARKERS`` markers before the image data."""
    end = len(data) if end is None else end
    head = data[start : start + 2]
    if head == _JPEG_SOI:
        return _walk(data, start + 2, end, _TEXT_MARKERS, _JPEG_SOS)[0]
    if head == _J2K_SOC:
        return _j2k_segments(data, start, end)
    return []


def _j2k_segments(data: bytes | mmap.mmap, start: int, end: int) -> list[bytes]:
    """COM payloads of the main header and of every tile-part header. A tile-part starts with
    SOT (12 bytes, with Psot: the tile-part's length from the SOT marker on, 0 for a last
    tile-part that runs to the end of the codestream); its header ends at SOD, where its data
    begins, which is skipped."""
    comments = frozenset({_J2K_COM})
    found, pos = _walk(data, start + 2, end, comments, _J2K_SOT)
    while pos is not None and pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos + 6)
        found += _walk(data, pos + 12, end, comments, _J2K_SOD)[0]
        if length < 14:  # 0: the last tile-part; shorter than SOT and SOD: malformed
            break
        pos += length
        if data[pos : pos + 2] != b"\xff\x90":  # EOC, or the fragment ends
            break
    return found


def _walk(
    data: bytes | mmap.mmap, pos: int, end: int, wanted: frozenset[int], stop: int
) -> tuple[list[bytes], int | None]:
    """The ``wanted`` payloads of the marker segments from ``pos`` on, and where the ``stop``
    marker is (None when the walk ended before one)."""
    found: list[bytes] = []
    markers = 0
    while pos + 2 <= end:
        markers += 1
        if markers > MAX_MARKERS:
            raise UncheckedSegments(f"more than {MAX_MARKERS} marker segments before the image")
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == stop:
            return found, pos
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if pos + 4 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            break
        if marker in wanted:
            found.append(bytes(data[pos + 4 : min(pos + 2 + length, end)]))
        pos += 2 + length
    return found, None


def segment_texts(payloads: Iterable[bytes]) -> list[str]:
    """Every reading of the payloads a person might see: single-byte, UTF-8 and UTF-16 (EXIF's
    XP fields are UTF-16)."""
    texts: list[str] = []
    for payload in payloads:
        texts.append(payload.decode("latin-1"))
        if not payload.isascii():
            texts.append(payload.decode("utf-8", "replace"))
        if b"\0" in payload:
            for codec in ("utf-16-le", "utf-16-be"):
                texts.append(payload[: len(payload) // 2 * 2].decode(codec, "replace"))
                texts.append(payload[1:][: (len(payload) - 1) // 2 * 2].decode(codec, "replace"))
    return texts
