"""Finding 2 (VR tricks): identifiers carried by a kept element under any explicit VR (a text
attribute written as OD, FD, UN...; kept private elements of binary VRs) never leave: the engine
restores the dictionary VR (or removes the element, with a reason) and refuses what then holds an
identifier; the independent checker scans every VR's bytes of a written file."""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from tests.helpers.privacy import (
    BIRTH_DATE,
    MRN,
    NAME,
    crafted_output,
    deidentify,
    instance,
    leaked,
    put,
    save,
    siemens_private,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import DeidReport, OutputCheckError

VRS = [
    "OB", "OW", "OF", "OD", "OL", "OV", "FL", "FD", "SL", "UL", "SS", "US", "SV", "UV", "UN",
    "UT", "LT", "ST", "LO", "SH", "PN", "DS", "IS", "UC", "UR", "CS", "AE", "AS", "DA", "TM",
    "DT", "UI", "AT",
]  # fmt: skip
PAYLOADS = {
    "name": NAME.encode(),
    "mrn": f"MRN {MRN}".encode(),
    "birth date": f"DOB {BIRTH_DATE}".encode(),
    "name as UTF-16": NAME.replace("^", " ").encode("utf-16-le"),
}
SERIES_DESCRIPTION = 0x0008103E


def _outcome_is_safe(outcome: DeidReport | OutputCheckError, planted: str) -> None:
    if isinstance(outcome, OutputCheckError):
        return
    assert not leaked(outcome.output_files, [planted])


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("vr", VRS)
def test_a_kept_text_attribute_under_any_vr_never_leaks(
    tmp_path: Path, vr: str, payload: str
) -> None:
    ds = instance()
    put(ds, SERIES_DESCRIPTION, vr, PAYLOADS[payload])
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    planted = {"name": "ZEBEDEE", "mrn": MRN, "birth date": BIRTH_DATE}.get(payload, "ZEBEDEE")
    _outcome_is_safe(outcome, planted)
    if isinstance(outcome, DeidReport):  # kept elements carry their dictionary VR
        for path in outcome.output_files:
            elem = pydicom.dcmread(path).get_item(SERIES_DESCRIPTION)
            assert elem is None or elem.VR == "LO"


@pytest.mark.parametrize("offset", [0x0C, 0x0D, 0x0E, 0x27])
@pytest.mark.parametrize("vr", VRS)
def test_kept_private_elements_under_any_vr_never_leak(
    tmp_path: Path, vr: str, offset: int
) -> None:
    ds = instance()
    siemens_private(ds, offset, vr, NAME.encode())
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    _outcome_is_safe(outcome, "ZEBEDEE")


def test_a_vr_change_is_reported_with_its_reason(tmp_path: Path) -> None:
    ds = instance()
    put(ds, SERIES_DESCRIPTION, "UN", b"AXIAL 1.0")  # no stated type: pydicom rereads it as LO
    put(ds, 0x00081030, "OD", b"CHEST 1.0")  # StudyDescription under a float VR: removed
    put(ds, 0x00180060, "LO", b"120 ")  # KVP (DS) under another text VR: relabelled
    put(ds, 0x00280030, "FD", b"\0" * 16)  # PixelSpacing (DS) as binary: removed
    report = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(report, DeidReport), str(report)
    out = pydicom.dcmread(report.output_files[0])
    assert out.get_item(SERIES_DESCRIPTION).VR == "LO" and out.SeriesDescription == "AXIAL 1.0"
    assert out.get_item(0x00180060).VR == "DS" and out.KVP == 120
    assert 0x00081030 not in out and 0x00280030 not in out
    assert set(report.vr_changes) == {
        "(0008,1030) removed: a OD value cannot be LO",
        "(0018,0060) LO relabelled DS",
        "(0028,0030) removed: a FD value cannot be DS",
    }


@pytest.mark.parametrize("vr", VRS)
def test_checker_scans_every_vr_of_a_written_file(
    tmp_path: Path, vr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = instance()
    ds.SeriesDescription = "AXIAL"
    # Written as the engine writes kept private blocks, whatever VR the source gave.
    value = f"x {NAME} {MRN} {BIRTH_DATE}".encode()
    engine, path, identifiers = crafted_output(
        tmp_path, monkeypatch, lambda crafted: siemens_private(crafted, 0x0E, vr, value), ds
    )
    identifiers.add(MRN)
    identifiers.add_name(NAME)
    _allow, leaks = check_output([path], engine.policy, identifiers)
    assert not leaks.passed, vr
    assert "(0019,100E)" in leaks.summary()


FIXED_SIZE_TAGS = {
    "US": 0x00280010,  # Rows
    "SS": 0x00189219,  # TagAngleSecondAxis
    "OW": 0x00281201,  # RedPaletteColorLookupTableData
    "UL": 0x003A0010,  # NumberOfWaveformSamples
    "SL": 0x00186020,  # ReferencePixelX0
    "FL": 0x00089459,  # RecommendedDisplayFrameRateInFloat
    "OF": 0x00181638,  # VerticesOfThePolygonalOutline
    "OL": 0x00660040,  # LongPrimitivePointIndexList
    "AT": 0x00720060,  # SelectorATValue
    "FD": 0x00081163,  # TimeRange
    "OD": 0x003A032E,  # FilterLookupTableData
    "UV": 0x0008040C,  # FileOffsetInContainer
    "SV": 0x00720082,  # SelectorSVValue
    "OV": 0x00720081,  # SelectorOVValue
}
SIZES = {"US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4, "AT": 4}


@pytest.mark.parametrize("vr", list(FIXED_SIZE_TAGS))
def test_untyped_bytes_take_a_binary_vr_when_they_are_whole_values(vr: str) -> None:
    """UN bytes are relabelled with a binary dictionary VR when they hold whole values of it (one
    value, two), and removed when a value would be cut."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from voxl_assets.deid.kept_values import conform_vr

    tag = BaseTag(FIXED_SIZE_TAGS[vr])
    size = SIZES.get(vr, 8)
    for count in (1, 2):
        ds = Dataset()
        value = bytes(range(1, size * count + 1))
        ds[tag] = RawDataElement(tag, "UN", len(value), value, 0, False, True)
        assert conform_vr(ds, tag, None) == f"{tag} UN relabelled {vr}"
        relabelled = ds.get_item(tag)
        assert (relabelled.VR, relabelled.value) == (vr, value)
    cut = Dataset()
    half = size + size // 2  # a value and a half
    cut[tag] = RawDataElement(tag, "UN", half, bytes(half), 0, False, True)
    assert conform_vr(cut, tag, None) == f"{tag} removed: a UN value cannot be {vr}"
    assert tag not in cut


def test_untyped_bytes_take_ob_where_the_dictionary_allows_it() -> None:
    """EncapsulatedDocument is OB; a pixel-like element may be OB or OW: OB takes any bytes."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from voxl_assets.deid.kept_values import conform_vr

    for number in (0x00420011, 0x54001010):  # EncapsulatedDocument (OB); WaveformData (OB or OW)
        tag = BaseTag(number)
        ds = Dataset()
        ds[tag] = RawDataElement(tag, "UN", 3, b"%PD", 0, False, True)
        assert conform_vr(ds, tag, None) == f"{tag} UN relabelled OB", hex(number)


def _raw(tag: int, vr: str, value: bytes, implicit: bool = False) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)


def test_a_sequence_attribute_keeps_only_a_sequence() -> None:
    """A sequence attribute labelled UN (undefined length) is read as the sequence it is; under
    any other VR, or already converted to another VR, it is removed with the reason."""
    import struct

    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from voxl_assets.deid.kept_values import conform_vr

    tag = BaseTag(0x00081140)  # ReferencedImageSequence
    inner = struct.pack("<HHI", 0x0008, 0x1150, 6) + b"1.2.3\0"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
    un = Dataset()
    un[tag] = _raw(0x00081140, "UN", item)._replace(length=0xFFFFFFFF)
    assert conform_vr(un, tag, None) == "(0008,1140) UN read as SQ"
    assert un[tag].VR == "SQ" and un[tag].value[0].ReferencedSOPClassUID == "1.2.3"
    text = Dataset()
    text[tag] = _raw(0x00081140, "LO", b"AXIAL ")
    assert conform_vr(text, tag, None) == "(0008,1140) removed: a LO value is not a sequence"
    assert tag not in text


def test_a_converted_or_sequence_value_under_another_vr_is_removed() -> None:
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from voxl_assets.deid.kept_values import conform_vr

    tag = BaseTag(SERIES_DESCRIPTION)  # LO
    converted = Dataset()
    converted.add_new(tag, "OD", b"\0" * 8)
    assert conform_vr(converted, tag, None) == "(0008,103E) removed: a OD value cannot be LO"
    assert tag not in converted
    sequence = Dataset()
    sequence.add_new(tag, "SQ", [])
    assert conform_vr(sequence, tag, None) == "(0008,103E) removed: a SQ value cannot be LO"
    assert tag not in sequence


def test_a_relabelled_value_must_fit_the_length_field_of_its_new_vr() -> None:
    """LO has a 2-byte length in explicit VR: 65,534 bytes fit, more do not (implicit VR has 4)."""
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from voxl_assets.deid.kept_values import conform_vr

    tag = BaseTag(SERIES_DESCRIPTION)
    for size, implicit, change in [
        (0xFFFE, False, "(0008,103E) UN relabelled LO"),
        (0xFFFF, False, "(0008,103E) removed: a UN value too long for LO"),
        (0x10000, False, "(0008,103E) removed: a UN value too long for LO"),
        (0x10000, True, "(0008,103E) UN relabelled LO"),
    ]:
        ds = Dataset()
        ds[tag] = _raw(SERIES_DESCRIPTION, "UN", b"A" * size, implicit)
        assert conform_vr(ds, tag, None) == change, (size, implicit)
        assert (tag in ds) is ("relabelled" in change)


def test_foreign_uids_are_replaced_in_place_and_well_known_ones_kept() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag
    from pydicom.uid import CTImageStorage

    from voxl_assets.deid.kept_values import replace_foreign_uids

    def replace(uid: str) -> str:
        return "2.25." + str(len(uid))

    tag = BaseTag(0x00081150)  # ReferencedSOPClassUID
    absent = Dataset()
    replace_foreign_uids(absent, tag, replace)
    assert tag not in absent
    empty = Dataset()
    empty.add_new(tag, "UI", None)
    replace_foreign_uids(empty, tag, replace)
    assert empty[tag].value is None
    raw = Dataset()
    raw[tag] = _raw(0x00081150, "UI", f"{CTImageStorage}\\1.2.3.4\0".encode())
    replace_foreign_uids(raw, tag, replace)
    elem = raw.get_item(tag)
    assert isinstance(elem, RawDataElement)  # still encoded: written byte for byte
    assert elem.value == f"{CTImageStorage}\\2.25.7".encode()  # 32 bytes: no padding
    assert list(raw[tag].value) == [CTImageStorage, "2.25.7"]
    known = Dataset()
    known[tag] = as_read = _raw(0x00081150, "UI", f"{CTImageStorage} ".encode())
    replace_foreign_uids(known, tag, replace)
    assert known.get_item(tag) is as_read  # left as read, byte for byte
    converted = Dataset()
    converted.add_new(tag, "UI", ["1.2.3.4", CTImageStorage])
    replace_foreign_uids(converted, tag, replace)
    assert list(converted[tag].value) == ["2.25.7", CTImageStorage]
    single = Dataset()
    single.add_new(tag, "UI", "1.2.3.4.5")
    replace_foreign_uids(single, tag, replace)
    assert single[tag].value == "2.25.9"


def test_untyped_bytes_of_an_attribute_with_two_vrs_take_the_first_in_order() -> None:
    """US or SS: the same choice in every process (SS), whatever order a set iterates in."""
    from pydicom.dataset import Dataset

    from voxl_assets.deid.kept_values import conform_vr

    for number, vr in [(0x00280106, "SS"), (0x00283006, "OW")]:  # US or SS; US or OW
        tag = BaseTag(number)
        ds = Dataset()
        ds[tag] = _raw(number, "UN", b"\x01\x00")
        assert conform_vr(ds, tag, None) == f"{tag} UN relabelled {vr}"


def test_empty_values_among_kept_uids_stay_empty() -> None:
    from pydicom.dataset import Dataset

    from voxl_assets.deid.kept_values import replace_foreign_uids

    tag = BaseTag(0x00081150)
    ds = Dataset()
    ds.add_new(tag, "UI", ["", "1.2.3.4"])
    replace_foreign_uids(ds, tag, lambda uid: "2.25." + str(len(uid)))
    assert list(ds[tag].value) == ["", "2.25.7"]
    raw = Dataset()
    raw[tag] = _raw(0x00081150, "UI", b"\\1.2.3.4\0")
    replace_foreign_uids(raw, tag, lambda uid: "2.25." + str(len(uid)))
    assert raw.get_item(tag).value == b"\\2.25.7\0"
