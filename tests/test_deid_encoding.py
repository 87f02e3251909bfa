"""The engine's fast paths (values transformed and written in their encoded form) give exactly
what pydicom's general path gives: same bytes for the file meta and simple elements, and the same
de-identified datasets for generated studies and pydicom's samples under every date option."""

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from tests.helpers.deid import make_engine, make_project
from voxl_assets.deid import engine as engine_module
from voxl_assets.deid.encoding import encode_element, encode_file_meta
from voxl_assets.deid.engine import header_values, iter_study_files
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study


def test_file_meta_bytes_match_pydicom() -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")  # odd length: padded with a NUL
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "VOXL"
    expected = io.BytesIO()
    expected.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    ours = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4.5",
        "1.2.840.10008.1.2.1",
        PYDICOM_IMPLEMENTATION_UID,
        "VOXL",
    )
    assert ours == expected.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(
    "tag,vr,value",
    [
        (0x00100020, "LO", "ABC"),
        (0x0020000D, "UI", "1.2.3"),
        (0x00080008, "CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
        (0x00080020, "DA", "20240301"),
        (0x00100010, "PN", "DOE^JANE"),
        (0x00321060, "LO", ""),
        (0x00280010, "US", 512),
        (0x00181310, "US", [0, 512, 512, 0]),
        (0x00189306, "FD", 1.25),
        (0x00540081, "US", 7),
        (0x00081030, "UT", "x" * 70000),  # long length form
        (0x00100020, "LO", None),  # empty: no pydicom needed
        (0x00280010, "US", None),
    ],
)
def test_element_bytes_match_pydicom(tag: int, vr: str, value: Any, implicit: bool) -> None:
    ours = encode_element(tag, vr, value, implicit)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, DataElement(tag, vr, value))
    assert ours == buffer.getvalue()


def test_a_file_meta_value_that_is_not_ascii_is_refused_by_its_tag() -> None:
    with pytest.raises(ValueError, match=r"^file meta \(0002,0013\) is not ASCII$"):
        encode_file_meta("1.2.3", "1.2.3.4", "1.2.840.10008.1.2.1", "1.2.5", "VÖXL")


def test_values_pydicom_must_encode_are_left_to_it() -> None:
    assert encode_element(0x00100010, "PN", "Müller^Jörg", False) is None  # character set
    assert encode_element(0x00281050, "DS", "40.0", False) is None  # number string
    assert encode_element(0x00081140, "SQ", [], False) is None


def test_header_values_read_encoded_text_as_pydicom_does(tmp_path: Path) -> None:
    spec = StudySpec(
        patient_id=" MRN 1 ", accession_number="ACC1", series=[SeriesSpec(instances=1)]
    )
    path = write_study(spec, tmp_path)[0]
    header = pydicom.dcmread(path, stop_before_pixels=True)
    decoded = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("ImageType", "Modality", "SOPClassUID", "SeriesNumber", "PatientName"):
        value = decoded.data_element(keyword).value  # type: ignore[union-attr]
        values = list(value) if isinstance(value, MultiValue) else [value]
        assert header_values(header, keyword) == [str(v).strip() for v in values]
    assert header_values(header, "PatientID") == ["MRN 1"]
    assert header_values(header, "OtherPatientIDs") == []


def _deidentified(
    tmp_path: Path,
    sources: list[Path],
    dates: str,
    general: bool,
    monkeypatch: pytest.MonkeyPatch,
    modalities: list[str],
) -> list[pydicom.Dataset]:
    with monkeypatch.context() as patch:
        if general:  # every value through pydicom: the reference the fast path must equal
            patch.setattr(engine_module._Walker, "_apply_encoded", lambda *_args: False)
        project = make_project(
            project={"modalities": modalities},
            allowed_manufacturers=[{"regex": ".*"}],
            deid={
                "dates": dates,
                "date_shift_days_max": 30 if dates == "shift" else 0,
                "allow_secondary_capture": True,
            },
        )
        engine = make_engine(tmp_path, project)
        out = tmp_path / ("general" if general else "fast")
        report = engine.deidentify_study(sources, out, StudyIdentifiers())
    return [pydicom.dcmread(p) for p in sorted(report.output_files)]


@pytest.mark.parametrize("dates", ["keep", "truncate_to_year", "shift"])
def test_fast_path_output_equals_the_general_path(
    tmp_path: Path, dates: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = StudySpec(
        patient_id="MRN-EQ-1",
        accession_number="ACC-EQ-1",
        series=[SeriesSpec(instances=2), SeriesSpec(instances=1, number=2)],
    )
    sources = write_study(spec, tmp_path / "raw")
    sources += [Path(str(get_testdata_file(name))) for name in ("CT_small.dcm", "MR_small.dcm")]
    # One hashing database (one salt) for both, so their pseudonyms are comparable.
    fast = _deidentified(tmp_path, sources, dates, False, monkeypatch, ["CT", "MR"])
    general = _deidentified(tmp_path, sources, dates, True, monkeypatch, ["CT", "MR"])
    assert len(fast) == len(general) == 5
    for ours, reference in zip(fast, general, strict=True):
        assert ours.file_meta == reference.file_meta
        assert ours == reference  # every element, values compared as pydicom decodes them
        assert ours.PixelData == reference.PixelData


def test_engine_output_reads_back_in_study_order(tmp_path: Path) -> None:
    spec = StudySpec(patient_id="M", accession_number="A", series=[SeriesSpec(instances=3)])
    write_study(spec, tmp_path / "raw")
    engine = make_engine(tmp_path, make_project(project={"modalities": ["CT"]}))
    report = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", StudyIdentifiers()
    )
    assert report.instances_out == 3
    for path in report.output_files:
        ds = pydicom.dcmread(path)
        assert (
            ds.PatientIdentityRemoved == "YES" and ds.file_meta.ImplementationVersionName == "VOXL"
        )
