"""The first pass (``voxl_assets/deid/header_scan.py``): each instance's structure walked from its
bytes, what is wrong with it named as the reason it is refused, and its identifying values
collected for the study. Checked here on the scan itself, file by file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from tests.helpers.modalities import SourceUids, spectroscopy
from tests.helpers.privacy import BIRTH_DATE, FAMILY, MRN, instance, put, save
from voxl_assets.deid.encoding import encode_file_meta
from voxl_assets.deid.header_scan import Refusal, scan_instance
from voxl_assets.deid.identifiers import StudyIdentifiers


def test_mr_spectroscopy_has_no_pixel_data_and_is_not_refused(tmp_path: Path) -> None:
    """An MRS instance has Rows and Columns but its data is SpectroscopyData."""
    ds = spectroscopy(SourceUids(study="1.2.3"))
    assert "PixelData" not in ds and ds.Rows == 1
    scan = scan_instance(save(ds, tmp_path / "mrs.dcm"))
    assert scan.refusal is None and scan.pixel_tail is not None
    del ds.SpectroscopyData  # then it is an image without pixel data
    assert scan_instance(save(ds, tmp_path / "broken.dcm")).refusal is Refusal.NO_PIXEL_DATA


def _nested(depth: int, undefined: bool = True) -> Dataset:
    """An instance whose ReferencedImageSequence nests ``depth`` sequences in each other."""
    ds = instance()
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    for _ in range(depth):
        inner.is_undefined_length_sequence_item = undefined
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        outer["ReferencedImageSequence"].is_undefined_length = undefined
        inner = outer
    ds.ReferencedImageSequence = inner.ReferencedImageSequence
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    return ds


@pytest.mark.parametrize("undefined", [True, False])
def test_sequences_nested_deeper_than_32_are_refused(tmp_path: Path, undefined: bool) -> None:
    """A bound on the walk's recursion: 32 levels are read, 33 are a malformed structure (in
    either length form)."""
    assert scan_instance(save(_nested(32, undefined), tmp_path / "32.dcm")).refusal is None
    deep = scan_instance(save(_nested(33, undefined), tmp_path / "33.dcm"))
    assert deep.refusal is Refusal.BROKEN_STRUCTURE


def test_colour_pixel_data_needs_every_sample(tmp_path: Path) -> None:
    """RGB: three samples per pixel, so a third of the bytes is a truncated image."""
    ds = instance()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.zeros(4 * 4 * 3, np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    assert scan_instance(save(ds, tmp_path / "whole.dcm")).refusal is None
    ds.PixelData = np.zeros(4 * 4, np.uint8).tobytes()
    truncated = scan_instance(save(ds, tmp_path / "third.dcm"))
    assert truncated.refusal is Refusal.TRUNCATED_PIXEL_DATA


def test_ybr_full_422_needs_two_samples_a_pixel(tmp_path: Path) -> None:
    """YBR_FULL_422 shares the chroma of two pixels: two bytes a pixel (of 8 bits), not three."""
    ds = instance()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = np.zeros(4 * 4 * 2, np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    assert scan_instance(save(ds, tmp_path / "ybr.dcm")).refusal is None
    ds.PixelData = np.zeros(4 * 4 * 2 - 2, np.uint8).tobytes()
    assert scan_instance(save(ds, tmp_path / "short.dcm")).refusal is Refusal.TRUNCATED_PIXEL_DATA


def _image(rows: int = 4, columns: int = 4, bits: int = 16, stored: int = 16) -> Dataset:
    ds = instance()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    return ds


def test_every_frame_must_be_there(tmp_path: Path) -> None:
    ds = _image()
    ds.NumberOfFrames = 3
    ds.PixelData = np.zeros(3 * 4 * 4, np.uint16).tobytes()
    assert scan_instance(save(ds, tmp_path / "three.dcm")).refusal is None
    ds.PixelData = np.zeros(4 * 4, np.uint16).tobytes()  # one frame of three
    assert scan_instance(save(ds, tmp_path / "one.dcm")).refusal is Refusal.TRUNCATED_PIXEL_DATA


def test_pixel_data_length_follows_bits_allocated_not_bits_stored(tmp_path: Path) -> None:
    """12 bits stored in 16 allocated take two bytes a pixel: 12 bits' worth is truncated."""
    ds = _image(stored=12)
    ds.PixelData = np.zeros(4 * 4, np.uint16).tobytes()
    assert scan_instance(save(ds, tmp_path / "whole.dcm")).refusal is None
    ds.PixelData = bytes(4 * 4 * 12 // 8)
    assert scan_instance(save(ds, tmp_path / "12.dcm")).refusal is Refusal.TRUNCATED_PIXEL_DATA


def test_a_scan_shows_no_identifying_value(tmp_path: Path) -> None:
    """A scan is kept for every file of a study and may end up in a log or a traceback."""
    scan = scan_instance(save(instance(), tmp_path / "1.dcm"))
    assert scan.values and MRN.encode() in b"".join(raw for _kind, raw in scan.values)
    shown = repr(scan)
    assert MRN not in shown and FAMILY not in shown and BIRTH_DATE not in shown
    assert scan.sop_instance_uid and scan.sop_instance_uid not in shown


def test_a_name_in_utf8_under_a_latin1_label_is_also_read_as_utf8(tmp_path: Path) -> None:
    """Real archives write UTF-8 and declare Latin-1 (or nothing): the name is collected as
    both readings, so the UTF-8 one is found wherever else it appears."""
    ds = instance()
    ds.SpecificCharacterSet = "ISO_IR 100"
    put(ds, 0x00100010, "PN", "Müller^Hans".encode())
    scan = scan_instance(save(ds, tmp_path / "1.dcm"))
    identifiers = StudyIdentifiers()
    scan.add_identifiers(identifiers)
    assert identifiers.matcher().find("seen by Dr Müller")
    assert identifiers.matcher().find("MÃ¼ller")  # the Latin-1 reading too


@pytest.mark.parametrize(("tag", "vr", "bits"), [(0x7FE00008, "OF", 32), (0x7FE00009, "OD", 64)])
def test_float_pixel_data_is_pixel_data(tmp_path: Path, tag: int, vr: str, bits: int) -> None:
    """Float and double float images (parametric maps) carry no PixelData: theirs is checked
    for length and copied like it."""
    ds = _image(bits=bits, stored=bits)
    del ds.PixelData
    del ds.BitsStored, ds.HighBit
    pixels = np.zeros(4 * 4, np.float32 if bits == 32 else np.float64).tobytes()
    ds.add_new(tag, vr, pixels)
    path = save(ds, tmp_path / "float.dcm")
    scan = scan_instance(path)
    assert scan.refusal is None and scan.pixel_tail is not None
    offset, length = scan.pixel_tail
    assert path.read_bytes()[offset : offset + length].endswith(pixels)
    ds[tag].value = pixels[:-8]
    assert scan_instance(save(ds, tmp_path / "short.dcm")).refusal is Refusal.TRUNCATED_PIXEL_DATA


@pytest.mark.parametrize(
    ("tag", "vr", "value", "seen_as"),
    [
        (0x00100020, "LO", "XQ7734125", "XQ7734125"),  # PatientID
        (0x00101000, "LO", "XQ7734125", "XQ7734125"),  # OtherPatientIDs
        (0x00080050, "SH", "XQ7734125", "XQ7734125"),  # AccessionNumber
        (0x00200010, "SH", "XQ7734125", "XQ7734125"),  # StudyID
        (0x00101090, "LO", "XQ7734125", "XQ7734125"),  # MedicalRecordLocator
        (0x00100010, "PN", "Quixotovna^Zelda", "Quixotovna"),  # PatientName
        (0x00101001, "PN", "Quixotovna^Zelda", "Quixotovna"),  # OtherPatientNames
        (0x00101005, "PN", "Quixotovna^Zelda", "Quixotovna"),  # PatientBirthName
        (0x00101060, "PN", "Quixotovna^Zelda", "Quixotovna"),  # PatientMotherBirthName
        (0x00102297, "PN", "Quixotovna^Zelda", "Quixotovna"),  # ResponsiblePerson
    ],
)
def test_each_identifying_element_is_collected(
    tmp_path: Path, tag: int, vr: str, value: str, seen_as: str
) -> None:
    """The values the rest of the study is checked for: every identifier and name element
    (in a later instance only, it is still looked for in all of them)."""
    ds = instance()
    ds.add_new(tag, vr, value)
    identifiers = StudyIdentifiers()
    scan_instance(save(ds, tmp_path / "1.dcm")).add_identifiers(identifiers)
    assert identifiers.matcher().find(f"note: {seen_as} seen")


def test_the_pixel_data_to_copy_is_located_unless_elements_follow_it(tmp_path: Path) -> None:
    """The engine copies the pixel data element byte for byte from ``pixel_tail``; a file with
    elements after its pixel data is read whole instead (they are de-identified too)."""
    path = save(instance(), tmp_path / "plain.dcm")
    scan = scan_instance(path)
    data = path.read_bytes()
    assert not scan.needs_full_read and scan.pixel_tail is not None
    offset, length = scan.pixel_tail
    assert data[offset : offset + 4] == b"\xe0\x7f\x10\x00" and offset + length == len(data)
    ds = instance()
    ds.add_new(0x7FE10010, "LO", "ACME 1.0")  # a private block after the pixel data
    ds.add_new(0x7FE11010, "LO", "after")
    after = scan_instance(save(ds, tmp_path / "after.dcm"))
    assert after.refusal is None and after.needs_full_read and after.pixel_tail is None


def test_a_file_meta_that_ends_the_file_is_read_as_file_meta(tmp_path: Path) -> None:
    """Its last element (here an empty one, 8 bytes) is file meta even at the file's end, not
    a first dataset element encoded unlike the transfer syntax."""
    meta = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2", "1.2.3", ""
    )
    assert meta.endswith(b"\x02\x00\x13\x00SH\x00\x00")  # ImplementationVersionName, empty
    path = tmp_path / "meta-only.dcm"
    path.write_bytes(meta)
    scan = scan_instance(path)
    assert scan.syntax == "1.2.840.10008.1.2" and scan.refusal is None
    assert scan.sop_instance_uid == ""  # the engine refuses it for that


def test_a_name_in_a_later_code_extension_without_its_escape_is_collected(tmp_path: Path) -> None:
    """Each code extension is tried alone: one that cannot decode the bytes (JIS X 0208) does
    not stop the next (ISO 8859-5) from reading the name written without its escape."""
    ds = instance()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 144"]
    put(ds, 0x00100010, "PN", "Иванов^Пётр".encode("iso8859_5"))
    identifiers = StudyIdentifiers()
    scan_instance(save(ds, tmp_path / "1.dcm")).add_identifiers(identifiers)
    assert identifiers.matcher().find("Пациент Иванов")


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("into", [2, 4, 5, 7])
def test_a_file_cut_inside_an_element_header_is_refused(
    tmp_path: Path, implicit: bool, into: int
) -> None:
    """Fewer than 8 bytes of an element's tag, VR and length are a truncated header, not a
    crash."""
    path = save(instance(), tmp_path / "1.dcm", implicit=implicit)
    data = path.read_bytes()
    rows = data.find(b"\x28\x00\x10\x00")  # (0028,0010) Rows, a short (US) element
    path.write_bytes(data[: rows + into])
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


@pytest.mark.parametrize("into", [8, 9, 11])
def test_a_file_cut_inside_a_long_element_header_is_refused(tmp_path: Path, into: int) -> None:
    """Explicit VR OB, OW, UT...: 12 header bytes (a 4-byte length after 2 reserved ones)."""
    ds = instance()
    ds.add_new(0x00291010, "OB", b"\x01\x02")
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    path = save(ds, tmp_path / "1.dcm")
    data = path.read_bytes()
    at = data.find(b"\x29\x00\x10\x10OB")
    path.write_bytes(data[: at + into])
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


def test_an_empty_long_element_may_end_the_file(tmp_path: Path) -> None:
    ds = instance()
    ds.add_new(0x7FE10010, "LO", "ACME 1.0")
    ds.add_new(0x7FE11010, "UT", "")  # its 12-byte header is the last of the file
    path = save(ds, tmp_path / "1.dcm")
    assert path.read_bytes().endswith(b"\xe1\x7f\x10\x10UT\x00\x00\x00\x00\x00\x00")
    assert scan_instance(path).refusal is None


def test_text_in_encapsulated_pixel_data_is_kept_out_of_a_scans_repr(tmp_path: Path) -> None:
    ds = instance()
    comment = f"patient {MRN}".encode()
    frame = b"\xff\xd8\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + b"\xff\xd9"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    scan = scan_instance(path)
    assert any(MRN.encode() in text for text in scan.embedded)
    assert MRN not in repr(scan)


def test_zero_padding_after_the_last_element_is_not_an_element(tmp_path: Path) -> None:
    """Some writers pad a file with zero bytes: not an element after the pixel data (the file
    is still copied from its pixel data), not a broken structure."""
    path = save(instance(), tmp_path / "1.dcm")
    plain = scan_instance(path)
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    padded = scan_instance(path)
    assert padded.refusal is None and not padded.needs_full_read
    assert padded.pixel_tail == plain.pixel_tail
    path.write_bytes(path.read_bytes() + b"\x01")  # not only zeros: a broken element
    assert scan_instance(path).refusal is not None


@pytest.mark.parametrize("undefined", [True, False])
def test_identifiers_inside_sequence_items_are_collected(tmp_path: Path, undefined: bool) -> None:
    """In a sequence and item of either length form; a sequence before the pixel data is no
    element after it."""
    ds = instance()
    item = Dataset()
    item.PatientID = "XQ7734125"
    item.IssuerOfPatientID = "ELSEWHERE"
    ds.OtherPatientIDsSequence = Sequence([Dataset(), item])
    ds["OtherPatientIDsSequence"].is_undefined_length = undefined
    for each in ds.OtherPatientIDsSequence:
        each.is_undefined_length_sequence_item = undefined
    path = save(ds, tmp_path / "1.dcm")
    data = path.read_bytes()
    at = data.find(b"\x10\x00\x02\x10SQ\x00\x00") + 8
    assert (data[at : at + 4] == b"\xff\xff\xff\xff") is undefined
    scan = scan_instance(path)
    assert scan.refusal is None and not scan.needs_full_read
    identifiers = StudyIdentifiers()
    scan.add_identifiers(identifiers)
    assert identifiers.matcher().find("other id XQ7734125")


def _encapsulated(tmp_path: Path, pixel_value: bytes) -> Path:
    """A JPEG instance whose pixel data element holds ``pixel_value`` (undefined length)."""
    ds = instance()
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    path.write_bytes(data[:at] + pixel_value)
    return path


ITEM, END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def test_encapsulated_pixel_data_needs_an_offset_table_and_a_fragment(tmp_path: Path) -> None:
    whole = ITEM + bytes(4) + ITEM + (4).to_bytes(4, "little") + b"\xff\xd8\xff\xd9" + END
    assert scan_instance(_encapsulated(tmp_path, whole)).refusal is None
    for broken in (
        ITEM + bytes(4) + END,  # the offset table alone: no frame
        END,  # not even the offset table
        ITEM + bytes(4) + ITEM + (400).to_bytes(4, "little") + b"\xff\xd8\xff\xd9" + END,
        ITEM
        + bytes(4)
        + b"\xfe\xff\x0d\xe0"
        + (4).to_bytes(4, "little")
        + b"\xff\xd8\xff\xd9"
        + END,
        ITEM + bytes(4) + ITEM + b"\xff\xff\xff\xff" + b"\xff\xd8\xff\xd9" + END,
        ITEM + bytes(4) + ITEM + (4).to_bytes(4, "little") + b"\xff\xd8\xff\xd9",  # no end
    ):
        assert scan_instance(_encapsulated(tmp_path, broken)).refusal is Refusal.BROKEN_PIXEL_DATA


@pytest.mark.parametrize(("frames", "samples"), [("0", 1), ("x", 1), ("1", 0), (None, None)])
def test_frames_and_samples_that_say_nothing_count_as_one(
    tmp_path: Path, frames: str | None, samples: int | None
) -> None:
    """NumberOfFrames 0 or unreadable, SamplesPerPixel 0, or either absent: one frame of one
    sample, so pixel data of that size is whole."""
    ds = _image()
    if frames is not None:
        ds.add_new(0x00280008, "IS", "1")
        put(ds, 0x00280008, "IS", frames.encode())
    if samples is None:
        del ds.SamplesPerPixel
    else:
        ds.SamplesPerPixel = samples
    ds.PixelData = np.zeros(4 * 4, np.uint16).tobytes()
    assert scan_instance(save(ds, tmp_path / "1.dcm")).refusal is None


@pytest.mark.parametrize("size", [0, 1, 100, 131])
def test_a_file_shorter_than_a_preamble_is_unreadable(tmp_path: Path, size: int) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(b"\0" * size)
    assert scan_instance(path).refusal is Refusal.UNREADABLE


def test_a_preamble_alone_is_read_as_an_empty_file(tmp_path: Path) -> None:
    """128 bytes and DICM, nothing else: nothing wrong in its structure (the engine refuses it
    for having no SOP Instance UID)."""
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    scan = scan_instance(path)
    assert scan.refusal is None and scan.sop_instance_uid == ""


@pytest.mark.parametrize("extra", [b"\x08", b"\x08\x00\x18"])
def test_a_file_ending_just_after_its_file_meta_is_truncated(tmp_path: Path, extra: bytes) -> None:
    meta = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "1.2.3", "X"
    )
    path = tmp_path / "cut.dcm"
    path.write_bytes(meta + extra)
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


def _meta(syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    return encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", syntax, "1.2.3", "VOXL")


@pytest.mark.parametrize("damage", ["cut", "too long"])
def test_a_broken_file_meta_is_a_truncated_header(tmp_path: Path, damage: str) -> None:
    meta = _meta()
    if damage == "cut":  # the file ends inside the implementation class UID
        data = meta[: meta.find(b"1.2.3\0") + 2]
    else:  # the last element claims 65,535 bytes
        data = meta[:-6] + b"\xff\xff" + b"VOXL" + b"\x08\x00\x18\x00UI\x04\x00" + b"1.23"
    path = tmp_path / "meta.dcm"
    path.write_bytes(data)
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


def test_a_dataset_of_six_bytes_is_still_checked_against_its_syntax(tmp_path: Path) -> None:
    """Tag and VR of an explicit element under the implicit syntax: mislabelled, even where
    the file ends before its length."""
    path = tmp_path / "six.dcm"
    path.write_bytes(_meta("1.2.840.10008.1.2") + b"\x08\x00\x05\x00CS")
    assert scan_instance(path).refusal is Refusal.MISLABELLED_SYNTAX
    path.write_bytes(_meta("1.2.840.10008.1.2") + b"\x08\x00\x05\x00\x02\x00")
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


def test_a_sequence_labelled_un_is_read_as_implicit_vr(tmp_path: Path) -> None:
    """PS3.5 6.2.2: an undefined-length UN element is a sequence whose items are implicit VR
    little endian, whatever the transfer syntax; what they hold is collected."""
    path = save(instance(), tmp_path / "1.dcm")
    data = path.read_bytes()
    item = b"\x10\x00\x20\x00" + (10).to_bytes(4, "little") + b"XQ7734125 "
    sequence = (
        b"\x29\x00\x10\x00LO" + (8).to_bytes(2, "little") + b"ACME 1.0"
        + b"\x29\x00\x10\x10UN\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )  # fmt: skip
    at = data.rfind(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[:at] + sequence + data[at:])
    scan = scan_instance(path)
    assert scan.refusal is None
    identifiers = StudyIdentifiers()
    scan.add_identifiers(identifiers)
    assert identifiers.matcher().find("XQ7734125")


def test_bit_images_round_up_to_whole_bytes(tmp_path: Path) -> None:
    """6 x 6 pixels of 1 bit are 36 bits: 5 bytes (6 with the even padding); 4 are short."""
    ds = _image(rows=6, columns=6, bits=1, stored=1)
    ds.PixelData = bytes(6)
    ds["PixelData"].VR = "OB"
    assert scan_instance(save(ds, tmp_path / "whole.dcm")).refusal is None
    ds.PixelData = bytes(4)
    assert scan_instance(save(ds, tmp_path / "short.dcm")).refusal is Refusal.TRUNCATED_PIXEL_DATA


def test_the_file_metas_own_sop_instance_uid_is_collected(tmp_path: Path) -> None:
    """A file meta may name another SOP Instance UID than the dataset (a copy edited badly):
    it is a source UID all the same."""
    ds = instance()
    path = save(ds, tmp_path / "1.dcm")
    uid = str(ds.SOPInstanceUID).encode()
    other = uid[:-3] + (b"777" if not uid.endswith(b"777") else b"778")
    data = path.read_bytes()
    at = data.find(uid)  # the file meta's copy comes first
    assert at < 300 and data.count(uid) == 2
    path.write_bytes(data[:at] + other + data[at + len(uid) :])
    identifiers = StudyIdentifiers()
    scan_instance(path).add_identifiers(identifiers)
    assert identifiers.matcher().find(f"ref {other.decode()}")


def test_an_empty_value_among_several_does_not_hide_the_next(tmp_path: Path) -> None:
    ds = instance()
    put(ds, 0x00101000, "LO", b"\\XQ7734125")  # OtherPatientIDs: an empty value, then one
    identifiers = StudyIdentifiers()
    scan_instance(save(ds, tmp_path / "1.dcm")).add_identifiers(identifiers)
    assert identifiers.matcher().find("XQ7734125")


def test_an_item_longer_than_its_sequence_is_a_truncated_header(tmp_path: Path) -> None:
    ds = instance()
    item = Dataset()
    item.PatientID = "XQ7734125"
    ds.OtherPatientIDsSequence = Sequence([item])
    ds["OtherPatientIDsSequence"].is_undefined_length = False
    item.is_undefined_length_sequence_item = False
    path = save(ds, tmp_path / "1.dcm")
    data = path.read_bytes()
    at = data.find(b"\x10\x00\x02\x10SQ\x00\x00") + 12  # the item's tag
    assert data[at : at + 4] == b"\xfe\xff\x00\xe0"
    length = int.from_bytes(data[at + 4 : at + 8], "little")
    after = at + 8 + length  # the sequence's end: the next element (short VR) starts there
    following = 8 + int.from_bytes(data[after + 6 : after + 8], "little")
    # The item now claims the next element too: whole elements, so only the bound sees it.
    grown = (length + following).to_bytes(4, "little")
    path.write_bytes(data[: at + 4] + grown + data[at + 8 :])
    assert scan_instance(path).refusal is Refusal.TRUNCATED_HEADER


def test_a_sequence_in_an_implicit_file_is_walked_whatever_its_group(tmp_path: Path) -> None:
    """Implicit VR: the walk takes a public element's VR from the dictionary (groups 0x0012 and
    0x0032 too), so its sequences are walked and what their items hold is collected."""
    ds = instance()
    item = Dataset()
    item.PatientID = "XQ7734125"
    ds.RequestedProcedureCodeSequence = Sequence([item])  # (0032,1064)
    ds["RequestedProcedureCodeSequence"].is_undefined_length = False
    item.is_undefined_length_sequence_item = False
    identifiers = StudyIdentifiers()
    scan = scan_instance(save(ds, tmp_path / "1.dcm", implicit=True))
    assert scan.refusal is None
    scan.add_identifiers(identifiers)
    assert identifiers.matcher().find("XQ7734125")
