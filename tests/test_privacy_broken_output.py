"""Finding 8 (broken output counted as good): every written instance re-reads with pydicom with
complete pixel data, or the instance is refused with its reason; reported counts equal the files
written; the checker flags broken output files."""

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.helpers.deid import make_engine
from tests.helpers.privacy import deidentify, hostile_spec, instance, project, save, shared_engine
from voxl_assets.deid.checks import check_integrity, check_output
from voxl_assets.deid.encoding import encode_file_meta
from voxl_assets.deid.engine import DeidReport
from voxl_assets.deid.header_scan import Refusal
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.synthetic import SeriesSpec, make_instance


def _assert_sound(report: DeidReport, out_dir: Path) -> None:
    written = sorted(p for p in out_dir.iterdir() if p.suffix == ".dcm")
    assert report.instances_out == len(written) == len(report.output_files)
    assert sorted(report.output_files) == written
    assert report.bytes_out == sum(p.stat().st_size for p in written)
    refused = sum(getattr(report, "refused", {}).values())
    assert report.instances_in == report.instances_out + sum(report.filtered.values()) + refused
    assert check_integrity(written).passed
    for path in written:
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            assert ds.pixel_array is not None  # decodes: complete pixel data


def test_a_deflated_instance_comes_out_readable_with_its_pixels(tmp_path: Path) -> None:
    source = Path(str(get_testdata_file("image_dfl.dcm")))
    original = pydicom.dcmread(source)
    engine = make_engine(
        tmp_path,
        project(
            project={"modalities": [str(original.Modality)]}, deid={"allow_secondary_capture": True}
        ),
    )
    report = deidentify(tmp_path, [source], engine)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 1
    out = pydicom.dcmread(report.output_files[0])
    assert out.PixelData == original.PixelData
    assert (out.pixel_array == original.pixel_array).all()
    _assert_sound(report, tmp_path / "out")


def _study(tmp_path: Path, count: int = 3) -> list[Path]:
    spec = hostile_spec(series=[SeriesSpec(instances=count)])
    return [save(instance(spec, i), tmp_path / "raw" / f"{i}.dcm") for i in range(1, count + 1)]


@pytest.mark.parametrize(
    "cut", ["inside pixel data", "inside pixel data header", "inside header", "in a value"]
)
def test_a_truncated_instance_is_refused_with_its_reason(tmp_path: Path, cut: str) -> None:
    paths = _study(tmp_path)
    data = paths[1].read_bytes()
    pixel = data.rfind(b"\xe0\x7f\x10\x00")
    at = {
        "inside pixel data": pixel + 12 + 100,
        "inside pixel data header": pixel + 6,
        "inside header": pixel - 3,
        "in a value": data.find(b"AXIAL") + 2,
    }[cut]
    paths[1].write_bytes(data[:at])
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 2
    reasons = getattr(report, "refused", None)
    assert reasons and sum(reasons.values()) == 1, reasons
    _assert_sound(report, tmp_path / "out")


def test_instances_without_sop_instance_uid_are_refused_and_not_counted(tmp_path: Path) -> None:
    spec = hostile_spec(series=[SeriesSpec(instances=4)])
    paths = []
    for i in range(1, 5):
        ds = instance(spec, i)
        if i > 1:
            del ds.SOPInstanceUID
        paths.append(save(ds, tmp_path / "raw" / f"{i}.dcm"))
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 1
    assert sum(getattr(report, "refused", {}).values()) == 3
    _assert_sound(report, tmp_path / "out")


def test_duplicate_sop_instance_uids_are_written_once(tmp_path: Path) -> None:
    spec = hostile_spec(series=[SeriesSpec(instances=2)])
    first = instance(spec, 1)
    second = instance(spec, 2)
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    paths = [save(first, tmp_path / "raw" / "1.dcm"), save(second, tmp_path / "raw" / "2.dcm")]
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 1
    _assert_sound(report, tmp_path / "out")


def test_a_duplicate_of_a_filtered_instance_is_refused_too(tmp_path: Path) -> None:
    """The second of two instances with one SOP Instance UID is refused as a duplicate even when
    the first was filtered out (a scout): which file of a broken pair is written must not
    depend on the files' order and content."""
    scout = SeriesSpec(instances=1, description="SCOUT")
    spec = hostile_spec(series=[scout, SeriesSpec(instances=1)])
    first = make_instance(spec, scout, 1)
    second = make_instance(spec, spec.series[1], 1)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    paths = [save(first, tmp_path / "raw" / "1.dcm"), save(second, tmp_path / "raw" / "2.dcm")]
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 0 and sum(report.filtered.values()) == 1
    assert report.refused == {Refusal.DUPLICATE_SOP_INSTANCE_UID.value: 1}


def test_an_image_without_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = _study(tmp_path)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0], enforce_file_format=True)
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 2
    _assert_sound(report, tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated pixel data", "truncated header", "deflate label"])
def test_checker_flags_broken_output_files(tmp_path: Path, damage: str) -> None:
    paths = _study(tmp_path, 1)
    engine = shared_engine()
    report = deidentify(tmp_path, paths, engine)
    assert isinstance(report, DeidReport)
    path = report.output_files[0]
    data = path.read_bytes()
    if damage == "truncated pixel data":
        path.write_bytes(data[:-100])
    elif damage == "truncated header":
        path.write_bytes(data[: data.find(b"\xe0\x7f\x10\x00") - 3])
    else:  # the dataset left uncompressed under the deflate transfer syntax
        meta_end = 144 + int.from_bytes(data[140:144], "little")
        ds = pydicom.dcmread(path)
        meta = encode_file_meta(
            ds.file_meta.MediaStorageSOPClassUID,
            ds.file_meta.MediaStorageSOPInstanceUID,
            "1.2.840.10008.1.2.1.99",
            ds.file_meta.ImplementationClassUID,
            "VOXL",
        )
        path.write_bytes(meta + data[meta_end:])
    results = [*check_output([path], engine.policy, StudyIdentifiers()), check_integrity([path])]
    assert any(not result.passed for result in results), damage


@pytest.mark.parametrize("size", [32, 48, 92])  # 32 rows is b" \0" (looks like padding)
def test_images_whose_sizes_look_like_text_padding_are_written(tmp_path: Path, size: int) -> None:
    spec = hostile_spec(rows=size, columns=size, series=[SeriesSpec(instances=2)])
    paths = [save(instance(spec, i), tmp_path / "raw" / f"{i}.dcm") for i in (1, 2)]
    report = deidentify(tmp_path, paths)
    assert isinstance(report, DeidReport), str(report)
    assert report.instances_out == 2 and not report.refused
    _assert_sound(report, tmp_path / "out")


SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "SC_rgb_jpeg.dcm",  # declares explicit VR, is implicit: refused
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "ExplVR_BigEnd.dcm",
    "MR_truncated.dcm",  # pixel data cut short: refused
    "rtplan_truncated.dcm",  # header cut short: refused
]


@pytest.mark.parametrize("name", SAMPLES)
def test_pydicom_samples_are_written_whole_or_refused_with_a_reason(
    tmp_path: Path, name: str
) -> None:
    source = Path(str(get_testdata_file(name, download=False)))
    original = pydicom.dcmread(source)
    engine = make_engine(
        tmp_path,
        project(
            project={"modalities": [str(original.get("Modality", "OT"))]},
            deid={"allow_secondary_capture": True, "allow_burned_in_annotation": True},
        ),
    )
    report = deidentify(tmp_path, [source], engine)
    assert isinstance(report, DeidReport), str(report)
    if "truncated" in name or name == "SC_rgb_jpeg.dcm":
        assert report.instances_out == 0 and sum(report.refused.values()) == 1
        return
    assert report.instances_out == 1, (report.filtered, report.refused)
    _assert_sound(report, tmp_path / "out")
