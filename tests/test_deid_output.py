"""The engine's in-memory check (``voxl_assets/deid/output.py``): the header it encodes is the one
pydicom would write (elements copied byte for byte where they can be, re-encoded where they must),
and its prefilter, which lets the exact check be skipped only when no identifier can be in the
header, looks at every form an identifier may take there: ASCII bytes, other character sets and
ISO 2022 escapes, numbers as binary and in exponent notation, and text hidden as base64."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from tests.helpers.identifiers import matcher_for
from tests.helpers.privacy import hostile_spec, instance, put
from voxl_assets.deid.checks import instance_encodings
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.output import encode_instance_header, output_identifier_hits
from voxl_assets.identifier_rules import IdentifierMatcher

MRN = "47000020"  # ends in a zero: 4.700002E7 holds none of its digit runs


def _matcher(*names: str) -> IdentifierMatcher:
    return matcher_for(MRN, *names)


def _clean(charset: str | None = None) -> Dataset:
    """An instance without identifiers (those the test plants are the only ones)."""
    ds = instance(hostile_spec(patient_id="PSEUDO1", patient_name="ANON^X", accession_number="A1"))
    for keyword in ("PatientBirthDate", "InstitutionName", "ReferringPhysicianName"):
        if keyword in ds:
            del ds[keyword]
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def _rich(ds: Dataset) -> Dataset:
    """Elements of most kinds: numbers, number strings, text, tags, long VRs, a private block,
    and a sequence with items holding numbers and a nested sequence."""
    ds.Rows, ds.Columns = 2, 2
    ds.add_new(0x00181020, "LO", ["V1", "V2"])  # SoftwareVersions, multi-valued
    ds.SliceThickness = "1.25"
    ds.SeriesNumber = "7"
    ds.add_new(0x00280106, "US", 3)  # SmallestImagePixelValue
    ds.add_new(0x00189087, "FD", 1000.5)  # DiffusionBValue
    ds.add_new(0x00209165, "AT", [0x00100020, 0x00080050])  # DimensionIndexPointer
    ds.add_new(0x00204000, "LT", "line one\r\nline two")  # ImageComments
    ds.add_new(0x00291010, "OB", bytes(range(40)))  # a private block's binary value
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    inner = Dataset()
    inner.add_new(0x00081150, "UI", "1.2.3.4")  # ReferencedSOPClassUID
    inner.add_new(0x00281050, "DS", ["40", "400"])  # WindowCenter
    item = Dataset()
    item.add_new(0x00081160, "IS", [1, 2])  # ReferencedFrameNumber
    item.add_new(0x00189004, "CS", "RESEARCH")  # ContentQualification
    item.add_new(0x00081199, "SQ", Sequence([inner]))  # ReferencedSOPSequence
    item.add_new(0x00280010, "US", 512)
    ds.add_new(0x00081140, "SQ", Sequence([item, Dataset()]))  # ReferencedImageSequence
    return ds


def _saved(ds: Dataset, path: Path, syntax: str) -> Dataset:
    """``ds`` written in ``syntax`` and read back as the engine reads it (raw elements)."""
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    return dcmread(path)


def _elements(ds: Dataset) -> list[tuple[int, str, object]]:
    found = []
    for elem in ds.iterall():
        value = elem.value
        if elem.VR == "SQ":
            value = len(value)
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = [str(v) for v in value]
        else:
            value = value if isinstance(value, (bytes, int, float)) else str(value)
        found.append((int(elem.tag), elem.VR, value))
    return found


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("charset", [None, "ISO_IR 192"])
def test_the_encoded_header_is_the_dataset_as_pydicom_writes_it(
    tmp_path: Path, syntax: str, charset: str | None
) -> None:
    """Raw elements copied, changed ones encoded directly, the rest (sequences, non-ASCII text)
    by pydicom in the instance's character set: read back, every element is the same."""
    source = _saved(_rich(_clean(charset)), tmp_path / "in.dcm", syntax)
    source.PatientName = "ANON^Ÿvonne" if charset else "ANON^Y"  # changed: no longer raw
    source.InstitutionName = "Hôpital Ñ" if charset else "Hospital"
    source.StudyDescription = "CT"
    source.add_new(0x00280107, "US", 4095)  # a new number
    pixels = source.PixelData  # read (converted), as for ultrasound blanking
    encodings = instance_encodings(source)
    header = encode_instance_header(source, encodings)
    assert header.little_endian is (syntax != ExplicitVRBigEndian)
    ours = dcmread(io.BytesIO(header.data))
    expected = io.BytesIO()
    source.save_as(expected, enforce_file_format=True)
    theirs = dcmread(io.BytesIO(expected.getvalue()))
    assert ours.file_meta.TransferSyntaxUID == syntax
    assert ours.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert _elements(ours.file_meta) == _elements(theirs.file_meta)
    assert _elements(ours) == _elements(theirs)
    assert str(ours.PatientName) == str(source.PatientName)
    assert ours.InstitutionName == source.InstitutionName
    if syntax != ExplicitVRBigEndian:
        assert header.pixel_range is not None
        start, end = header.pixel_range
        assert header.data[end - len(pixels) : end] == pixels
        assert header.data[start : start + 4] == b"\xe0\x7f\x10\x00"
        assert end == len(header.data)


def _hits(ds: Dataset, *names: str) -> list[str]:
    encodings = instance_encodings(ds)
    return output_identifier_hits(
        encode_instance_header(ds, encodings), _matcher(*names), encodings
    )


def _raw(ds: Dataset, tmp_path: Path, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    return _saved(ds, tmp_path / "planted.dcm", syntax)


def test_a_clean_header_has_no_hits(tmp_path: Path) -> None:
    assert _hits(_raw(_rich(_clean()), tmp_path), "Иванов^Пётр") == []


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("raw", [True, False])
def test_a_name_in_another_character_set_is_found(tmp_path: Path, syntax: str, raw: bool) -> None:
    """Cyrillic in ISO 8859-5: no ASCII byte of it spells the name (nor its romanisation)."""
    ds = _clean("ISO_IR 144")
    if raw:  # copied byte for byte
        ds.add_new(0x00324000, "LT", "Пациент Иванов, повторно")  # StudyComments
        ds = _raw(ds, tmp_path, syntax)
    else:  # set by the engine: encoded by pydicom
        ds = _raw(ds, tmp_path, syntax)
        ds.add_new(0x00324000, "LT", "Пациент Иванов, повторно")
    assert _hits(ds, "Иванов^Пётр") == ["(0032,4000)"]


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_a_name_at_the_start_of_a_long_text_value_is_found(tmp_path: Path, syntax: str) -> None:
    """UT has a 4-byte length in explicit VR: the value the prefilter decodes starts after it."""
    ds = _raw(_clean("ISO_IR 144"), tmp_path, syntax)
    ds.add_new(0x0040A160, "UT", "Иванов, повторно")  # TextValue, set by the engine
    assert _hits(ds, "Иванов^Пётр") == ["(0040,A160)"]


def test_a_name_in_iso_2022_escapes_is_found(tmp_path: Path) -> None:
    """JIS X 0208 after ESC $ B is 7-bit: every byte is ASCII, but it spells no ASCII name."""
    ds = _clean("\\ISO 2022 IR 87")
    ds.add_new(0x00324000, "LT", "患者 山田")
    ds = _raw(ds, tmp_path)
    value = ds.get_item(0x00324000).value
    assert value.isascii() and b"\x1b$B" in value
    assert _hits(ds, "山田^太郎") == ["(0032,4000)"]


def test_a_name_in_a_sequence_item_in_another_character_set_is_found(tmp_path: Path) -> None:
    ds = _clean("ISO_IR 144")
    item = Dataset()
    item.add_new(0x00324000, "LT", "Иванов")
    ds.add_new(0x00081140, "SQ", Sequence([Dataset(), item]))
    hits = _hits(_raw(ds, tmp_path), "Иванов^Пётр")
    assert len(hits) == 1 and "(0032,4000)" in hits[0]


@pytest.mark.parametrize("value", ["4.700002E7", "4.700002e7", "1\\4.700002E+07"])
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("raw", [True, False])
def test_an_mrn_in_exponent_notation_is_found(
    tmp_path: Path, value: str, syntax: str, raw: bool
) -> None:
    """A DS as 4.700002E7 is 47000020: its digits (4700002) do not hold the MRN's."""
    ds = _clean()
    if raw:
        ds.add_new(0x00180050, "DS", value)  # SliceThickness
        ds = _raw(ds, tmp_path, syntax)
    else:
        ds = _raw(ds, tmp_path, syntax)
        ds.add_new(0x00180050, "DS", value)
    assert _hits(ds) == ["(0018,0050)"]


def test_an_mrn_as_a_binary_number_is_found_in_either_byte_order(tmp_path: Path) -> None:
    for syntax, order in ((ExplicitVRLittleEndian, "<"), (ExplicitVRBigEndian, ">")):
        ds = _clean()
        ds.add_new(0x00291010, "OB", b"\x01\x02" + struct.pack(f"{order}I", int(MRN)) + b"\0\0")
        ds.add_new(0x00290010, "LO", "ACME 1.0")
        assert _hits(_raw(ds, tmp_path, syntax)) == ["(0029,1010)"], syntax


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("LO", b"ref " + base64.b64encode(f"MRN {MRN}".encode()) + b" "),
        ("OB", f"MRN {MRN} ".encode("utf-16-le")),
    ],
)
def test_an_mrn_hidden_as_base64_or_utf16_is_found(tmp_path: Path, vr: str, value: bytes) -> None:
    ds = _clean()
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291010, vr, value)
    assert _hits(_raw(ds, tmp_path)) == ["(0029,1010)"]


def test_an_identifier_after_the_pixel_data_is_found(tmp_path: Path) -> None:
    """Read whole (the slow path), the pixel data is in the header; only it is left out of the
    prefilter's bytes, not the elements after it."""
    ds = _clean()
    ds.add_new(0x7FE10010, "LO", "ACME 1.0")
    ds.add_new(0x7FE11010, "LO", f"MRN {MRN}")
    hits = _hits(_raw(ds, tmp_path))
    assert len(hits) == 1 and "(7FE1,1010)" in hits[0]


def test_without_identifiers_there_is_nothing_to_find(tmp_path: Path) -> None:
    source = _raw(_clean(), tmp_path)
    header = encode_instance_header(source, instance_encodings(source))
    header.data = b"II*\0 TIFF".ljust(128, b"\0") + header.data[128:]  # not even a preamble
    assert output_identifier_hits(header, StudyIdentifiers().matcher(), []) == []


def test_kept_values_are_copied_byte_for_byte(tmp_path: Path) -> None:
    """An element still as read is written back as read, even where pydicom's reading would
    change it (bytes invalid in the declared character set, a number string's own spelling)."""
    ds = _raw(_clean("ISO_IR 192"), tmp_path)
    odd = {
        0x00081030: ("LO", b"caf\xe9 noir "),  # StudyDescription: Latin-1 in a UTF-8 instance
        0x00180050: ("DS", b"+1.2500E+00 "),  # SliceThickness
        0x00200011: ("IS", b"0007"),  # SeriesNumber
    }
    path = tmp_path / "odd.dcm"
    for tag, (vr, value) in odd.items():
        put(ds, tag, vr, value)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    for tag, (vr, value) in odd.items():  # pydicom wrote them as given: the source's bytes
        assert struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode() in data
        assert value in data
    source = dcmread(path)
    header = encode_instance_header(source, instance_encodings(source))
    for tag, (vr, value) in odd.items():
        element = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
        element += struct.pack("<H", len(value)) + value
        assert element in header.data, hex(tag)


def test_a_file_meta_element_left_out_is_written_empty(tmp_path: Path) -> None:
    source = _raw(_clean(), tmp_path)
    del source.file_meta[0x00020013]  # ImplementationVersionName
    header = encode_instance_header(source, instance_encodings(source))
    written = dcmread(io.BytesIO(header.data))
    assert written.file_meta.get("ImplementationVersionName", "") == ""
    assert written.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID


def test_an_identifier_in_the_preamble_is_found(tmp_path: Path) -> None:
    """The engine writes a zeroed preamble; the check would still see one that is not."""
    source = _raw(_clean(), tmp_path)
    header = encode_instance_header(source, instance_encodings(source))
    header.data = f"II* MRN {MRN}".encode().ljust(128, b"\0") + header.data[128:]
    assert output_identifier_hits(header, _matcher(), []) == ["preamble"]


@pytest.mark.parametrize(("tag", "vr"), [(0x7FE00008, "OF"), (0x7FE00009, "OD")])
def test_float_pixel_data_is_left_out_of_the_prefilter_like_pixel_data(
    tmp_path: Path, tag: int, vr: str
) -> None:
    source = _raw(_clean(), tmp_path)
    del source[0x7FE00010]
    pixels = struct.pack("<4d", *range(4)) if vr == "OD" else struct.pack("<4f", *range(4))
    source.add_new(tag, vr, pixels)
    header = encode_instance_header(source, instance_encodings(source))
    assert header.pixel_range is not None
    start, end = header.pixel_range
    assert header.data[start : start + 4] == struct.pack("<HH", 0x7FE0, tag & 0xFFFF)
    assert header.data[end - len(pixels) : end] == pixels


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_the_file_meta_is_complete_whatever_the_dataset_carried(
    tmp_path: Path, syntax: str
) -> None:
    """The engine gives the dataset a file meta of five elements; the header written has the
    group length and the version too, as PS3.10 requires, in every transfer syntax."""
    source = _saved(_clean(), tmp_path / "in.dcm", syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = source.SOPClassUID
    meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "VOXL"
    source.file_meta = meta
    header = encode_instance_header(source, instance_encodings(source))
    assert header.data[:132] == b"\0" * 128 + b"DICM"
    written = dcmread(io.BytesIO(header.data))
    assert written.file_meta.FileMetaInformationVersion == b"\0\1"
    assert written.file_meta.FileMetaInformationGroupLength > 0
    assert written.file_meta.MediaStorageSOPClassUID == source.SOPClassUID
    assert written.file_meta.ImplementationVersionName == "VOXL"


def test_encapsulated_pixel_data_read_whole_stays_encapsulated(tmp_path: Path) -> None:
    """Pixel data read with the header and not touched (a big-endian or deflated file, or
    elements after the pixel data) is still encapsulated when written: undefined length, the
    offset table and each fragment as they were."""
    ds = _clean()
    frames = [b"\xff\xd8\xff\xfe\x00\x04ok\xff\xd9", b"\xff\xd8\xff\xd9"]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    source = dcmread(path)
    pixels = source.get_item(0x7FE00010)
    assert isinstance(pixels, RawDataElement) and pixels.length == 0xFFFFFFFF  # still raw
    header = encode_instance_header(source, instance_encodings(source))
    written = dcmread(io.BytesIO(header.data))
    assert written["PixelData"].is_undefined_length
    assert list(generate_frames(written.PixelData, number_of_frames=2)) == frames


def test_a_name_every_reading_of_a_value_holds_is_found(tmp_path: Path) -> None:
    """The name in UTF-8 and again in Latin-1 (text pasted from two systems): every reading
    of the value, in any codec, holds it once."""
    ds = _clean("ISO_IR 100")
    put(ds, 0x00324000, "LT", "Müller".encode() + b" / " + "Müller".encode("latin-1"))
    assert _hits(_raw(ds, tmp_path), "Müller^Hans") == ["(0032,4000)"]
