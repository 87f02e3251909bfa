"""The independent output checks at their edges: what a finding says, where a number stops being
an everyday count, how numbers hide in binary values, which UIDs may leave, and what makes a
written file unsound. The engine relies on these to refuse a study; a check that passes what it
should catch lets an identifier or a broken file out."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from voxl_assets.deid.checks import (
    CheckFinding,
    CheckResult,
    binary_number_hits,
    check_integrity,
    identifier_hits,
    number_patterns,
    number_string_hits,
)
from voxl_assets.deid.identifiers import StudyIdentifiers


def test_a_summary_counts_files_and_shows_the_first_findings() -> None:
    assert CheckResult(files_checked=3).summary() == "3 files checked, no findings"
    assert CheckResult().passed and CheckResult().files_checked == 0
    findings = [CheckFinding(f"f{n}.dcm", "(0010,0020)", "holds an identifier") for n in range(7)]
    result = CheckResult(files_checked=7, findings=findings)
    assert not result.passed
    summary = result.summary()
    assert summary.startswith("7 findings in 7 files: f0.dcm: (0010,0020): holds an identifier;")
    assert summary.endswith("f4.dcm: (0010,0020): holds an identifier (+2 more)")
    assert "f5.dcm" not in summary
    exact = CheckResult(files_checked=5, findings=findings[:5]).summary()
    assert "more" not in exact and "f4.dcm" in exact
    one_more = CheckResult(files_checked=6, findings=findings[:6]).summary()
    assert one_more.endswith("(+1 more)")


@pytest.mark.parametrize(
    ("numbers", "value", "found"),
    [
        (frozenset({100_000}), b"1.0E5", True),  # the smallest number looked for
        (frozenset({100_000}), b"100000.0 ", True),
        (frozenset({99_999}), b"9.9999E4", False),  # an everyday count
        (frozenset({99_999, 47_000_022}), b"99999", False),
        (frozenset({47_000_022}), b"1\\4.7000022E7", True),
        (frozenset({47_000_022}), b"4.70000225E7", False),  # not a whole number
        (frozenset({47_000_022}), b"abc\\4.7000022E7", True),  # after a part that is no number
        (frozenset(), b"4.7000022E7", False),
    ],
)
def test_number_strings_hold_identifiers_from_the_smallest_looked_for(
    numbers: frozenset[int], value: bytes, found: bool
) -> None:
    assert number_string_hits(value, numbers) is found


def test_binary_numbers_are_found_at_any_offset_in_either_byte_order() -> None:
    mrn = 47_000_022
    for order, little in (("<", True), (">", False)):
        for code in ("I", "Q", "f", "d"):
            packed = struct.pack(order + code, mrn if code in "IQ" else float(mrn))
            value = b"\x01\x02\x03" + packed + b"\x00"
            assert binary_number_hits(value, frozenset({mrn}), little), (order, code)
        other = struct.pack(order + "I", mrn)
        assert not binary_number_hits(other, frozenset({mrn}), not little)
    assert not binary_number_hits(struct.pack("<I", 99_999), frozenset({99_999}))
    assert binary_number_hits(struct.pack("<I", 100_000), frozenset({100_000}))
    # 2**32 and above fit only in 64 bits; 2**64 and above in neither integer
    assert struct.pack("<I", 2**32 - 1) in number_patterns(frozenset({2**32 - 1}))
    assert struct.pack("<Q", 2**32) in number_patterns(frozenset({2**32}))
    assert len(number_patterns(frozenset({2**32}))) == 3
    assert len(number_patterns(frozenset({2**64}))) == 2
    assert struct.pack("<Q", 2**64 - 1) in number_patterns(frozenset({2**64 - 1}))


def _dataset(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_uids_that_may_leave_and_those_that_may_not() -> None:
    identifiers = StudyIdentifiers()
    well_known = _dataset(SOPClassUID=CTImageStorage)
    assert identifier_hits(well_known, identifiers, uids=True) == []
    pseudonymous = _dataset(SOPInstanceUID="2.25.1234", ReferencedSOPInstanceUID="2.25.99")
    assert identifier_hits(pseudonymous, identifiers, uids=True) == []
    source = _dataset(SOPInstanceUID="1.2.826.0.1.3680043.9.7433.5")
    assert identifier_hits(source, identifiers, uids=True) == ["(0008,0018)"]
    assert identifier_hits(source, identifiers, uids=False) == []
    assert identifier_hits(source, identifiers) == []  # the engine's prefilter: values only
    second = _dataset(FailedSOPInstanceUIDList=["2.25.1", "1.2.3.4"])
    assert identifier_hits(second, identifiers, uids=True) == ["(0008,0058)"]


def _write(
    path: Path, ds: Dataset, syntax: str = ExplicitVRLittleEndian, sop: str | None = None
) -> Path:
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(rows: int = 4, columns: int = 4, bits: int = 16, **values: object) -> Dataset:
    ds = _dataset(Rows=rows, Columns=columns, BitsAllocated=bits, **values)
    return ds


def _problems(path: Path) -> list[str]:
    """The pixel data findings (the structure walk may refuse the same file too)."""
    findings = check_integrity([path]).findings
    return [f"{f.tag_path}: {f.problem}" for f in findings if f.tag_path != "file"]


def test_integrity_of_native_pixel_data(tmp_path: Path) -> None:
    whole = _image(SamplesPerPixel=1)
    whole.PixelData = b"\0" * 32
    assert _problems(_write(tmp_path / "whole.dcm", whole)) == []
    short = _image()
    short.PixelData = b"\0" * 30
    assert _problems(_write(tmp_path / "short.dcm", short)) == [
        "(7FE0,0010): pixel data shorter than the image needs"
    ]
    frames = _image(NumberOfFrames=2)
    frames.PixelData = b"\0" * 32
    assert _problems(_write(tmp_path / "frames.dcm", frames)) == [
        "(7FE0,0010): pixel data shorter than the image needs"
    ]
    colour = _image(bits=8, SamplesPerPixel=3, PhotometricInterpretation="RGB")
    colour.PixelData = b"\0" * 46
    assert _problems(_write(tmp_path / "colour.dcm", colour)) == [
        "(7FE0,0010): pixel data shorter than the image needs"
    ]
    subsampled = _image(bits=8, SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422")
    subsampled.PixelData = b"\0" * 32  # two samples a pixel
    assert _problems(_write(tmp_path / "ybr.dcm", subsampled)) == []
    bits = _image(rows=1, columns=3, bits=1)
    bits.PixelData = b"\0\0"  # 3 bits need one byte
    assert _problems(_write(tmp_path / "bits.dcm", bits)) == []
    missing = _image()
    assert _problems(_write(tmp_path / "missing.dcm", missing)) == [
        "(7FE0,0010): an image without pixel data"
    ]
    no_rows = _dataset(Columns=4, BitsAllocated=16)
    no_rows.PixelData = b"\0" * 32
    assert _problems(_write(tmp_path / "no_rows.dcm", no_rows)) == [
        "(7FE0,0010): pixel data without Rows, Columns or BitsAllocated"
    ]
    assert _problems(_write(tmp_path / "header.dcm", _dataset(Columns=4))) == []


def _items(*fragments: bytes, end: bool = True) -> bytes:
    data = b"".join(struct.pack("<II", 0xE000FFFE, len(f)) + f for f in fragments)
    return data + (struct.pack("<II", 0xE0DDFFFE, 0) if end else b"")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_items(b"", b"\xff\xd8\xff\xd9"), None),
        (_items(b"", b"\xff\xd8", b"\xff\xd9"), None),
        (_items(b"", b"\xff\xd8\xff\xd9", end=False), None),
        (_items(b""), "encapsulated pixel data without fragments"),
        (_items(b"", b"\xff\xd8\xff\xd9")[:-12], "encapsulated pixel data broken"),
        (
            _items(b"", b"\xff\xd8\xff\xd9")[:12] + struct.pack("<II", 0x12345678, 4) + b"abcd",
            "encapsulated pixel data broken",
        ),
    ],
)
def test_integrity_of_encapsulated_pixel_data(
    tmp_path: Path, data: bytes, problem: str | None
) -> None:
    ds = _image(bits=8)
    ds.PixelData = data
    ds["PixelData"].is_undefined_length = True
    path = _write(tmp_path / "jpeg.dcm", ds, JPEGBaseline8Bit)
    found = [f.problem for f in check_integrity([path]).findings if f.tag_path == "(7FE0,0010)"]
    assert found == ([problem] if problem else [])


def test_integrity_needs_the_sop_instance_uid_of_the_file_meta(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.dcm", _dataset(Columns=4))
    assert check_integrity([path]).passed
    ds = dcmread(_write(tmp_path / "y.dcm", _dataset(Columns=4), sop="2.25.1"))
    ds.file_meta.MediaStorageSOPInstanceUID = UID("2.25.2")
    ds.save_as(tmp_path / "y.dcm")
    result = check_integrity([tmp_path / "y.dcm", path])
    assert result.files_checked == 2
    assert [str(f) for f in result.findings] == [
        "y.dcm: (0008,0018): SOP Instance UID missing or unlike the file meta's"
    ]
    (tmp_path / "z.dcm").write_bytes(b"not dicom")
    unreadable = check_integrity([tmp_path / "z.dcm"])
    assert [f.tag_path for f in unreadable.findings] == ["file"]


def test_the_tags_the_engine_writes_are_allowed_whatever_the_allow_list() -> None:
    from voxl_assets.deid.checks import disallowed_tags
    from voxl_assets.deid.operations import TagOperations

    ds = _dataset(PatientIdentityRemoved="YES", DeidentificationMethod="VOXL", PatientSex="F")
    assert disallowed_tags(ds, TagOperations()) == ["(0010,0040)"]


UID_TAGS = ("(0008,0016)", "(0008,0018)")


def test_check_output_reads_every_file_its_preamble_and_file_meta(tmp_path: Path) -> None:
    from voxl_assets.deid.checks import check_output
    from voxl_assets.deid.operations import TagOperations, TagPolicy

    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    policy = TagPolicy(TagOperations())
    clean = _write(tmp_path / "clean.dcm", _dataset(), sop="2.25.7")
    preamble = dcmread(_write(tmp_path / "preamble.dcm", _dataset(), sop="2.25.8"))
    preamble.preamble = b"MRN 47000022".ljust(128, b"\0")
    preamble.save_as(tmp_path / "preamble.dcm")
    meta = dcmread(_write(tmp_path / "meta.dcm", _dataset(), sop="2.25.9"))
    meta.file_meta.SourceApplicationEntityTitle = "PACS47000022"
    meta.save_as(tmp_path / "meta.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"not dicom")
    files = [clean, tmp_path / "preamble.dcm", tmp_path / "meta.dcm", tmp_path / "broken.dcm"]
    allow, leaks = check_output(files, policy, identifiers)
    assert allow.files_checked == leaks.files_checked == 4
    assert [str(f) for f in leaks.findings] == [
        "preamble.dcm: preamble: holds an identifier",
        "meta.dcm: file meta (0002,0016): holds an identifier of the study",
        "broken.dcm: file: not readable (InvalidDicomError)",
    ]
    names = ("clean.dcm", "preamble.dcm", "meta.dcm")  # an empty allow-list keeps no UID
    assert [str(f) for f in allow.findings] == [
        *(f"{name}: {tag}: not in the allow-list" for name in names for tag in UID_TAGS),
        "broken.dcm: file: not readable (InvalidDicomError)",
    ]


def test_pixel_data_is_not_read_as_text_or_numbers_but_other_binary_values_are() -> None:
    """Pixel values are images, not text: any 8 bytes of an image may spell an MRN. The same
    bytes in another binary value (an encapsulated document) are a leak."""
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    spelled = b"MRN 47000022" + struct.pack("<I", 47_000_022)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        ds = Dataset()
        setattr(ds, keyword, spelled)
        assert identifier_hits(ds, identifiers) == [], keyword
    document = Dataset()
    document.EncapsulatedDocument = spelled
    assert identifier_hits(document, identifiers) == ["(0042,0011)"]


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_converted_values_are_encoded_as_written_and_unknown_charsets_still_read() -> None:
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    number = Dataset()
    number.NumberOfWaveformSamples = 47_000_022  # UL, converted by pydicom: little-endian bytes
    assert identifier_hits(number, identifiers) == ["(003A,0010)"]
    unknown = _dataset(SpecificCharacterSet="ISO_IR 999", PatientComments="MRN 47000022")
    assert identifier_hits(unknown, identifiers) == ["(0010,4000)"]


def test_a_cached_allow_list_of_another_object_is_not_used() -> None:
    """The allow-list cache is keyed by object id; an id can be reused once an object is gone."""
    from voxl_assets.deid.checks import _ALLOWED_CACHE, _allowed_sets, disallowed_tags
    from voxl_assets.deid.operations import Op, Operation, TagOperations

    keeps = TagOperations({0x00100040: Operation(Op.KEEP, "PatientSex")})
    deletes = TagOperations({0x00100040: Operation(Op.DELETE, "PatientSex")})
    _allowed_sets(keeps)
    _ALLOWED_CACHE[id(deletes)] = _ALLOWED_CACHE[id(keeps)]  # as if ``deletes`` reused its id
    try:
        assert disallowed_tags(_dataset(PatientSex="F"), deletes) == ["(0010,0040)"]
        assert disallowed_tags(_dataset(PatientSex="F"), keeps) == []
    finally:
        _ALLOWED_CACHE.pop(id(deletes), None)


def _private(ds: Dataset, group: int, block: int, creator: str, offset: int, value: str) -> None:
    ds.add_new((group << 16) | block, "LO", creator)
    ds.add_new((group << 16) | (block << 8) | offset, "LO", value)


def test_private_elements_need_their_creator_and_offset_kept() -> None:
    """A private element is allowed by (group, creator, offset), whatever its block, including
    the last block (creator at xxxx,00FF); any other private element is reported."""
    from voxl_assets.deid.checks import disallowed_tags
    from voxl_assets.deid.operations import Op, Operation, TagOperations

    keep = Operation(Op.KEEP, "kept")
    operations = TagOperations(private={(0x0029, "ACME 1", 0x01): keep})
    kept = Dataset()
    _private(kept, 0x0029, 0xFF, "ACME 1", 0x01, "fine")
    _private(kept, 0x0029, 0x10, "ACME 1", 0x01, "fine too")
    assert disallowed_tags(kept, operations) == []
    other = Dataset()
    _private(other, 0x0029, 0x10, "ACME 1", 0x02, "MRN 47000022")  # offset not kept
    _private(other, 0x0031, 0x11, "OTHER", 0x01, "x")  # creator not kept
    assert disallowed_tags(other, operations) == [
        "(0029,1002)",
        "(0031,0011)",
        "(0031,1101)",
    ]
    nested = Dataset()
    nested.ReferencedImageSequence = [other]
    assert disallowed_tags(nested, operations) == [
        "(0008,1140)",
        "(0008,1140)[0].(0029,1002)",
        "(0008,1140)[0].(0031,0011)",
        "(0008,1140)[0].(0031,1101)",
    ]


def test_elements_after_an_empty_one_are_still_checked() -> None:
    """An element without a value (None) or with an empty value ends nothing: the elements after
    it are read too."""
    from voxl_assets.deid.checks import leaf_values

    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    ds = _dataset(AccessionNumber="", PatientAge=None, PatientComments="MRN 47000022")
    assert identifier_hits(ds, identifiers) == ["(0010,4000)"]
    assert [path for path, *_ in leaf_values(ds, "", ["iso8859"])] == [
        "(0008,0050)",
        "(0010,4000)",
    ]


def test_a_converted_long_value_is_read_without_its_length_bytes() -> None:
    """pydicom's converted values are encoded without their element header: for a VR with a
    4-byte length (UT) the length bytes are not part of the value (a length that equals a
    numeric identifier would read as one)."""
    from voxl_assets.deid.checks import leaf_values

    ds = _dataset(TextValue="47000022 at the start")
    assert list(leaf_values(ds, "", ["iso8859"])) == [
        ("(0040,A160)", 0x0040A160, "UT", b"47000022 at the start ")
    ]
    identifiers = StudyIdentifiers()
    identifiers.add("100002")
    long_text = _dataset(TextValue="x" * 100_002)
    assert identifier_hits(long_text, identifiers) == []


def test_dates_of_birth_are_not_looked_for_in_date_attributes_whatever_the_label() -> None:
    """A newborn's study date may equal the birth date: an element is a date attribute when its
    VR label or its dictionary VR says so (a private DA element, a date labelled UN)."""
    identifiers = StudyIdentifiers()
    identifiers.add_birth_date("20260101")
    private = Dataset()
    private.add_new(0x00290010, "LO", "ACME 1")
    private.add_new(0x00291001, "DA", "20260101")
    assert identifier_hits(private, identifiers) == []
    unlabelled = Dataset()
    unlabelled[0x00080020] = _unlabelled(0x00080020, b"20260101")  # StudyDate
    unlabelled[0x00321000] = _unlabelled(0x00321000, b"20260101")  # ScheduledStudyStartDate
    assert identifier_hits(unlabelled, identifiers) == []
    text = _dataset(PatientComments="born 20260101")
    assert identifier_hits(text, identifiers) == ["(0010,4000)"]


def test_a_preamble_without_an_identifier_is_no_finding(tmp_path: Path) -> None:
    """A non-empty preamble (a TIFF header, an application's mark) is a finding only when it holds
    an identifier."""
    from voxl_assets.deid.checks import check_output
    from voxl_assets.deid.operations import TagOperations, TagPolicy

    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    ds = dcmread(_write(tmp_path / "tiff.dcm", _dataset(), sop="2.25.10"))
    ds.preamble = b"II*\0 written by an application".ljust(128, b"\0")
    ds.save_as(tmp_path / "tiff.dcm")
    _allow, leaks = check_output([tmp_path / "tiff.dcm"], TagPolicy(TagOperations()), identifiers)
    assert leaks.findings == []


def test_integrity_reports_what_the_structure_walk_refuses(tmp_path: Path) -> None:
    """A file pydicom reads without complaint although it ends inside its header."""
    path = _write(tmp_path / "cut.dcm", _dataset(Columns=4, TextValue="x" * 40))
    path.write_bytes(path.read_bytes()[:-10])
    assert [str(f) for f in check_integrity([path]).findings] == [
        "cut.dcm: file: file ends inside its header"
    ]


def test_encapsulated_pixel_data_that_does_not_start_with_an_item(tmp_path: Path) -> None:
    ds = _image(bits=8)
    ds.PixelData = _items(b"", b"\xff\xd8\xff\xd9")
    ds["PixelData"].is_undefined_length = True
    path = _write(tmp_path / "jpeg.dcm", ds, JPEGBaseline8Bit)
    data = path.read_bytes()
    first_item = data.index(b"\xfe\xff\x00\xe0")
    path.write_bytes(data[:first_item] + b"\xfe\xff\x00\xe1" + data[first_item + 4 :])
    found = [f.problem for f in check_integrity([path]).findings if f.tag_path == "(7FE0,0010)"]
    assert found == ["encapsulated pixel data without items"]


def test_numbers_are_looked_for_after_an_everyday_count_among_them() -> None:
    numbers = frozenset({*range(1, 20), 47_000_022})
    assert struct.pack("<I", 47_000_022) in number_patterns(numbers)
    assert binary_number_hits(b"\x00" + struct.pack("<d", 47_000_022.0), numbers)


def test_an_unknown_character_set_refused_by_strict_pydicom_still_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With pydicom validating strictly, an unknown SpecificCharacterSet raises instead of
    warning: the value is still read, as ASCII-compatible bytes."""
    from pydicom import config

    from voxl_assets.deid.checks import instance_encodings

    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    unknown = Dataset()
    unknown.add_new(0x00080005, "CS", b"ISO_IR 999")
    unknown.add_new(0x00104000, "LT", b"MRN 47000022")
    assert instance_encodings(unknown) == ["iso8859"]
    assert identifier_hits(unknown, identifiers) == ["(0010,4000)"]


def test_a_name_written_in_two_character_sets_is_read_as_one() -> None:
    """マリ子 in ISO 2022 IR 13 and IR 87: half-width katakana from one set, the kanji from the
    other. No single codec reads both halves; only decoding the escapes together does."""
    identifiers = StudyIdentifiers()
    identifiers.add_name("ﾏﾘ子^ﾀﾛｳ")
    ds = Dataset()
    ds.SpecificCharacterSet = ["ISO 2022 IR 13", "ISO 2022 IR 87"]
    ds.PatientComments = "seen by ﾏﾘ子 today"
    assert identifier_hits(ds, identifiers) == ["(0010,4000)"]


def test_an_absent_or_empty_samples_per_pixel_counts_as_one(tmp_path: Path) -> None:
    ds = _image(SamplesPerPixel=None, NumberOfFrames=None)
    ds.PixelData = b"\0" * 32
    assert _problems(_write(tmp_path / "empty.dcm", ds)) == []
    absent = _image()
    absent.PixelData = b"\0" * 32
    assert _problems(_write(tmp_path / "absent.dcm", absent)) == []


def test_an_unreadable_file_does_not_end_the_checks(tmp_path: Path) -> None:
    """Each file after an unreadable one is still read: by the integrity check and by both
    output checks."""
    from voxl_assets.deid.checks import check_output
    from voxl_assets.deid.operations import TagOperations, TagPolicy

    (tmp_path / "a-broken.dcm").write_bytes(b"not dicom")
    leaking = _write(
        tmp_path / "b-leak.dcm", _dataset(PatientComments="MRN 47000022"), sop="2.25.3"
    )
    short = _image()
    short.PixelData = b"\0" * 30
    _write(tmp_path / "c-short.dcm", short)
    files = [tmp_path / "a-broken.dcm", leaking, tmp_path / "c-short.dcm"]
    integrity = check_integrity(files)
    assert [f"{f.file}: {f.tag_path}" for f in integrity.findings] == [
        "a-broken.dcm: file",
        "c-short.dcm: file",
        "c-short.dcm: (7FE0,0010)",
    ]
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    allow, leaks = check_output(files[:2], TagPolicy(TagOperations()), identifiers)
    assert [f"{f.file}: {f.tag_path}" for f in leaks.findings] == [
        "a-broken.dcm: file",
        "b-leak.dcm: (0010,4000)",
    ]
    assert "b-leak.dcm: (0010,4000)" in [f"{f.file}: {f.tag_path}" for f in allow.findings]


def test_the_allow_list_of_the_files_manufacturer_applies(tmp_path: Path) -> None:
    from voxl_assets.deid.checks import check_output
    from voxl_assets.deid.operations import (
        ManufacturerOverride,
        Op,
        Operation,
        TagOperations,
        TagPolicy,
    )
    from voxl_assets.project_regex import ProjectRegex

    keep = {
        tag: Operation(Op.KEEP, name)
        for tag, name in (
            (0x00080016, "SOPClassUID"),
            (0x00080018, "SOPInstanceUID"),
            (0x00080070, "Manufacturer"),
        )
    }
    sex = TagOperations({0x00100040: Operation(Op.KEEP, "PatientSex")})
    policy = TagPolicy(TagOperations(keep), [ManufacturerOverride(ProjectRegex("ACME"), sex, "x")])
    acme = _write(
        tmp_path / "acme.dcm", _dataset(Manufacturer="ACME", PatientSex="F"), sop="2.25.4"
    )
    other = _write(
        tmp_path / "other.dcm", _dataset(Manufacturer="Other", PatientSex="F"), sop="2.25.5"
    )
    allow, _leaks = check_output([acme, other], policy, StudyIdentifiers())
    assert [str(f) for f in allow.findings] == ["other.dcm: (0010,0040): not in the allow-list"]


def test_a_codec_python_does_not_know_skips_only_its_own_reading() -> None:
    """The source's encodings come from outside the file; one Python cannot look up leaves the
    UTF-8 and Latin-1 readings after it."""
    identifiers = StudyIdentifiers()
    identifiers.add_name("Müller^Jörg")
    ds = Dataset()
    ds.add_new(0x00104000, "LT", "Dr Müller".encode())
    assert identifier_hits(ds, identifiers, encodings=["no-such-codec"]) == ["(0010,4000)"]


def test_private_elements_without_a_creator_or_outside_any_block_are_reported() -> None:
    from voxl_assets.deid.checks import disallowed_tags
    from voxl_assets.deid.operations import Op, Operation, TagOperations

    operations = TagOperations(private={(0x0029, "ACME 1", 0x01): Operation(Op.KEEP, "kept")})
    ds = Dataset()
    _private(ds, 0x0029, 0x10, "ACME 1", 0x01, "fine")
    ds.add_new(0x00291101, "LO", "no creator at (0029,0011)")
    ds.add_new(0x00290100, "LO", "element 0100: no block")
    assert disallowed_tags(ds, operations) == ["(0029,0100)", "(0029,1101)"]


def test_bit_images_round_up_to_whole_bytes(tmp_path: Path) -> None:
    ds = _image(rows=1, columns=17, bits=1)
    ds.PixelData = b"\0\0"  # 17 bits need 3 bytes
    assert _problems(_write(tmp_path / "bits.dcm", ds)) == [
        "(7FE0,0010): pixel data shorter than the image needs"
    ]


def _unlabelled(tag: int, value: bytes) -> RawDataElement:
    """An element as read from an explicit VR file that labels it UN (the writer's dictionary did
    not know it)."""
    return RawDataElement(BaseTag(tag), "UN", len(value), value, 0, False, True)


def test_a_sequence_labelled_un_is_checked_item_by_item() -> None:
    """An undefined-length UN element is read as the sequence it is (its items in implicit VR),
    so a finding names the item and the element."""
    inner = struct.pack("<HHI", 0x0010, 0x4000, 12) + b"MRN 47000022"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
    ds = Dataset()
    ds[0x00081140] = RawDataElement(BaseTag(0x00081140), "UN", 0xFFFFFFFF, item, 0, False, True)
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    assert identifier_hits(ds, identifiers) == ["(0008,1140)[0].(0010,4000)"]


def test_number_strings_are_compared_as_numbers_by_label_or_dictionary() -> None:
    """4.70000220E7 is the MRN as a number but not as text (another digit follows its digits)."""
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    private = Dataset()
    private.add_new(0x00290010, "LO", "ACME 1")
    private.add_new(0x00291001, "DS", "4.70000220E7")
    assert identifier_hits(private, identifiers) == ["(0029,1001)"]
    unlabelled = Dataset()
    unlabelled[0x00180050] = _unlabelled(0x00180050, b"4.70000220E7")  # SliceThickness, DS
    unlabelled[0x3002000E] = _unlabelled(0x3002000E, b"4.70000220E7")  # receptor angle, DS
    assert identifier_hits(unlabelled, identifiers) == ["(0018,0050)", "(3002,000E)"]
    text = _dataset(PatientComments="4.70000220E7")
    assert identifier_hits(text, identifiers) == []


def test_a_source_uid_in_the_file_meta_is_a_finding(tmp_path: Path) -> None:
    from voxl_assets.deid.checks import check_output
    from voxl_assets.deid.operations import TagOperations, TagPolicy

    ds = dcmread(_write(tmp_path / "meta.dcm", _dataset(), sop="2.25.11"))
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.9.7433.5")
    ds.save_as(tmp_path / "meta.dcm")
    _allow, leaks = check_output(
        [tmp_path / "meta.dcm"], TagPolicy(TagOperations()), StudyIdentifiers()
    )
    assert [str(f) for f in leaks.findings] == [
        "meta.dcm: file meta (0002,0003): holds an identifier of the study"
    ]
