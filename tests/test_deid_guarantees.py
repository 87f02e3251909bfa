"""Guarantees of the de-identification engine that a deliberate break once left unnoticed:
ultrasound blanking on colour (both planar configurations) and multi-frame images, compressed
ultrasound refused, a non-ultrasound image with burned-in text refused even with blanking on, and
the date shift differing from patient to patient (and holding within one)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from tests.helpers.deid import make_engine, make_project
from voxl_assets.deid.engine import DeidReport, FilterReason, iter_study_files
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.synthetic import SeriesSpec, StudySpec, make_instance, write_study

REGION = (10, 20, 29, 39)  # x0, y0, x1, y1: 20 x 20 pixels kept


def _region() -> Sequence:
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = REGION[0], REGION[1]
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = REGION[2], REGION[3]
    region.RegionSpatialFormat = 1
    return Sequence([region])


def _ultrasound(frames: int = 1, samples: int = 1, planar: int = 0) -> Dataset:
    spec = StudySpec(patient_id="MRN-US", accession_number="ACC-US", modality="US")
    ds = make_instance(spec, SeriesSpec(), 1)
    ds.BurnedInAnnotation = "YES"
    ds.SequenceOfUltrasoundRegions = _region()
    shape: tuple[int, ...] = (spec.rows, spec.columns)
    if samples > 1:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
        ds.PlanarConfiguration = planar
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        shape = (*shape, 3)
        pixels = np.full(shape, 200, dtype=np.uint8)
        pixels[..., 1], pixels[..., 2] = 150, 100  # a different value per channel
    else:
        pixels = np.full(shape, 500, dtype=np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels + n for n in range(frames)])
    stored = pixels
    if samples > 1 and planar == 1:  # colour-by-plane on disk
        stored = np.moveaxis(pixels, -1, -3)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _deidentify(tmp_path: Path, datasets: list[Dataset], **deid: object) -> DeidReport:
    engine = make_engine(
        tmp_path, make_project(deid={"blank_ultrasound_outside_regions": True, **deid})
    )
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    for number, ds in enumerate(datasets):
        ds.save_as(raw / f"{number}.dcm", enforce_file_format=True)
    return engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())


def _assert_blanked(pixels: np.ndarray, original: np.ndarray, samples: int) -> None:
    """Inside the region as it was; outside it zero, in every frame and channel."""
    if samples == 1:  # a channel axis for grey images too
        pixels, original = pixels[..., None], original[..., None]
    x0, y0, x1, y1 = REGION
    kept = np.zeros(pixels.shape, dtype=bool)
    kept[..., y0 : y1 + 1, x0 : x1 + 1, :] = True
    np.testing.assert_array_equal(pixels[kept], original[kept])
    assert not pixels[~kept].any()


@pytest.mark.parametrize(
    ("frames", "samples", "planar"),
    [(1, 1, 0), (3, 1, 0), (1, 3, 0), (1, 3, 1), (2, 3, 1)],
    ids=["grey", "multi-frame", "colour", "colour-by-plane", "multi-frame-colour-by-plane"],
)
def test_ultrasound_is_blanked_outside_its_regions_in_every_frame_and_channel(
    tmp_path: Path, frames: int, samples: int, planar: int
) -> None:
    source = _ultrasound(frames, samples, planar)
    original = source.pixel_array.copy()
    report = _deidentify(tmp_path, [source])
    assert report.instances_out == 1 and report.blanked_instances == 1
    out = pydicom.dcmread(report.output_files[0])
    assert out.BurnedInAnnotation == "NO"
    assert int(out.get("PlanarConfiguration", 0)) == planar
    _assert_blanked(out.pixel_array, original, samples)


def test_a_grey_ultrasound_labelled_colour_by_plane_is_blanked_as_grey(tmp_path: Path) -> None:
    """PlanarConfiguration means nothing for one sample per pixel: a grey image that carries
    PlanarConfiguration 1 anyway is blanked as the grey image it is, not refused or broken."""
    source = _ultrasound()
    source.PlanarConfiguration = 1
    original = source.pixel_array.copy()
    report = _deidentify(tmp_path, [source])
    assert report.instances_out == 1 and report.blanked_instances == 1
    _assert_blanked(pydicom.dcmread(report.output_files[0]).pixel_array, original, 1)


def test_a_colour_by_plane_ultrasound_with_number_of_frames_0_is_blanked_as_one_frame(
    tmp_path: Path,
) -> None:
    """NumberOfFrames 0 is invalid; pydicom (and the header scan) read it as one frame, and so
    does the blanking: its planes are put back as one frame's."""
    source = _ultrasound(1, 3, 1)
    source.NumberOfFrames = 0
    original = _ultrasound(1, 3, 1).pixel_array.copy()
    report = _deidentify(tmp_path, [source])
    assert report.instances_out == 1 and report.blanked_instances == 1
    _assert_blanked(pydicom.dcmread(report.output_files[0]).pixel_array, original, 3)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("SamplesPerPixel", 0), ("PhotometricInterpretation", "NOT A LABEL"), ("BitsAllocated", 12)],
)
def test_an_ultrasound_whose_pixels_cannot_be_decoded_is_left_out(
    tmp_path: Path, keyword: str, value: object
) -> None:
    """Blanking needs the pixels decoded: an image pydicom cannot decode is left out with its
    reason (fail closed), and the study's other instances are still written."""
    broken = _ultrasound()
    setattr(broken, keyword, value)
    report = _deidentify(tmp_path, [broken, _ultrasound()])
    assert report.filtered == {FilterReason.ULTRASOUND_UNDECODABLE.value: 1}
    assert report.instances_out == 1 and report.blanked_instances == 1 and not report.refused


def test_compressed_ultrasound_is_refused(tmp_path: Path) -> None:
    source = _ultrasound()
    source.compress(RLELossless)
    report = _deidentify(tmp_path, [source])
    assert report.instances_out == 0
    assert report.filtered == {FilterReason.ULTRASOUND_COMPRESSED.value: 1}


def test_burned_in_text_outside_ultrasound_is_refused_with_blanking_on(tmp_path: Path) -> None:
    ct = make_instance(StudySpec(patient_id="MRN-CT", accession_number="ACC-CT"), SeriesSpec(), 1)
    ct.BurnedInAnnotation = "YES"
    clean = make_instance(
        StudySpec(patient_id="MRN-CT", accession_number="ACC-CT"), SeriesSpec(), 2
    )
    report = _deidentify(tmp_path, [ct, clean])
    assert report.instances_out == 1 and report.blanked_instances == 0
    assert report.filtered == {FilterReason.BURNED_IN.value: 1}


def test_the_date_shift_differs_between_patients_and_holds_within_one(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, make_project(deid={"dates": "shift", "date_shift_days_max": 60}))
    shifted: dict[str, set[str]] = {}
    for patient in range(8):
        for study in range(2):
            spec = StudySpec(
                patient_id=f"MRN-{patient:04d}", accession_number=f"ACC-{patient}-{study}"
            )
            raw = tmp_path / f"raw-{patient}-{study}"
            write_study(spec, raw)
            report = engine.deidentify_study(
                iter_study_files(raw), tmp_path / f"out-{patient}-{study}", StudyIdentifiers()
            )
            dates = {str(pydicom.dcmread(p).StudyDate) for p in report.output_files}
            shifted.setdefault(spec.patient_id, set()).update(dates)
    assert all(len(dates) == 1 for dates in shifted.values())  # one shift per patient
    distinct = {next(iter(dates)) for dates in shifted.values()}
    assert "20240301" not in distinct  # every date moved
    assert len(distinct) >= 5  # eight patients, shifts of 1..60 days: not one shift for all


@pytest.mark.parametrize(("maximum", "bound"), [(7, 7), (0, 365)])
def test_every_shift_stays_within_the_configured_maximum(
    tmp_path: Path, maximum: int, bound: int
) -> None:
    """``date_shift_days_max`` bounds every patient's shift (1..maximum days earlier); a maximum
    of 0 with ``dates: shift`` still shifts, by up to a year, rather than keep true dates."""
    from datetime import date

    engine = make_engine(
        tmp_path, make_project(deid={"dates": "shift", "date_shift_days_max": maximum})
    )
    shifts = set()
    for patient in range(12):
        raw = tmp_path / f"raw-{patient}"
        write_study(StudySpec(patient_id=f"MRN-{patient:04d}", accession_number=f"A{patient}"), raw)
        report = engine.deidentify_study(
            iter_study_files(raw), tmp_path / f"out-{patient}", StudyIdentifiers()
        )
        moved = str(pydicom.dcmread(report.output_files[0]).StudyDate)
        shifts.add((date(2024, 3, 1) - date(int(moved[:4]), int(moved[4:6]), int(moved[6:]))).days)
    assert all(1 <= shift <= bound for shift in shifts), sorted(shifts)
    assert len(shifts) > 1  # twelve patients, not one shift for all


def test_study_identifiers_sort_values_and_never_print_them() -> None:
    identifiers = StudyIdentifiers()
    identifiers.add(" 47000022 ")
    identifiers.add("47000022")  # the same value once
    identifiers.add("1.2.826.0.1.3680043.9.7433.1.77")
    identifiers.add("  ")
    identifiers.add("AB", min_length=3)  # too short to be looked for
    identifiers.add("ABC", min_length=3)
    identifiers.add("Q")  # any length by default
    identifiers.add_uid("1.2.3.4")
    identifiers.add_name("DOE^JANE")
    identifiers.add_birth_date("19610314")
    assert identifiers.ids == {"47000022", "ABC", "Q"}
    assert identifiers.uids == {"1.2.826.0.1.3680043.9.7433.1.77", "1.2.3.4"}
    assert identifiers.names == {"DOE^JANE"}
    assert identifiers.birth_dates == {"19610314"}
    identifiers.add_name(" ")  # nothing
    assert identifiers.names == {"DOE^JANE"}
    assert len(identifiers) == 7
    assert repr(identifiers) == str(identifiers) == "StudyIdentifiers(7 values)"


def test_a_value_added_after_matching_began_is_matched_too() -> None:
    """The compiled matcher is rebuilt when a value is added (the engine adds each instance's
    identifiers as it reads them), and kept when nothing was."""
    identifiers = StudyIdentifiers()
    identifiers.add("47000022")
    first = identifiers.matcher()
    assert first.find("MRN 47000022") and not first.find("seen by Jane Doe on 14/03/1961")
    assert identifiers.matcher() is first
    identifiers.add("47000022")  # nothing new: the same matcher
    assert identifiers.matcher() is first
    for add, value, text in [
        (identifiers.add_name, "DOE^JANE", "seen by Jane Doe"),
        (identifiers.add_birth_date, "19610314", "born 14/03/1961"),
        (
            identifiers.add_uid,
            "1.2.826.0.1.3680043.9.7433.1.78",
            "ref 1.2.826.0.1.3680043.9.7433.1.78",
        ),
        (identifiers.add, "ACC5566778", "acc 5566778"),
    ]:
        add(value)
        assert identifiers.matcher().find(text), value


def test_with_a_maximum_of_0_no_shift_exceeds_a_year() -> None:
    """The shift that stands in for ``date_shift_days_max: 0`` spans 1..365 days for any
    patient (2,000 of them here: every value of a 366-day span would be met with 99.6%)."""
    from datetime import date

    from tests.helpers.deid import make_engine as engine_for

    with tempfile.TemporaryDirectory() as folder:
        engine = engine_for(
            Path(folder), make_project(deid={"dates": "shift", "date_shift_days_max": 0})
        )
        spec = StudySpec(patient_id="MRN-0", accession_number="ACC-0")
        template = make_instance(spec, SeriesSpec(), 1)
        shifts = set()
        for patient in range(2000):
            ds = copy.deepcopy(template)
            ds.PatientID = f"MRN-{patient:05d}"
            engine.deidentify_dataset(ds)
            moved = str(ds.StudyDate)
            day = date(int(moved[:4]), int(moved[4:6]), int(moved[6:]))
            shifts.add((date(2024, 3, 1) - day).days)
    assert min(shifts) >= 1 and max(shifts) <= 365, (min(shifts), max(shifts))
    assert len(shifts) > 300  # spread over the year, not a few values
