"""Rules for what a kept element may look like: its dictionary VR, and no foreign UID.

A kept element whose explicit VR is not its dictionary VR (a SeriesDescription written as OD, a
Rows as LO, a known private element as FD...) is relabelled with the dictionary VR when that only
names what the bytes already are (text under another text VR; UN or OB, bytes of no stated type,
that fit the dictionary VR, as PS3.5 lets a receiver reread UN), and removed otherwise: reading
bytes under another kind of VR would change what they say. Both are reported with the reason. Then the
identifier check reads it as what it is. Kept UI values that are not well-known DICOM UIDs (SOP
classes, transfer syntaxes, coding schemes, frames of reference... of pydicom's UID dictionary)
are replaced by the project's keyed UIDs, like every other UID.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from voxl_assets.deid.checks import element_vr
from voxl_assets.deid.encoding import LONG_LENGTH_VRS, encode_value

WELL_KNOWN_UIDS = frozenset(UID_dictionary)
TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
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
)
FIXED_SIZE = {
    "US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4, "AT": 4,
    "FD": 8, "OD": 8, "UV": 8, "SV": 8, "OV": 8,
}  # fmt: skip
# Bytes a text value may not hold: C0 controls other than TAB, LF, FF, CR and ESC.
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))
_VR_CACHE: dict[tuple[int, str | None], frozenset[str] | None] = {}


def dictionary_vrs(tag: int, creator: str | None) -> frozenset[str] | None:
    """The VRs the data dictionary allows for ``tag`` (None when it does not know the tag)."""
    key = (tag, creator)
    if key in _VR_CACHE:
        return _VR_CACHE[key]
    try:
        if tag >> 16 & 1:
            vr = private_dictionary_VR(tag, creator) if creator else None
        else:
            vr = dictionary_VR(tag)
    except KeyError:
        vr = None
    found = frozenset(vr.split(" or ")) if vr and vr != "NONE" else None
    _VR_CACHE[key] = found
    return found


def _fits(value: bytes, vr: str) -> bool:
    if vr in TEXT_VRS:
        return not value.rstrip(b"\0 ").translate(
            None, delete=bytes(range(32, 256)) + b"\t\n\f\r\x1b"
        )
    size = FIXED_SIZE.get(vr)
    if size is not None:
        return len(value) % size == 0
    return vr in ("OB", "UN")


def conform_vr(ds: Dataset, tag: BaseTag, creator: str | None) -> str | None:
    """Give a kept element its dictionary VR. Returns what was done (for the report: tag and
    VRs only) or None when nothing had to change; the element is gone when it says removed."""
    allowed = dictionary_vrs(int(tag), creator)
    if allowed is None:
        return None
    elem = ds.get_item(tag)
    vr = element_vr(elem)
    if vr in allowed:
        return None
    target = sorted(allowed)[0] if len(allowed) > 1 else next(iter(allowed))
    if "OB" in allowed:
        target = "OB"
    if target == "SQ":
        if vr == "UN":
            converted = ds[tag]  # pydicom reads an undefined-length UN with a known SQ tag
            if converted.VR == "SQ":
                return f"{tag} UN read as SQ"
        del ds[tag]
        return f"{tag} removed: a {vr} value is not a sequence"
    if vr == "SQ" or not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
        del ds[tag]
        return f"{tag} removed: a {vr} value cannot be {target}"
    value = elem.value
    untyped = vr in ("UN", "OB")
    same_kind = vr in TEXT_VRS and target in TEXT_VRS
    if not (untyped or same_kind) or not _fits(value, target):
        del ds[tag]
        return f"{tag} removed: a {vr} value cannot be {target}"
    if not elem.is_implicit_VR and target not in LONG_LENGTH_VRS and len(value) > 0xFFFE:
        del ds[tag]
        return f"{tag} removed: a {vr} value too long for {target}"
    ds[tag] = RawDataElement(
        elem.tag,
        target,
        len(value),
        value,
        elem.value_tell,
        elem.is_implicit_VR,
        elem.is_little_endian,
    )
    return f"{tag} {vr} relabelled {target}"


def replace_foreign_uids(ds: Dataset, tag: BaseTag, replace: Callable[[str], str]) -> None:
    """Replace every value of a kept UI element that is not a well-known UID."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not isinstance(raw, bytes):
            return
        values = [v.strip(" \0") for v in raw.decode("latin-1").split("\\")]
        if all(not v or v in WELL_KNOWN_UIDS for v in values):
            return
        new = [v if not v or v in WELL_KNOWN_UIDS else replace(v) for v in values]
        encoded = encode_value("UI", new if len(new) > 1 else new[0])
        if encoded is not None:
            ds[tag] = RawDataElement(
                elem.tag, "UI", len(encoded), encoded, 0, elem.is_implicit_VR, elem.is_little_endian
            )
            return
        elem = ds[tag]
    current = elem.value
    values = (
        [str(v) for v in current]
        if isinstance(current, list | tuple | MultiValue)
        else [str(current)]
    )
    replaced = [v if not v or v in WELL_KNOWN_UIDS else replace(v) for v in values]
    elem.value = replaced if len(replaced) > 1 else replaced[0]
