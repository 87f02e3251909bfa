"""The first pass over a study: each instance's structure and identifying values, from its bytes.

Reading a header with pydicom costs more than de-identifying it, and the first pass only needs a
few values, so this walks the element structure directly (memory-mapped, values skipped, pixel
data never read) and checks on the way that the file is whole: every element inside the file,
sequences and items closed, pixel data as long as the image needs. What it finds wrong is the
reason the instance is refused; what it collects goes into the study's identifiers before any
instance is de-identified (finding 6 of issue 13: a name only a later instance carries).
"""

from __future__ import annotations

import contextlib
import mmap
import struct
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.uid import UID_dictionary

from voxl_assets.deid.embedded_text import UncheckedSegments, marker_segments
from voxl_assets.deid.identifiers import StudyIdentifiers

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
KNOWN_VRS = LONG_VRS | frozenset(
    vr.encode()
    for vr in [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FL",
        "FD",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "SL",
        "SS",
        "ST",
        "TM",
        "UI",
        "UL",
        "US",
    ]
)
ID_TAGS = frozenset({0x00100020, 0x00101000, 0x00080050, 0x00200010, 0x00101090})
NAME_TAGS = frozenset({0x00100010, 0x00101001, 0x00101005, 0x00101060, 0x00102297})
BIRTH_DATE_TAG = 0x00100030
CHARSET_TAG = 0x00080005
SOP_INSTANCE_UID = 0x00080018
SPECTROSCOPY_DATA = 0x56000020
IMAGE_TAGS = {
    0x00280002: "samples",
    0x00280004: "photometric",
    0x00280008: "frames",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits",
}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32
WELL_KNOWN_UIDS = frozenset(UID_dictionary)


class Refusal(StrEnum):
    """Why an instance is not written. Counted per study; shown to users; never identifying."""

    UNREADABLE = "not a readable DICOM file"
    TRUNCATED_HEADER = "file ends inside its header"
    TRUNCATED_PIXEL_DATA = "pixel data shorter than the image needs"
    BROKEN_PIXEL_DATA = "encapsulated pixel data not closed"
    NO_PIXEL_DATA = "image without pixel data"
    NO_IMAGE_GEOMETRY = "pixel data without Rows, Columns or BitsAllocated"
    BROKEN_STRUCTURE = "malformed element structure"
    MISLABELLED_SYNTAX = "encoded unlike its transfer syntax (implicit as explicit VR or back)"
    NO_SOP_INSTANCE_UID = "no SOP Instance UID"
    DUPLICATE_SOP_INSTANCE_UID = "SOP Instance UID of another instance of the study"
    UNCHECKED_PIXEL_TEXT = "compressed frame with too many marker segments to read its text"


class _Broken(Exception):
    def __init__(self, reason: Refusal) -> None:
        self.reason = reason


@dataclass
class InstanceScan:
    """What the first pass learnt about one file (small: kept for every file of a study)."""

    syntax: str = ""
    refusal: Refusal | None = None
    sop_instance_uid: str = field(default="", repr=False)  # a source UID: never printed
    pixel_tail: tuple[int, int] | None = None  # (offset, length) to copy byte for byte
    needs_full_read: bool = False  # big endian, deflated, or elements after the pixel data
    values: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    charset: bytes = b""
    # Text that encapsulated pixel data carries (JPEG COM/APPn, JPEG 2000 COM): checked in pass 2.
    embedded: list[bytes] = field(default_factory=list, repr=False)

    def add_identifiers(self, identifiers: StudyIdentifiers) -> None:
        encodings = _encodings(self.charset)
        for kind, raw in self.values:
            for text in _decodings(raw, encodings, kind == "name"):
                for value in text.split("\\"):
                    value = value.strip(" \0")
                    if not value:
                        continue
                    if kind == "name":
                        identifiers.add_name(value)
                    elif kind == "birth date":
                        identifiers.add_birth_date(value)
                    elif kind == "uid":
                        if value not in WELL_KNOWN_UIDS:
                            identifiers.add_uid(value)
                    else:
                        identifiers.add(value)


_ENCODINGS: dict[bytes, list[str]] = {}


def _encodings(charset: bytes) -> list[str]:
    found = _ENCODINGS.get(charset)
    if found is None:
        terms = [t.strip(" \0") for t in charset.decode("latin-1").split("\\")] or [""]
        try:
            found = list(dict.fromkeys(convert_encodings(terms)))
        except (LookupError, ValueError):
            found = ["iso8859"]
        _ENCODINGS[charset] = found
    return found


def _decodings(raw: bytes, encodings: list[str], name: bool) -> list[str]:
    """``raw`` as the instance's character sets read it, and as UTF-8 when that differs (real
    archives mislabel UTF-8 as Latin-1)."""
    texts = []
    if raw.isascii() and 0x1B not in raw:
        return [raw.decode("ascii")]
    try:
        texts.append(decode_bytes(raw, encodings, {0x5E, 0x3D} if name else set()))
    except (LookupError, ValueError):
        texts.append(raw.decode("latin-1"))
    for codec in encodings[1:]:  # a code extension used without its escape sequence
        try:
            texts.append(raw.decode(codec))
        except (LookupError, UnicodeDecodeError):
            continue
    with contextlib.suppress(UnicodeDecodeError):
        texts.append(raw.decode("utf-8"))
    return list(dict.fromkeys(texts))


_VR_CACHE: dict[int, bytes] = {}


def _implicit_vr(tag: int) -> bytes:
    vr = _VR_CACHE.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag).encode()[:2] if tag >> 16 & 1 == 0 else b"UN"
        except KeyError:
            vr = b"UN"
        _VR_CACHE[tag] = vr
    return vr


class _Walker:
    def __init__(self, data: bytes | mmap.mmap, explicit: bool, little: bool) -> None:
        self.data = data
        self.explicit = explicit
        self.prefix = "<" if little else ">"
        self.values: list[tuple[str, bytes]] = []
        self.image: dict[str, bytes] = {}
        self.charset = b""
        self.sop_instance_uid = b""
        self.pixel: tuple[int, int, int] | None = None  # (tag, element offset, end)
        self.after_pixel = False
        self.spectroscopy = False  # MR spectroscopy: its data is SpectroscopyData, no pixels
        self.embedded: list[bytes] = []  # JPEG comment and application segments

    def header(self, pos: int, end: int) -> tuple[int, bytes, int, int]:
        """(tag, VR, value length, value offset) of the element at ``pos``."""
        if pos + 8 > end:
            raise _Broken(Refusal.TRUNCATED_HEADER)
        group, element = struct.unpack_from(self.prefix + "HH", self.data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:  # items and delimiters: no VR
            (length,) = struct.unpack_from(self.prefix + "I", self.data, pos + 4)
            return tag, b"", length, pos + 8
        if not self.explicit:
            (length,) = struct.unpack_from(self.prefix + "I", self.data, pos + 4)
            return tag, _implicit_vr(tag), length, pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in LONG_VRS:
            if pos + 12 > end:
                raise _Broken(Refusal.TRUNCATED_HEADER)
            (length,) = struct.unpack_from(self.prefix + "I", self.data, pos + 8)
            return tag, vr, length, pos + 12
        (length,) = struct.unpack_from(self.prefix + "H", self.data, pos + 6)
        return tag, vr, length, pos + 8

    def dataset(self, pos: int, end: int, depth: int, item: bool) -> int:
        """Walk the elements from ``pos``; returns where the dataset ends."""
        if depth > _MAX_DEPTH:
            raise _Broken(Refusal.BROKEN_STRUCTURE)
        while pos < end:
            tag, vr, length, start = self.header(pos, end)
            if tag == _ITEM_END and item:
                return start
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise _Broken(Refusal.BROKEN_STRUCTURE)
            if depth == 0 and tag in PIXEL_TAGS:
                pos = self.pixel_data(tag, pos, start, length, end)
                continue
            if depth == 0 and tag == 0 and not self.data[pos:end].strip(b"\0"):
                return end  # zero padding after the last element
            if depth == 0 and tag == SPECTROSCOPY_DATA:
                self.spectroscopy = True
            if depth == 0 and self.pixel is not None:
                self.after_pixel = True  # elements after the pixel data need the full read
            if length == 0xFFFFFFFF:
                if vr not in (b"SQ", b"UN"):
                    raise _Broken(Refusal.BROKEN_STRUCTURE)
                explicit = self.explicit
                self.explicit = explicit and vr != b"UN"  # UN items are implicit VR (PS3.5 6.2.2)
                try:
                    pos = self.sequence(start, end, None, depth)
                finally:
                    self.explicit = explicit
                continue
            if start + length > end:
                raise _Broken(Refusal.TRUNCATED_HEADER)
            if vr == b"SQ":
                self.sequence(start, end, start + length, depth)
            else:
                self.collect(tag, vr, start, length, depth)
            pos = start + length
        if item:
            raise _Broken(Refusal.TRUNCATED_HEADER)
        return pos

    def sequence(self, pos: int, end: int, stop: int | None, depth: int) -> int:
        limit = end if stop is None else stop
        while True:
            if stop is not None and pos >= stop:
                return pos
            tag, _vr, length, start = self.header(pos, limit)
            if tag == _SEQUENCE_END and stop is None:
                return start
            if tag != _ITEM:
                raise _Broken(Refusal.BROKEN_STRUCTURE)
            if length == 0xFFFFFFFF:
                pos = self.dataset(start, limit, depth + 1, item=True)
            else:
                if start + length > limit:
                    raise _Broken(Refusal.TRUNCATED_HEADER)
                self.dataset(start, start + length, depth + 1, item=False)
                pos = start + length

    def collect(self, tag: int, vr: bytes, start: int, length: int, depth: int) -> None:
        if vr == b"UI" or tag in ID_TAGS or tag in NAME_TAGS or tag == BIRTH_DATE_TAG:
            raw = bytes(self.data[start : start + length])
            if tag in NAME_TAGS:
                self.values.append(("name", raw))
            elif tag == BIRTH_DATE_TAG:
                self.values.append(("birth date", raw))
            elif tag in ID_TAGS:
                self.values.append(("identifier", raw))
            else:
                self.values.append(("uid", raw))
            if depth == 0 and tag == SOP_INSTANCE_UID:
                self.sop_instance_uid = raw
        elif depth == 0 and tag in IMAGE_TAGS:
            self.image[IMAGE_TAGS[tag]] = bytes(self.data[start : start + length])
        elif depth == 0 and tag == CHARSET_TAG:
            self.charset = bytes(self.data[start : start + length])

    def pixel_data(self, tag: int, pos: int, start: int, length: int, end: int) -> int:
        if length != 0xFFFFFFFF:
            if start + length > end:
                raise _Broken(Refusal.TRUNCATED_PIXEL_DATA)
            self.check_native_length(tag, length)
            self.pixel = (tag, pos, start + length)
            return start + length
        cursor, fragments = start, 0
        while True:
            if cursor + 8 > end:
                raise _Broken(Refusal.BROKEN_PIXEL_DATA)
            group, element, size = struct.unpack_from(self.prefix + "HHI", self.data, cursor)
            item = group << 16 | element
            if item == _SEQUENCE_END:
                cursor += 8
                break
            if item != _ITEM or size == 0xFFFFFFFF or cursor + 8 + size > end:
                raise _Broken(Refusal.BROKEN_PIXEL_DATA)
            if fragments:  # the first item is the offset table
                try:
                    self.embedded += marker_segments(self.data, cursor + 8, cursor + 8 + size)
                except UncheckedSegments:
                    raise _Broken(Refusal.UNCHECKED_PIXEL_TEXT) from None
            fragments += 1
            cursor += 8 + size
        if fragments < 2:  # the offset table and at least one fragment
            raise _Broken(Refusal.BROKEN_PIXEL_DATA)
        self.pixel = (tag, pos, cursor)
        return cursor

    def _number(self, key: str, default: int | None = None) -> int | None:
        raw = self.image.get(key)
        if raw is None:
            return default
        if key == "frames":  # IS: text
            text = raw.strip(b" \0")
            if not text:
                return default
            try:
                return int(float(text.split(b"\\")[0]))
            except ValueError:
                return None
        if len(raw) < 2:  # US: binary (32 rows is b" \0": nothing to strip)
            return default
        return int(struct.unpack_from(self.prefix + "H", raw)[0])

    def check_native_length(self, tag: int, length: int) -> None:
        rows, columns = self._number("rows"), self._number("columns")
        bits = self._number("bits")
        if not rows or not columns or not bits:
            raise _Broken(Refusal.NO_IMAGE_GEOMETRY)
        samples = self._number("samples", 1) or 1
        frames = self._number("frames", 1) or 1
        photometric = self.image.get("photometric", b"").strip(b" \0")
        per_pixel = 2 if photometric in (b"YBR_FULL_422", b"YBR_PARTIAL_422") else samples
        needed_bits = rows * columns * per_pixel * frames * bits
        if length < (needed_bits + 7) // 8:
            raise _Broken(Refusal.TRUNCATED_PIXEL_DATA)


def scan_instance(path: Path) -> InstanceScan:
    """Structure and identifying values of ``path``, reading no pixel data."""
    scan = InstanceScan()
    try:
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            if len(data) < 132:
                scan.refusal = Refusal.UNREADABLE
                return scan
            _scan(data, len(data), scan)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        scan.refusal = Refusal.UNREADABLE
    return scan


def _scan(data: mmap.mmap, size: int, scan: InstanceScan) -> None:
    if data[128:132] != b"DICM":
        scan.refusal = Refusal.UNREADABLE
        return
    meta = _Walker(data, explicit=True, little=True)
    walker = meta
    try:
        pos = 132
        while pos + 8 <= size:
            (group,) = struct.unpack_from("<H", data, pos)
            if group != 0x0002:
                break
            tag, vr, length, start = meta.header(pos, size)
            if length == 0xFFFFFFFF or start + length > size:
                raise _Broken(Refusal.TRUNCATED_HEADER)
            if tag == 0x00020010:
                scan.syntax = bytes(data[start : start + length]).strip(b" \0").decode("latin-1")
            elif tag == 0x00020003:  # MediaStorageSOPInstanceUID (not the implementation's)
                meta.collect(tag, vr, start, length, 1)
            pos = start + length
        syntax = scan.syntax
        body: bytes | mmap.mmap = data
        end = size
        if syntax == DEFLATED:
            try:
                body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[pos:])
            except zlib.error:
                raise _Broken(Refusal.UNREADABLE) from None
            pos, end = 0, len(body)
            scan.needs_full_read = True
        explicit = syntax != IMPLICIT
        first_vr = bytes(body[pos + 4 : pos + 6]) if pos + 6 <= end else b""
        if pos + 6 <= end and explicit != (first_vr in KNOWN_VRS):
            # pydicom reads such a file as its bytes say, but it cannot be written back as its
            # transfer syntax says: refused rather than passed on broken.
            raise _Broken(Refusal.MISLABELLED_SYNTAX)
        walker = _Walker(body, explicit=explicit, little=syntax != BIG_ENDIAN)
        walker.values = meta.values
        walker.dataset(pos, end, 0, item=False)
    except _Broken as broken:
        scan.refusal = broken.reason
        scan.values = walker.values  # what was read still names the study's identifiers
        scan.charset = walker.charset
        return
    scan.values = walker.values
    scan.charset = walker.charset
    scan.embedded = walker.embedded
    scan.sop_instance_uid = walker.sop_instance_uid.strip(b" \0").decode("latin-1")
    if walker.pixel is None:
        if "rows" in walker.image and "columns" in walker.image and not walker.spectroscopy:
            scan.refusal = Refusal.NO_PIXEL_DATA
        scan.pixel_tail = (end, 0)
    else:
        _tag, offset, pixel_end = walker.pixel
        scan.pixel_tail = (offset, pixel_end - offset)
    if syntax in (BIG_ENDIAN, DEFLATED) or walker.after_pixel:
        scan.needs_full_read = True
        scan.pixel_tail = None
