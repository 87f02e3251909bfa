"""Text inside compressed pixel data: a JPEG, JPEG-LS or JPEG 2000 codestream may carry comment
(COM) and application (APPn: JFIF, EXIF...) segments ahead of the image, which capture software
fills with a patient's name or number. The engine copies pixel data byte for byte, so it reads
those segments (never the image data): an identifier in any of them, in any frame, in single-byte,
UTF-8 or UTF-16 text, fails the instance; the independent checker finds it in written files."""

import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from tests.helpers.privacy import ACCESSION, FAMILY, MRN, deidentify, instance, shared_engine
from voxl_assets.deid import engine as engine_module
from voxl_assets.deid.checks import PIXEL_TEXT, check_output
from voxl_assets.deid.embedded_text import marker_segments
from voxl_assets.deid.engine import OutputCheckError
from voxl_assets.deid.identifiers import StudyIdentifiers


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


# Markers ahead of the image data that carry no text: quantisation table, frame header, J2K SIZ.
DQT = _segment(0xDB, bytes(65))
SOF0 = _segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
SOF55 = _segment(0xF7, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")  # JPEG-LS
SIZ = _segment(0x51, bytes(38))
IMAGE_DATA = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(48) + b"\xff\xd9"


def _jpeg(*segments: bytes, frame: bytes = SOF0) -> bytes:
    return b"\xff\xd8" + b"".join(segments) + DQT + frame + IMAGE_DATA


def _j2k(*segments: bytes) -> bytes:
    return b"\xff\x4f" + SIZ + b"".join(segments) + b"\xff\x90\x00\x0a" + bytes(8) + b"\xff\xd9"


SYNTAXES = {"jpeg": JPEGBaseline8Bit, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}


def _codestream(kind: str, text_segment: bytes | None) -> bytes:
    segments = [text_segment] if text_segment else []
    if kind == "jpeg2000":
        return _j2k(*[b"\xff\x64" + s[2:] for s in segments])  # J2K's COM marker
    return _jpeg(*segments, frame=SOF55 if kind == "jpeg-ls" else SOF0)


def _study(tmp_path: Path, kind: str, frames: list[bytes]) -> list[Path]:
    ds = instance()
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = SYNTAXES[kind]
    path = tmp_path / "raw" / "1.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return [path]


IDENTIFIERS = {"mrn": MRN, "accession": ACCESSION, "name": FAMILY}
ENCODINGS = ["ascii", "utf-8", "utf-16-le", "utf-16-be"]


def _payload(identifier: str, encoding: str) -> bytes:
    return f"Patient: {identifier} / exported by CaptureSuite".encode(encoding)


@pytest.mark.parametrize("kind", sorted(SYNTAXES))
@pytest.mark.parametrize("which", sorted(IDENTIFIERS))
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_identifier_in_a_comment_segment_fails_the_instance(
    tmp_path: Path, kind: str, which: str, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _segment(0xFE, _payload(IDENTIFIERS[which], encoding))
    files = _study(tmp_path, kind, [_codestream(kind, None), _codestream(kind, text)])
    outcome = deidentify(tmp_path / "checked", files)
    assert isinstance(outcome, OutputCheckError), "let through by the engine"
    assert PIXEL_TEXT in outcome.leaks
    assert IDENTIFIERS[which] not in str(outcome)

    # The independent checker finds it in what the engine writes with that check switched off.
    monkeypatch.setattr(engine_module, "pixel_text_hits", lambda *_args: [])
    engine = shared_engine()
    identifiers = StudyIdentifiers()
    report = engine.deidentify_study(files, tmp_path / "unchecked", identifiers)
    assert report.instances_out == 1
    _allow, leaks = check_output(report.output_files, engine.policy, identifiers)
    assert PIXEL_TEXT in leaks.summary()


@pytest.mark.parametrize("marker", range(0xE0, 0xF0), ids=lambda m: f"APP{m - 0xE0}")
def test_an_identifier_in_any_application_segment_fails_the_instance(
    tmp_path: Path, marker: int
) -> None:
    exif_like = b"Exif\0\0MM\0*" + _payload(FAMILY, "utf-16-le")
    files = _study(tmp_path, "jpeg", [_jpeg(_segment(marker, exif_like))])
    outcome = deidentify(tmp_path, files)
    assert isinstance(outcome, OutputCheckError) and PIXEL_TEXT in outcome.leaks


def test_image_data_is_not_read_as_text_and_ordinary_segments_pass(tmp_path: Path) -> None:
    jfif = _segment(0xE0, b"JFIF\0\x01\x02\0\0\x01\0\x01\0\0")
    comment = _segment(0xFE, b"Lossy compression ratio 10:1")
    # The MRN's bytes inside the entropy-coded image data are pixels, not text.
    frame = _jpeg(jfif, comment).replace(bytes(48), MRN.encode() + bytes(40))
    files = _study(tmp_path, "jpeg", [frame])
    outcome = deidentify(tmp_path, files)
    assert not isinstance(outcome, OutputCheckError), str(outcome)
    assert outcome.instances_out == 1
    written = pydicom.dcmread(outcome.output_files[0])
    assert written.PixelData == pydicom.dcmread(files[0]).PixelData  # copied byte for byte


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(st.sampled_from([DQT, _segment(0xE0, b"JFIF\0"), _segment(0xC4, bytes(20))])),
    frames=st.integers(1, 4),
    frame_with_text=st.integers(0, 3),
    fill=st.integers(0, 3),
)
def test_marker_segments_finds_every_text_segment_before_the_image_data(
    before: list[bytes], frames: int, frame_with_text: int, fill: int
) -> None:
    text = _segment(0xFE, _payload(MRN, "ascii"))
    streams = []
    for index in range(frames):
        segments = [*before, b"\xff" * fill + text] if index == frame_with_text % frames else before
        streams.append(_jpeg(*segments))
    found = [p for s in streams for p in marker_segments(s)]
    assert sum(MRN.encode() in p for p in found) == 1
    # After the image data starts nothing is read, whatever follows.
    assert marker_segments(b"\xff\xd8" + IMAGE_DATA + text) == []
    assert marker_segments(bytes(16)) == []


def _tile_part(index: int, header: bytes, data: bytes, *, last: bool = False) -> bytes:
    """SOT (Psot: the tile-part's length from SOT on; 0 for a last one), header, SOD, data."""
    length = 0 if last else 12 + len(header) + 2 + len(data)
    return (
        b"\xff\x90" + struct.pack(">HHIBB", 10, index, length, 0, 1) + header + b"\xff\x93" + data
    )


def test_a_comment_in_a_jpeg_2000_tile_part_header_is_read_and_tile_data_is_not(
    tmp_path: Path,
) -> None:
    """ISO/IEC 15444-1 lets a COM segment sit in any tile-part header, after image data."""
    comment = b"\xff\x64" + _segment(0xFE, b"\0\x01" + _payload(MRN, "ascii"))[2:]
    # Tile data: pixels, never read as text, even where its bytes would make SOD a segment
    # (length 2) followed by a COM.
    pixels = b"\x00\x02\xff\x64\x00\x0e\x00\x01" + MRN.encode() + bytes(8)
    stream = (
        b"\xff\x4f"
        + SIZ
        + _tile_part(0, b"", pixels)
        + _tile_part(1, comment, pixels)
        + _tile_part(2, b"", pixels, last=True)
        + b"\xff\xd9"
    )
    assert marker_segments(stream) == [b"\0\x01" + _payload(MRN, "ascii")]
    plain = b"\xff\x4f" + SIZ + _tile_part(0, b"", pixels) + _tile_part(1, b"", pixels)
    assert marker_segments(plain + b"\xff\xd9") == []
    outcome = deidentify(tmp_path, _study(tmp_path, "jpeg2000", [stream]))
    assert isinstance(outcome, OutputCheckError) and PIXEL_TEXT in outcome.leaks


def test_a_jpeg_2000_main_header_without_a_tile_part_is_still_read() -> None:
    comment = b"\xff\x64" + _segment(0xFE, b"\0\x01" + _payload(MRN, "ascii"))[2:]
    assert marker_segments(b"\xff\x4f" + SIZ + comment) == [b"\0\x01" + _payload(MRN, "ascii")]
    cut = b"\xff\x4f" + SIZ + comment + b"\xff\x90\x00\x0a\x00\x00"  # SOT cut short
    assert marker_segments(cut) == [b"\0\x01" + _payload(MRN, "ascii")]


def test_a_segment_in_utf8_is_read_as_utf8() -> None:
    from voxl_assets.deid.checks import pixel_text_hits

    identifiers = StudyIdentifiers()
    identifiers.add_name("Müller^Jörg")
    payloads = ["Operator: Jörg Müller".encode()]
    assert pixel_text_hits(payloads, identifiers.matcher()) == [PIXEL_TEXT]
    assert pixel_text_hits([b"Operator: none"], identifiers.matcher()) == []


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("offset", [0, 1])
def test_a_segment_in_utf16_is_read_at_either_byte_offset(codec: str, offset: int) -> None:
    """EXIF's XP fields: UTF-16 at any offset. A Cyrillic name has no Latin-1 reading."""
    from voxl_assets.deid.checks import pixel_text_hits

    identifiers = StudyIdentifiers()
    identifiers.add_name("Иванов^Пётр")
    payload = b"XP" + b"\0" * offset + "Автор: Иванов".encode(codec) + b"\0\0"
    assert pixel_text_hits([payload], identifiers.matcher()) == [PIXEL_TEXT]
    at_the_end = b"XP" + b"\0" * offset + "Автор: Иванов".encode(codec)  # the last byte too
    assert pixel_text_hits([at_the_end], identifiers.matcher()) == [PIXEL_TEXT]


def test_the_marker_walk_at_its_edges() -> None:
    text = b"MRN 47000022"
    com = _segment(0xFE, text)
    # markers without a length (TEM, RST0) and a fill byte before a comment
    assert marker_segments(b"\xff\xd8\xff\x01\xff\xd0\xff" + com + IMAGE_DATA) == [text]
    # an early end of image (EOI, no length either) hides nothing that follows it
    assert marker_segments(b"\xff\xd8\xff\xd9" + com + IMAGE_DATA) == [text]
    assert marker_segments(b"\xff\xd8\x00" + com) == []  # not a marker: the walk ends
    # APP0-APP15 and COM only: not JPG0 (F0) or JPG13 (FD) beside them
    others = _segment(0xF0, b"jpg0") + _segment(0xEF, b"app15") + _segment(0xFD, b"jpg13")
    assert marker_segments(b"\xff\xd8" + others + IMAGE_DATA) == [b"app15"]
    assert marker_segments(b"\xff\xd8\xff\xfe\x00\x01" + com) == []  # a length below 2
    # the fragment's end ends the walk: a segment ending there, a header or payload cut by it
    assert marker_segments(b"\xff\xd8" + com) == [text]
    assert marker_segments(b"\xff\xd8" + com + b"\xff\xfe\x00\x02") == [text, b""]
    assert marker_segments(b"\xff\xd8" + com + b"\xff\xfe\x00") == [text]
    assert marker_segments(b"\xff\xd8" + com[:-4]) == [b"MRN 4700"]
    assert marker_segments(b"\xff\xd8" + com + com, 0, 2 + len(com)) == [text]
    assert marker_segments(b"\0\0\xff\xd8" + com + com, 2, 4 + len(com)) == [text]


def test_jpeg_2000_tile_parts_at_their_edges() -> None:
    text = b"\0\x01" + _payload(MRN, "ascii")
    comment = b"\xff\x64" + _segment(0xFE, text)[2:]
    main = b"\xff\x4f" + SIZ
    # an empty tile-part (SOT and SOD only: Psot 14) before one with a comment
    assert marker_segments(main + _tile_part(0, b"", b"") + _tile_part(1, comment, b"")) == [text]
    # nothing after the codestream's end (EOC) is read, even where a tile-part header would be
    after = b"\xff\xd9" + bytes(10) + comment
    assert marker_segments(main + _tile_part(0, b"", bytes(4)) + after) == []


def test_a_comment_after_megabytes_of_application_segments_is_read(tmp_path: Path) -> None:
    """Any position: a comment behind an ICC profile of 255 full APP2 segments (16 MB) is read,
    not cut off by how far the walk goes."""
    icc = [_segment(0xE2, b"ICC_PROFILE\0" + bytes([n, 255]) + bytes(65_519)) for n in range(255)]
    text = _segment(0xFE, _payload(MRN, "ascii"))
    frame = _jpeg(*icc, text)
    assert len(frame) > 15 << 20
    assert marker_segments(frame)[-1] == _payload(MRN, "ascii")
    outcome = deidentify(tmp_path, _study(tmp_path, "jpeg", [frame]))
    assert isinstance(outcome, OutputCheckError) and PIXEL_TEXT in outcome.leaks


def test_a_frame_of_more_markers_than_can_be_read_is_refused_and_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_MARKERS without reaching the image data, a frame's text cannot all be read: the
    engine refuses the instance and the checker flags a written one, rather than either passing
    what it did not read."""
    from voxl_assets.deid import embedded_text
    from voxl_assets.deid.embedded_text import MAX_MARKERS, UncheckedSegments
    from voxl_assets.deid.header_scan import Refusal

    assert MAX_MARKERS == 65_536  # as the README says
    tiny = _segment(0xE1, b"")  # four bytes each: a malformed frame's worth
    at_the_bound = _jpeg(*[tiny] * (65_536 - 3))  # with SOI's successors DQT, SOF0 and SOS
    assert marker_segments(at_the_bound) == [b""] * (65_536 - 3)
    over = _jpeg(*[tiny] * (65_536 - 2))
    with pytest.raises(UncheckedSegments):
        marker_segments(over)
    report = deidentify(tmp_path / "engine", _study(tmp_path / "a", "jpeg", [_jpeg(), over]))
    assert not isinstance(report, OutputCheckError), str(report)
    assert report.refused == {Refusal.UNCHECKED_PIXEL_TEXT.value: 1} and report.instances_out == 0

    # Written anyway (the engine's walk bounded higher): the checker does not pass it.
    files = _study(tmp_path / "b", "jpeg", [over])
    monkeypatch.setattr(embedded_text, "MAX_MARKERS", 10 * MAX_MARKERS)
    engine = shared_engine()
    identifiers = StudyIdentifiers()
    written = engine.deidentify_study(files, tmp_path / "unchecked", identifiers)
    assert written.instances_out == 1
    monkeypatch.setattr(embedded_text, "MAX_MARKERS", MAX_MARKERS)
    _allow, leaks = check_output(written.output_files, engine.policy, identifiers)
    assert "too many segments to read" in leaks.summary()
