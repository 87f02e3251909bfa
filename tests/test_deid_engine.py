"""The de-identification engine: every operation, filter and check, on generated studies and on
pydicom's sample files."""

import os
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from tests.helpers.deid import make_engine, make_project
from voxl_assets.deid.checks import check_output, disallowed_tags, identifier_hits
from voxl_assets.deid.engine import (
    Deidentifier,
    DeidReport,
    FilterReason,
    iter_study_files,
)
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.operations import TagOperationsError, load_operations_file, load_policy
from voxl_assets.deid.values import clamp_age, transform_date, transform_datetime, transform_time
from voxl_assets.project_config import ProjectDefinition
from voxl_assets.synthetic import SeriesSpec, StudySpec, make_instance, write_study

MRN = "MRN4455667"
ACCESSION = "ACC11223344"


def _spec(**kwargs: Any) -> StudySpec:
    return StudySpec(patient_id=MRN, accession_number=ACCESSION, **kwargs)


def _run(
    tmp_path: Path, spec: StudySpec, project: ProjectDefinition | None = None
) -> tuple[Deidentifier, DeidReport, StudyIdentifiers]:
    engine = make_engine(tmp_path, project)
    write_study(spec, tmp_path / "raw")
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    identifiers.add(ACCESSION)
    report = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", identifiers
    )
    return engine, report, identifiers


def test_allow_list_removes_everything_not_listed_and_keeps_what_is(tmp_path: Path) -> None:
    engine, report, identifiers = _run(tmp_path, _spec(series=[SeriesSpec(instances=3)]))
    assert report.instances_out == 3 and not report.filtered
    ds = pydicom.dcmread(report.output_files[0])
    assert "InstitutionName" not in ds  # not listed: removed
    assert not any(elem.tag.is_private for elem in ds)  # private block removed
    assert ds.Modality == "CT" and ds.KVP == 120  # keep
    assert ds.PatientName == "ANONYMOUS" and ds.ReferringPhysicianName == "ANONYMOUS"  # replace
    assert ds.PatientBirthDate == "19000101"  # replace, valid DA
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.pixel_array.shape == (64, 64)
    allow, leaks = check_output(report.output_files, engine.policy, identifiers)
    assert allow.passed and leaks.passed, (allow.summary(), leaks.summary())


def test_replace_uid_is_consistent_and_keeps_references(tmp_path: Path) -> None:
    spec = _spec(series=[SeriesSpec(instances=2), SeriesSpec(instances=2, number=2)])
    engine, report, _ = _run(tmp_path, spec)
    datasets = [pydicom.dcmread(p) for p in report.output_files]
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    assert len(studies) == 1 and spec.study_uid not in studies
    assert len({str(ds.SeriesInstanceUID) for ds in datasets}) == 2
    assert len({str(ds.SOPInstanceUID) for ds in datasets}) == 4
    referenced = {str(ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID) for ds in datasets}
    assert referenced == {engine.hasher.uid(spec.referenced_sop_uid)}
    assert {str(ds.FrameOfReferenceUID) for ds in datasets} == {
        engine.hasher.uid(spec.frame_of_reference_uid)
    }
    for ds in datasets:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(str(ds.SOPInstanceUID)) <= 64 and str(ds.SOPInstanceUID).startswith("2.25.")
    assert report.pseudo_study_uid == studies.pop()


def test_secure_hash_fits_the_vr_and_is_stable(tmp_path: Path) -> None:
    engine, report, _ = _run(tmp_path, _spec())
    ds = pydicom.dcmread(report.output_files[0])
    assert ds.PatientID == engine.hasher.hash(MRN, 64) and len(ds.PatientID) == 64
    assert ds.AccessionNumber == engine.hasher.hash(ACCESSION, 16)  # SH: 16 characters
    assert report.pseudo_patient_id == ds.PatientID


def test_hashes_differ_between_projects(tmp_path: Path) -> None:
    one = make_engine(tmp_path, make_project("project-one"))
    two = make_engine(tmp_path, make_project("project-two"))
    assert one.hasher.hash(MRN) != two.hasher.hash(MRN)
    assert one.hasher.uid("1.2.3") != two.hasher.uid("1.2.3")
    assert one.hasher.hash(MRN) == make_engine(tmp_path, make_project("project-one")).hasher.hash(
        MRN
    )


@pytest.mark.parametrize(
    ("option", "expected_date", "expected_time"),
    [
        ("keep", "20240317", "093000"),
        ("truncate_to_year", "20240101", "090000"),
        ("truncate_to_month", "20240301", "090000"),
    ],
)
def test_date_options(tmp_path: Path, option: str, expected_date: str, expected_time: str) -> None:
    project = make_project(deid={"dates": option})
    spec = _spec(study_datetime=datetime(2024, 3, 17, 9, 30))
    _, report, _ = _run(tmp_path, spec, project)
    ds = pydicom.dcmread(report.output_files[0])
    assert (ds.StudyDate, ds.StudyTime) == (expected_date, expected_time)
    assert ds.SeriesDate == expected_date


def test_date_shift_moves_a_patients_dates_together(tmp_path: Path) -> None:
    project = make_project(deid={"dates": "shift", "date_shift_days_max": 30})
    _, report, _ = _run(tmp_path, _spec(), project)
    ds = pydicom.dcmread(report.output_files[0])
    assert ds.StudyDate != "20240301" and ds.StudyDate == ds.SeriesDate
    assert "20240130" <= ds.StudyDate < "20240301"


def test_value_rules() -> None:
    assert transform_date("20240317", "truncate_to_year", 0) == "20240101"
    assert transform_date("20240317", "shift", 20) == "20240226"
    assert transform_date("garbage", "shift", 3) == "19000101"
    assert transform_time("101530.25", "truncate_to_month") == "100000"
    assert transform_datetime("20240317101530", "truncate_to_month", 0) == "20240301100000"
    assert clamp_age("095Y", 0, 89) == "089Y"
    assert clamp_age("006M", 0, 89) == "006M"
    assert clamp_age("bad", 0, 89) == "000Y"


@pytest.mark.parametrize(
    ("text", "option", "shift", "expected"),
    [
        ("20240317", "keep", 20, "20240317"),
        ("", "shift", 20, ""),
        ("   ", "truncate_to_year", 0, "   "),
        (" 20240317 ", "truncate_to_month", 0, "20240301"),
        ("20240317", "truncate_to_month", 0, "20240301"),
        ("20241217", "truncate_to_month", 0, "20241201"),  # a two-digit month
        ("20240101", "shift", 1, "20231231"),  # across a year
        ("20240317", "shift", 0, "20240317"),
        ("2024031", "shift", 3, "19000101"),  # seven digits
        ("202403171", "shift", 3, "19000101"),  # nine
        ("2024-3-17", "truncate_to_year", 0, "19000101"),  # not all digits
        ("20240230", "truncate_to_year", 0, "19000101"),  # no such day
    ],
)
def test_dates_under_each_option(text: str, option: str, shift: int, expected: str) -> None:
    assert transform_date(text, option, shift) == expected  # type: ignore[arg-type]


def test_times_and_date_times_under_each_option() -> None:
    assert transform_time("101530", "keep") == "101530"
    assert transform_time("101530", "shift") == "101530"  # a shift moves days, not hours
    assert transform_time("", "truncate_to_year") == ""
    assert transform_time("1015", "truncate_to_year") == "100000"
    assert transform_time("xx15", "truncate_to_year") == "000000"
    assert transform_datetime("20240317101530+0100", "keep", 5) == "20240317101530+0100"
    assert transform_datetime("  ", "shift", 5) == ""
    assert transform_datetime("20240317101530", "shift", 17) == "20240229101530"
    # fractional seconds and an offset are dropped, whatever the option
    assert transform_datetime("20240317101530.123456+0100", "shift", 17) == "20240229101530"
    assert transform_datetime("20240317", "truncate_to_year", 0) == "20240101"
    assert transform_datetime("2024", "truncate_to_month", 0) == "19000101"  # 20240000
    assert transform_datetime("2024", "shift", 1) == "19000101"  # 20240000: no such day
    assert transform_datetime("202", "shift", 1) == "19000101"
    assert transform_datetime("202403171015", "truncate_to_year", 0) == "20240101100000"


def test_a_hash_fills_what_its_vr_allows_up_to_64_characters() -> None:
    """PS3.5 6.2's maximum lengths (pydicom's table; PN and UC, per component group and
    unlimited, take Azure's 64), so a secure hash is as long as it may be and no longer."""
    from pydicom.valuerep import MAX_VALUE_LEN

    from voxl_assets.deid.hashing import MAX_HASH_LENGTH
    from voxl_assets.deid.values import MAX_LENGTH_BY_VR

    assert set(MAX_LENGTH_BY_VR) == {"AE", "CS", "SH", "LO", "PN", "UC", "UI"}
    for vr, length in MAX_LENGTH_BY_VR.items():
        assert length == min(MAX_VALUE_LEN.get(vr, MAX_HASH_LENGTH), MAX_HASH_LENGTH), vr


def test_numbers_and_ages_are_clamped_at_their_bounds() -> None:
    from pydicom.config import RAISE
    from pydicom.valuerep import validate_value

    from voxl_assets.deid.values import DUMMY_BY_VR, clamp_number, dummy_value

    assert clamp_number(5, 10, 20) == 10 and clamp_number(25, 10, 20) == 20
    assert clamp_number(15, 10, 20) == 15 and clamp_number(-3, None, None) == -3
    assert clamp_number(25, None, 20) == 20 and clamp_number(5, 10, None) == 10
    assert clamp_age("", 0, 89) == ""
    assert clamp_age(" 090Y ", 0, 89) == "089Y"
    assert clamp_age("089Y", 0, 89) == "089Y"
    assert clamp_age("010Y", 18, 89) == "018Y"
    assert clamp_age("120D", 0, 89) == "120D" and clamp_age("052W", 0, 89) == "052W"
    assert clamp_age("09Y", 0, 89) == "000Y" and clamp_age("0090Y", 0, 89) == "000Y"
    assert clamp_age("0x9Y", 0, 89) == "000Y" and clamp_age("090A", 0, 89) == "000Y"
    for vr, dummy in DUMMY_BY_VR.items():  # valid for its VR (the README's promise)
        assert dummy_value(vr) == dummy
        validate_value(vr, dummy, RAISE)
    assert dummy_value("OB") == b"" and dummy_value("UN") == b"" and dummy_value("SQ") == ""


def test_numeric_range_caps_age_and_weight(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.PatientAge = "097Y"
    ds.PatientWeight = 999
    engine.deidentify_dataset(ds)
    assert ds.PatientAge == "089Y"
    assert float(ds.PatientWeight) == 300


def test_sequences_are_cleaned_recursively(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    item = ds.ReferencedImageSequence[0]
    item.PatientName = "HIDDEN^NAME"  # the same rules inside items: replaced
    item.OperatorsName = "HIDDEN^OPERATOR"  # not listed: removed
    inner = Dataset()
    inner.AccessionNumber = ACCESSION
    inner.InstitutionName = "NESTED"
    item.SourceImageSequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([Dataset()])  # not listed at all
    engine.deidentify_dataset(ds)
    item = ds.ReferencedImageSequence[0]
    assert item.PatientName == "ANONYMOUS" and "OperatorsName" not in item
    nested = item.SourceImageSequence[0]
    assert "InstitutionName" not in nested
    assert nested.AccessionNumber == engine.hasher.hash(ACCESSION, 16)
    assert "RequestAttributesSequence" not in ds


def test_manufacturer_override_keeps_listed_private_tags_only(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(manufacturer="SIEMENS"), SeriesSpec(), 1)
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", 1000)  # B_value: kept by the override
    block.add_new(0x0B, "DS", 5.0)  # not listed: removed
    other = make_instance(_spec(manufacturer="PHILIPS"), SeriesSpec(), 1)
    other_block = other.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    other_block.add_new(0x0C, "IS", 1000)
    engine.deidentify_dataset(ds)
    engine.deidentify_dataset(other)
    kept = ds.private_block(0x0019, "SIEMENS MR HEADER")
    assert kept[0x0C].value == 1000
    assert 0x0B not in [
        t.element & 0xFF for t in ds.keys() if t.group == 0x0019 and t.element > 0xFF
    ]
    assert not any(t.is_private for t in other.keys())  # override applies to Siemens only
    assert (0x0011, 0x0010) not in ds  # the synthetic private creator is gone with its block


def test_filters_are_counted_with_their_reasons(tmp_path: Path) -> None:
    project = make_project(
        series_filters={"description_patterns": ["scout"], "min_instances": 2},
        allowed_manufacturers=[{"regex": "(?i)siemens", "exclude_series_numbers": [99]}],
    )
    spec = _spec(
        series=[
            SeriesSpec(instances=3, number=1),
            SeriesSpec(instances=2, description="SCOUT", number=2),
            SeriesSpec(instances=1, number=3),
            SeriesSpec(instances=2, number=99),
        ]
    )
    _, report, _ = _run(tmp_path, spec, project)
    assert report.instances_out == 3
    assert report.filtered == {
        FilterReason.SERIES_DESCRIPTION.value: 2,
        FilterReason.TOO_FEW_INSTANCES.value: 1,
        FilterReason.SERIES_NUMBER.value: 2,
    }


def test_modality_and_manufacturer_filters(tmp_path: Path) -> None:
    project = make_project(project={"modalities": ["MR"]})
    _, report, _ = _run(tmp_path, _spec(), project)
    assert report.instances_out == 0 and report.filtered == {FilterReason.MODALITY.value: 3}
    project = make_project(allowed_manufacturers=[{"regex": "(?i)philips"}])
    _, report, _ = _run(tmp_path / "b", _spec(), project)
    assert report.filtered == {FilterReason.MANUFACTURER.value: 3}


def test_secondary_capture_and_burned_in_annotation_are_rejected_unless_allowed(
    tmp_path: Path,
) -> None:
    engine = make_engine(tmp_path, make_project(project={"modalities": ["CT", "OT"]}))
    sc = make_instance(_spec(modality="OT"), SeriesSpec(), 1)
    assert engine.instance_filter(sc) is FilterReason.SECONDARY_CAPTURE
    burned = make_instance(_spec(), SeriesSpec(), 1)
    burned.BurnedInAnnotation = "YES"
    assert engine.instance_filter(burned) is FilterReason.BURNED_IN
    allowing = make_engine(
        tmp_path / "b",
        make_project(
            project={"modalities": ["CT", "OT"]},
            deid={"allow_secondary_capture": True, "allow_burned_in_annotation": True},
        ),
    )
    assert allowing.instance_filter(sc) is None
    assert allowing.instance_filter(burned) is None


def _ultrasound(spec: StudySpec, regions: bool) -> Dataset:
    ds = make_instance(spec, SeriesSpec(), 1)
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = np.full((spec.rows, spec.columns), 500, dtype=np.uint16).tobytes()
    if regions:
        region = Dataset()
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 10, 20
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 29, 39
        region.RegionSpatialFormat = 1
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def test_ultrasound_is_blanked_outside_its_regions(tmp_path: Path) -> None:
    project = make_project(deid={"blank_ultrasound_outside_regions": True})
    engine = make_engine(tmp_path, project)
    spec = _spec(modality="US")
    raw = tmp_path / "raw"
    raw.mkdir()
    _ultrasound(spec, regions=True).save_as(raw / "with.dcm", enforce_file_format=True)
    _ultrasound(spec, regions=False).save_as(raw / "without.dcm", enforce_file_format=True)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    assert report.instances_out == 1 and report.blanked_instances == 1
    assert report.filtered == {FilterReason.ULTRASOUND_NO_REGIONS.value: 1}
    pixels = pydicom.dcmread(report.output_files[0]).pixel_array
    assert (pixels[20:40, 10:30] == 500).all()
    assert pixels.sum() == 500 * 20 * 20  # everything outside the region is zero
    without_option = make_engine(tmp_path / "b")
    assert without_option.instance_filter(_ultrasound(spec, regions=True)) is FilterReason.BURNED_IN


def test_checks_catch_a_disallowed_tag_and_an_identifier(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    engine.deidentify_dataset(ds)
    operations = engine.policy.for_manufacturer("SIEMENS")
    assert disallowed_tags(ds, operations) == []
    ds.InstitutionName = "LEAKED"
    ds.SeriesDescription = f"follow-up for {MRN.lower()}"
    ds.ReferencedImageSequence[0].StudyComments = "x"
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    assert disallowed_tags(ds, operations) == ["(0008,0080)", "(0008,1140)[0].(0032,4000)"]
    assert identifier_hits(ds, identifiers) == ["(0008,103E)"]
    birth = StudyIdentifiers()
    birth.add_birth_date("20240301")
    assert identifier_hits(ds, birth) == []  # a study date equal to a birth date is not a leak
    ds.StudyComments = "born 20240301"
    assert identifier_hits(ds, birth) == ["(0032,4000)"]


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm", "JPEG2000.dcm"]
)
def test_pydicom_sample_files_come_out_valid_and_clean(tmp_path: Path, name: str) -> None:
    source = Path(str(get_testdata_file(name)))
    original = pydicom.dcmread(source)
    project = make_project(
        project={"modalities": [str(original.Modality)]},
        allowed_manufacturers=[{"regex": ".*"}],
        deid={"allow_secondary_capture": True},  # JPEG2000.dcm is a secondary capture
    )
    engine = make_engine(tmp_path, project)
    identifiers = StudyIdentifiers()
    report = engine.deidentify_study([source], tmp_path / "out", identifiers)
    assert report.instances_out == 1
    out = pydicom.dcmread(report.output_files[0])
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert str(out.StudyInstanceUID) != str(original.StudyInstanceUID)
    if "PixelData" in original:
        assert out.PixelData == original.PixelData  # pixels untouched (no burned-in option)
    allow, leaks = check_output(report.output_files, engine.policy, identifiers)
    assert allow.passed and leaks.passed, (allow.summary(), leaks.summary())
    assert len(identifiers) > 0  # the source's own identifiers were collected


def test_bad_tag_operation_files_name_the_file_and_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("operations:\n  - {keyword: PatientNmae, op: keep}\n")
    with pytest.raises(TagOperationsError, match=r"bad.yaml: operations\[0\].*PatientNmae"):
        load_operations_file(bad)
    bad.write_text("operations:\n  - {keyword: PatientName, op: scramble}\n")
    with pytest.raises(TagOperationsError, match="op must be one of"):
        load_operations_file(bad)
    bad.write_text("operations:\n  - {group: 0x0010, private_creator: X, element: 1, op: keep}\n")
    with pytest.raises(TagOperationsError, match="odd"):
        load_operations_file(bad)
    override = tmp_path / "override.yaml"
    override.write_text("manufacturer: '(['\noperations: []\n")
    with pytest.raises(TagOperationsError, match="override.yaml: manufacturer"):
        load_policy(tmp_path, [], ["override.yaml"])


def test_tag_operation_entries_are_read_as_written(tmp_path: Path) -> None:
    """Each form of entry lands on the tag it names, with its bounds and fixed value."""
    from voxl_assets.deid.operations import Op, Operation

    ops = tmp_path / "ops.yaml"
    ops.write_text(
        "operations:\n"
        "  - {tag: '(0010, 0040)', op: keep}\n"
        "  - {tag: '0008,1030', name: Description, op: replace, value: X}\n"
        "  - {keyword: PatientAge, op: numeric_range, min: 18, max: 89}\n"
        "  - {keyword: PatientWeight, op: numeric_range, max: 200.5}\n"
        "  - {group: 0x0019, private_creator: ACME 1.1, element: 0x10, op: keep}\n"
        "  - {group: 0x0029, private_creator: ACME, element: 0xFF, name: Dose, op: delete}\n"
        "  - {group: 0x0029, private_creator: ACME, element: 0, op: keep}\n"
    )
    loaded = load_operations_file(ops)
    assert loaded.public == {
        0x00100040: Operation(Op.KEEP, "(0010, 0040)"),
        0x00081030: Operation(Op.REPLACE, "Description", value="X"),
        0x00101010: Operation(Op.NUMERIC_RANGE, "PatientAge", 18.0, 89.0),
        0x00101030: Operation(Op.NUMERIC_RANGE, "PatientWeight", None, 200.5),
    }
    assert loaded.private == {
        (0x0019, "ACME 1.1", 0x10): Operation(Op.KEEP, "(0019,xx10)"),
        (0x0029, "ACME", 0xFF): Operation(Op.DELETE, "Dose"),
        (0x0029, "ACME", 0x00): Operation(Op.KEEP, "(0029,xx00)"),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("[keep]", "expected a mapping, got list"),
        ("{keyword: PatientName, op: keep, colour: red}", r"unknown field\(s\) \['colour'\]"),
        ("{keyword: PatientAge, op: numeric_range}", "numeric_range needs min and/or max"),
        ("{keyword: PatientAge, op: numeric_range, min: ten}", "min must be a number"),
        ("{keyword: PatientAge, op: numeric_range, max: [1]}", "max must be a number"),
        ("{tag: '0010', op: keep}", "tag must look like 'gggg,eeee'"),
        ("{tag: 'zz10,0010', op: keep}", "tag must look like 'gggg,eeee'"),
        ("{op: keep}", "needs keyword, tag, or group"),
        ("{tag: '0019,0010', op: keep}", "private tags need group, private_creator"),
        (
            "{group: 0x0019, private_creator: X, element: 256, op: keep}",
            "element must be the offset 0x00-0xFF",
        ),
        (
            "{group: 0x0019, private_creator: X, element: -1, op: keep}",
            "element must be the offset 0x00-0xFF",
        ),
        (
            "{group: 0x0019, private_creator: X, element: '1', op: keep}",
            "element must be the offset 0x00-0xFF",
        ),
        ("{group: '0x0019', private_creator: X, element: 1, op: keep}", "group must be an odd"),
    ],
)
def test_each_bad_entry_is_refused_naming_what_is_wrong(
    tmp_path: Path, entry: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"operations:\n  - {{keyword: PatientID, op: keep}}\n  - {entry}\n")
    with pytest.raises(TagOperationsError, match=r"bad.yaml: operations\[1\]: " + message):
        load_operations_file(bad)
    bad.write_text("operations: {keyword: PatientID, op: keep}\n")
    with pytest.raises(TagOperationsError, match="expected a mapping with an 'operations' list"):
        load_operations_file(bad)


def test_later_files_and_matching_overrides_win(tmp_path: Path) -> None:
    """Base files merge in order (later wins); an override applies to the manufacturers its
    regex matches, on top of the base, and to no other."""
    from voxl_assets.deid.operations import Op

    identity = [{"keyword": k, "op": op} for k, op in IDENTITY.items()]
    first = [
        *identity,
        {"keyword": "PatientSex", "op": "keep"},
        {"keyword": "Modality", "op": "keep"},
    ]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"operations": first}))
    second = [{"keyword": "PatientSex", "op": "delete"}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"operations": second}))
    vendor = [
        {"keyword": "Modality", "op": "delete"},
        {"keyword": "BodyPartExamined", "op": "keep"},
    ]
    (tmp_path / "v.yaml").write_text(
        yaml.safe_dump({"manufacturer": "(?i)^acme", "operations": vendor})
    )
    policy = load_policy(tmp_path, ["a.yaml", "b.yaml"], ["v.yaml"])
    assert policy.base.public[0x00100040].op is Op.DELETE  # b.yaml after a.yaml
    other = policy.for_manufacturer("Other Corp")
    assert other.public[0x00080060].op is Op.KEEP and 0x00180015 not in other.public
    acme = policy.for_manufacturer("ACME Medical")
    assert acme.public[0x00080060].op is Op.DELETE and acme.public[0x00180015].op is Op.KEEP
    assert policy.for_manufacturer("ACME Medical") is acme  # once per manufacturer
    assert policy.for_manufacturer("Other Corp") is other


IDENTITY = {
    "SOPClassUID": "keep",
    "SOPInstanceUID": "replace_uid",
    "StudyInstanceUID": "replace_uid",
    "SeriesInstanceUID": "replace_uid",
}


@pytest.mark.parametrize("keyword", sorted(IDENTITY))
@pytest.mark.parametrize("wrong", ["delete", "keep", "replace", "missing"])
@pytest.mark.parametrize("where", ["base", "override"])
def test_an_allow_list_without_the_instance_identity_is_refused(
    tmp_path: Path, keyword: str, wrong: str, where: str
) -> None:
    # Without a pseudonymous SOPInstanceUID every output file would be named alike and overwrite
    # the others while being counted as written; a kept instance UID fails every study.
    if wrong == IDENTITY[keyword]:
        wrong = "delete"
    entries = [{"keyword": k, "op": op} for k, op in IDENTITY.items()]
    changed = [e for e in entries if e["keyword"] != keyword]
    if wrong != "missing":
        changed.append({"keyword": keyword, "op": wrong})
    base, override = (changed, []) if where == "base" else (entries, changed)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"operations": base}))
    (tmp_path / "vendor.yaml").write_text(
        yaml.safe_dump({"manufacturer": "(?i)acme", "operations": override})
    )
    expected = "base.yaml" if where == "base" else "vendor.yaml"
    if where == "override" and wrong == "missing":
        load_policy(tmp_path, ["base.yaml"], ["vendor.yaml"])  # the base's operation stands
        return
    with pytest.raises(TagOperationsError, match=rf"{expected}: {keyword} must have op"):
        load_policy(tmp_path, ["base.yaml"], ["vendor.yaml"])


# --- the pixel data copy: in the kernel, else portably ------------------------------------------


def _copy_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: Any, payload: bytes, offset: int
) -> bytes:
    from voxl_assets.deid import engine as engine_module

    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    if kernel is not None:
        monkeypatch.setattr(engine_module.os, "copy_file_range", kernel)
    with source.open("rb") as src, (tmp_path / "target.bin").open("w+b") as out:
        out.write(b"HEADER")  # the instance's header, written before its pixel data
        engine_module._copy_range(src, out, offset, len(payload) - offset)
        assert out.tell() == len(b"HEADER") + len(payload) - offset  # the file's end, as written
        out.write(b"TAIL")  # later writes go after the copy
    return (tmp_path / "target.bin").read_bytes()


PAYLOAD = bytes(range(256)) * 9000  # a little over 2 MiB: more than one portable chunk


_KERNEL_COPY = os.copy_file_range


class _RecordingKernel:
    """``os.copy_file_range`` copying at most ``limit`` bytes a call, recording each call's ask
    and what it copied."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.asked: list[int] = []
        self.copied: list[int] = []

    def __call__(self, src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        self.asked.append(count)
        sent = _KERNEL_COPY(src, dst, min(count, self.limit or count), offset_src)
        self.copied.append(sent)
        return sent


@pytest.mark.parametrize("offset", [0, 1000])
def test_pixel_data_copies_in_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    kernel = _RecordingKernel()
    assert _copy_with(tmp_path, monkeypatch, kernel, PAYLOAD, offset) == (
        b"HEADER" + PAYLOAD[offset:] + b"TAIL"
    )
    assert sum(kernel.copied) == len(PAYLOAD) - offset  # all in the kernel, none read portably


def test_a_kernel_that_copies_in_pieces_is_asked_until_all_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = _RecordingKernel(limit=300_000)
    assert _copy_with(tmp_path, monkeypatch, kernel, PAYLOAD, 1000) == (
        b"HEADER" + PAYLOAD[1000:] + b"TAIL"
    )
    assert sum(kernel.copied) == len(PAYLOAD) - 1000 and len(kernel.copied) > 1  # none portably


def _refusing(*args: Any) -> int:
    raise OSError(18, "Invalid cross-device link")


def _partial_then_refusing() -> Any:
    """Copies 5,000 bytes in the kernel, then fails: the portable copy must start again."""
    import os as real_os

    calls = {"n": 0}
    real = real_os.copy_file_range

    def kernel(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(src, dst, min(count, 5000), offset_src)
        raise OSError(95, "Operation not supported")

    return kernel


def _partial_then_nothing() -> Any:
    """Copies 7,000 bytes, then reports 0 (an early end): the portable copy must start again."""
    import os as real_os

    calls = {"n": 0}
    real = real_os.copy_file_range

    def kernel(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        calls["n"] += 1
        return real(src, dst, min(count, 7000), offset_src) if calls["n"] == 1 else 0

    return kernel


@pytest.mark.parametrize("offset", [0, 1000])
@pytest.mark.parametrize("kernel", ["refusing", "partial-then-refusing", "partial-then-nothing"])
def test_pixel_data_copies_portably_when_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int, kernel: str
) -> None:
    fake = {
        "refusing": lambda: _refusing,
        "partial-then-refusing": _partial_then_refusing,
        "partial-then-nothing": _partial_then_nothing,
    }[kernel]()
    assert _copy_with(tmp_path, monkeypatch, fake, PAYLOAD, offset) == (
        b"HEADER" + PAYLOAD[offset:] + b"TAIL"
    )


def test_a_source_that_ends_inside_its_pixel_data_is_refused_by_the_portable_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.deid import engine as engine_module
    from voxl_assets.deid.engine import DeidError

    source = tmp_path / "short.bin"
    source.write_bytes(b"x" * 100)
    monkeypatch.setattr(engine_module.os, "copy_file_range", _refusing)
    with (
        source.open("rb") as src,
        (tmp_path / "target.bin").open("w+b") as out,
        pytest.raises(DeidError, match="ended inside its pixel data"),
    ):
        engine_module._copy_range(src, out, 0, 200)


def test_a_study_written_with_the_portable_copy_is_the_same_as_with_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.deid import engine as engine_module

    engine = make_engine(tmp_path)
    write_study(_spec(series=[SeriesSpec(instances=2)]), tmp_path / "raw")

    def written(out: str) -> list[bytes]:
        identifiers = StudyIdentifiers()
        identifiers.add(MRN)
        report = engine.deidentify_study(
            iter_study_files(tmp_path / "raw"), tmp_path / out, identifiers
        )
        return sorted(p.read_bytes() for p in report.output_files)

    by_kernel = written("kernel")
    monkeypatch.setattr(engine_module.os, "copy_file_range", _refusing)
    assert written("portable") == by_kernel and len(by_kernel) == 2


def test_an_output_check_error_names_the_file_and_only_what_failed() -> None:
    from voxl_assets.deid.engine import OutputCheckError

    tags = [f"(0009,00{n:02X})" for n in range(7)]
    assert str(OutputCheckError("a.dcm", tags, [])) == (
        "a.dcm: tags outside the allow-list: " + ", ".join(tags[:5])
    )
    places = [f"(0008,10{n:02X})" for n in range(7)]
    assert str(OutputCheckError("b.dcm", [], places)) == (
        "b.dcm: identifiers in: " + ", ".join(places[:5])
    )
    both = OutputCheckError("c.dcm", ["(0009,0010)"], ["(0010,0020)"])
    assert (
        str(both) == "c.dcm: tags outside the allow-list: (0009,0010); identifiers in: (0010,0020)"
    )
    assert both.file_name == "c.dcm" and both.disallowed == ["(0009,0010)"]
    assert both.leaks == ["(0010,0020)"]


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("US", "1.2.840.10008.5.1.4.1.1.2"),  # by modality alone (a CT storage class)
        ("OT", "1.2.840.10008.5.1.4.1.1.6.1"),  # by storage class alone (Ultrasound Image)
        ("OT", "1.2.840.10008.5.1.4.1.1.3.1"),  # Ultrasound Multi-frame Image, one frame
    ],
)
def test_an_instance_is_ultrasound_by_its_modality_or_its_storage_class(
    tmp_path: Path, modality: str, sop_class: str
) -> None:
    """Either mark is enough for blanking: burned-in text on an ultrasound image known by only
    one of them is blanked outside its regions, not passed through or filtered."""
    project = make_project(
        project={"slug": "us-test", "name": "us-test", "modalities": ["US", "OT"]},
        deid={"blank_ultrasound_outside_regions": True},
    )
    engine = make_engine(tmp_path, project)
    ds = _ultrasound(_spec(modality=modality), regions=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = modality
    raw = tmp_path / "raw"
    raw.mkdir()
    ds.save_as(raw / "one.dcm", enforce_file_format=True)
    assert engine.instance_filter(ds) is None  # blanked in pass 2, not filtered as burned in
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    assert report.instances_out == 1 and report.blanked_instances == 1, report
    pixels = pydicom.dcmread(report.output_files[0]).pixel_array
    assert pixels.sum() == 500 * 20 * 20  # everything outside the region is zero


def test_header_values_of_empty_and_multi_valued_elements() -> None:
    from voxl_assets.deid.engine import header_value, header_values

    ds = Dataset()
    ds.SeriesNumber = None  # present, no value (a converted element)
    ds.SeriesDescription = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientWeight = 71.5
    assert header_values(ds, "SeriesNumber") == [] and header_value(ds, "SeriesNumber") == ""
    assert header_values(ds, "SeriesDescription") == []
    assert header_values(ds, "ImageType") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert header_values(ds, "PatientWeight") == ["71.5"]
    assert header_values(ds, "PatientName") == []  # absent
    with pytest.raises(KeyError):
        header_values(ds, "NotAKeyword")


# --- pass 2 meets what pass 1 did not ----------------------------------------------------------


@pytest.mark.parametrize("change", ["removed", "overwritten"])
def test_a_file_gone_between_the_passes_is_refused_and_the_rest_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    from voxl_assets.deid import engine as engine_module
    from voxl_assets.deid.header_scan import Refusal

    engine = make_engine(tmp_path)
    write_study(_spec(series=[SeriesSpec(instances=3)]), tmp_path / "raw")
    files = iter_study_files(tmp_path / "raw")
    scan = engine_module.scan_instance

    def scan_then_lose_the_first(path: Path) -> Any:
        scanned = scan(path)
        if path == files[-1]:  # pass 1 is over: the first file goes before pass 2 opens it
            if change == "removed":
                files[0].unlink()
            else:
                files[0].write_bytes(b"no longer DICOM")
        return scanned

    monkeypatch.setattr(engine_module, "scan_instance", scan_then_lose_the_first)
    report = engine.deidentify_study(files, tmp_path / "out", StudyIdentifiers())
    assert report.refused == {Refusal.UNREADABLE.value: 1}
    assert report.instances_out == 2 and len(report.output_files) == 2


def test_an_output_file_is_never_overwritten(tmp_path: Path) -> None:
    """A study de-identified again into the same folder (the caller stages a fresh one) refuses
    each instance whose output exists rather than write over it."""
    from voxl_assets.deid.header_scan import Refusal

    engine = make_engine(tmp_path)
    write_study(_spec(series=[SeriesSpec(instances=2)]), tmp_path / "raw")
    first = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", StudyIdentifiers()
    )
    before = {p: p.read_bytes() for p in first.output_files}
    again = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", StudyIdentifiers()
    )
    assert again.refused == {Refusal.DUPLICATE_SOP_INSTANCE_UID.value: 2}
    assert again.instances_out == 0 and not list((tmp_path / "out").glob("*.part"))
    assert {p: p.read_bytes() for p in first.output_files} == before


def test_a_series_too_small_does_not_stop_the_later_ones(tmp_path: Path) -> None:
    project = make_project(series_filters={"min_instances": 2})
    engine = make_engine(tmp_path, project)
    small, large = SeriesSpec(instances=1, number=1), SeriesSpec(instances=2, number=2)
    spec = _spec(series=[small, large])
    raw = tmp_path / "raw"
    raw.mkdir()
    # The small series' file first: the series are settled in the order they were written.
    make_instance(spec, small, 1).save_as(raw / "a.dcm", enforce_file_format=True)
    for n in (1, 2):
        make_instance(spec, large, n).save_as(raw / f"b{n}.dcm", enforce_file_format=True)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    assert report.filtered == {FilterReason.TOO_FEW_INSTANCES.value: 1}
    assert report.instances_out == 2 and report.series_out == 1
    assert sorted((tmp_path / "out").iterdir()) == sorted(report.output_files)  # removed too


def test_the_report_counts_each_attribute_of_the_written_instances(tmp_path: Path) -> None:
    from voxl_assets.deid.tally import REMOVED

    project = make_project(series_filters={"min_instances": 2})
    engine = make_engine(tmp_path, project)
    small, large = SeriesSpec(instances=1, number=1), SeriesSpec(instances=3, number=2)
    write_study(_spec(series=[small, large]), tmp_path / "raw")
    report = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", StudyIdentifiers()
    )
    assert report.instances_out == 3
    # Counted for the three written instances, not the one filtered with its series.
    assert report.attributes[(0x00080090, "", "replace")] == 3  # ReferringPhysicianName
    assert report.attributes[(0x00080060, "", "keep")] == 3  # Modality
    assert report.attributes[(0x00080080, "", REMOVED)] == 3  # InstitutionName, not listed


def test_replace_tree_swaps_a_study_folder_whole(tmp_path: Path) -> None:
    from voxl_assets.deid.engine import replace_tree

    final = tmp_path / "store" / "project" / "study"  # parents made as needed
    first = tmp_path / "stage1"
    first.mkdir()
    (first / "a.dcm").write_bytes(b"first")
    replace_tree(first, final)  # a new study
    assert [p.name for p in final.iterdir()] == ["a.dcm"] and not first.exists()
    second = tmp_path / "stage2"
    second.mkdir()
    (second / "b.dcm").write_bytes(b"second")
    leftover = final.with_name("study.old")  # from a run killed between its two renames
    leftover.mkdir()
    (leftover / "stale.dcm").write_bytes(b"stale")
    replace_tree(second, final)
    assert [p.name for p in final.iterdir()] == ["b.dcm"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["study"]  # no .old left


def test_a_big_endian_instance_gets_the_values_a_little_endian_one_does(tmp_path: Path) -> None:
    """Big endian files take the general path (pydicom's values, not the encoded bytes): the
    same dates, hashes and UIDs come out as from the same instance in little endian."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    project = make_project(deid={"dates": "shift", "date_shift_days_max": 30})
    engine = make_engine(tmp_path, project)
    spec = _spec()
    written = {}
    for name, syntax in (("le", ExplicitVRLittleEndian), ("be", ExplicitVRBigEndian)):
        ds = make_instance(spec, SeriesSpec(), 1)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.AcquisitionDate = ["20240301", "20240302"]  # two values where one is expected
        raw = tmp_path / f"raw-{name}"
        raw.mkdir()
        ds.save_as(raw / "one.dcm", enforce_file_format=True)
        identifiers = StudyIdentifiers()
        report = engine.deidentify_study(iter_study_files(raw), tmp_path / name, identifiers)
        assert report.instances_out == 1, report
        written[name] = pydicom.dcmread(report.output_files[0])
    little, big = written["le"], written["be"]
    assert big.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    for keyword in (
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "AccessionNumber",
        "StudyInstanceUID",
        "PatientID",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
    ):
        assert big[keyword].value == little[keyword].value, keyword
    assert little.StudyDate not in ("", "20240301")  # shifted, not emptied or kept
    assert len(big.AcquisitionDate) == 2 and "20240302" not in big.AcquisitionDate
    assert little.PatientIdentityRemoved == "YES"
    assert little.DeidentificationMethod == engine.method


def _written_alone(engine: Deidentifier, ds: Dataset, tmp_path: Path) -> Dataset:
    """``ds`` de-identified as a study of its own: the one instance written, read back."""
    raw = tmp_path / "raw"
    raw.mkdir()
    ds.save_as(raw / "one.dcm", enforce_file_format=True)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    assert report.instances_out == 1, report
    return pydicom.dcmread(report.output_files[0])


def test_an_element_relabelled_to_its_dictionary_vr_still_gets_its_operation(
    tmp_path: Path,
) -> None:
    """A kept element written with a VR its tag does not have (PN as LO) is relabelled first,
    then its operation applied: the replacement, not the value it came with."""
    from pydicom.dataelem import DataElement

    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds[0x00080090] = DataElement(0x00080090, "LO", "WELBY^MARCUS")  # ReferringPhysicianName: PN
    written = _written_alone(engine, ds, tmp_path)
    assert written["ReferringPhysicianName"].VR == "PN"
    assert written.ReferringPhysicianName == "ANONYMOUS"  # replaced, not kept as it came


def test_text_in_pixel_data_the_allow_list_removes_is_not_a_leak(tmp_path: Path) -> None:
    """Segments are checked where the pixel data is written: a project whose allow-list deletes
    PixelData writes none of it, so an identifier in its JPEG comment does not stop the instance
    (and is not in the output)."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    engine = _engine_with_extra_operations(tmp_path, "  - {keyword: PixelData, op: delete}\n")
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    comment = f"Patient {MRN}".encode()
    frame = (
        b"\xff\xd8"
        + struct.pack(">BBH", 0xFF, 0xFE, len(comment) + 2)
        + comment
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + bytes(8)
        + b"\xff\xd9"
    )
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    raw = tmp_path / "raw"
    raw.mkdir()
    ds.save_as(raw / "one.dcm", enforce_file_format=True)
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", identifiers)
    assert report.instances_out == 1, report
    written = report.output_files[0].read_bytes()
    assert MRN.encode() not in written and "PixelData" not in pydicom.dcmread(
        report.output_files[0]
    )


def _engine_with_extra_operations(tmp_path: Path, extra: str) -> Deidentifier:
    """The repository's CT allow-list plus one more file, later (so it wins)."""
    import shutil

    from voxl_assets.project_config import tag_operations_dir
    from voxl_assets.settings import REPO_ROOT

    ops = tmp_path / "ops"
    shutil.copytree(tag_operations_dir(REPO_ROOT / "project_definitions"), ops)
    (ops / "extra.yaml").write_text(f"profile: test\noperations:\n{extra}", encoding="utf-8")
    policy = load_policy(ops, ["base.yaml", "ct.yaml", "extra.yaml"], [])
    return make_engine(tmp_path, make_project(), policy)


def test_a_replacement_outside_ascii_is_written(tmp_path: Path) -> None:
    """A replacement the fast path cannot encode as ASCII goes through pydicom: written as
    given, never the value it replaces left in place."""
    engine = _engine_with_extra_operations(
        tmp_path, '  - {keyword: ReferringPhysicianName, op: replace, value: "ÅNONYM"}\n'
    )
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    raw = tmp_path / "raw"
    raw.mkdir()
    ds.save_as(raw / "one.dcm", enforce_file_format=True)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    written = pydicom.dcmread(report.output_files[0])
    assert str(written.ReferringPhysicianName) == "ÅNONYM"
    assert b"WELBY" not in report.output_files[0].read_bytes()


def test_output_folders_are_made_as_deep_as_needed(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    write_study(_spec(series=[SeriesSpec(instances=1)]), tmp_path / "raw")
    out = tmp_path / "not" / "yet" / "there"
    report = engine.deidentify_study(iter_study_files(tmp_path / "raw"), out, StudyIdentifiers())
    assert report.instances_out == 1 and report.output_files[0].parent == out


def test_the_report_counts_private_creators_and_not_group_lengths(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    spec = _spec()
    for n in (1, 2):
        ds = make_instance(spec, SeriesSpec(series_uid="1.2.3.4.5"), n)
        ds.add_new(0x00290010, "LO", "ACME 1.0")  # a private block nobody keeps
        ds.add_new(0x00291001, "LO", "vendor data")
        path = raw / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        # A group length (structure, not an attribute), which pydicom does not write: put in
        # as the dataset's first element, where (0008,0000) belongs.
        data = path.read_bytes()
        start = 132 + 12 + int.from_bytes(data[140:144], "little")
        group_length = b"\x08\x00\x00\x00UL\x04\x00" + (100).to_bytes(4, "little")
        path.write_bytes(data[:start] + group_length + data[start:])
        assert 0x00080000 in pydicom.dcmread(path)
    report = engine.deidentify_study(iter_study_files(raw), tmp_path / "out", StudyIdentifiers())
    assert report.instances_out == 2
    assert not any(number == 0x00080000 for number, _c, _o in report.attributes)
    creators = {k: v for k, v in report.attributes.items() if k[1] == "ACME 1.0"}
    assert creators and all(count == 2 for count in creators.values()), creators


def test_an_instance_without_pixel_data_under_a_compressed_syntax_is_written(
    tmp_path: Path,
) -> None:
    """No image, but labelled JPEG (a report or a key object from a compressing archive): its
    header is de-identified and written; there is no pixel data to mark or copy."""
    from pydicom.uid import JPEGBaseline8Bit

    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    written = _written_alone(engine, ds, tmp_path)
    assert "PixelData" not in written and written.file_meta.TransferSyntaxUID == JPEGBaseline8Bit


def test_encapsulated_pixel_data_read_whole_is_written_as_fragments(tmp_path: Path) -> None:
    """An element after the pixel data sends the instance down the slow path (read whole):
    its encapsulated pixel data still comes out as the same fragments, of undefined length."""
    from pydicom.encaps import encapsulate, generate_fragments
    from pydicom.uid import JPEGBaseline8Bit

    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    frames = [b"\xff\xd8" + bytes(30) + b"\xff\xd9", b"\xff\xd8" + bytes(40) + b"\xff\xd9"]
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.add_new(0xFFFCFFFC, "OB", bytes(16))  # DataSetTrailingPadding, after the pixel data
    written = _written_alone(engine, ds, tmp_path)
    assert written["PixelData"].is_undefined_length
    assert list(generate_fragments(written.PixelData))[1:] == frames  # after the offset table


def test_the_file_meta_is_written_anew_and_names_the_instance(tmp_path: Path) -> None:
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    _, report, _ = _run(tmp_path, _spec(series=[SeriesSpec(instances=1)]))
    written = pydicom.dcmread(report.output_files[0])
    meta = written.file_meta
    assert meta.MediaStorageSOPClassUID == written.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
    assert meta.ImplementationVersionName == "VOXL"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("block", [0x10, 0xFF])
def test_a_kept_private_block_is_found_at_any_creator_slot(tmp_path: Path, block: int) -> None:
    """A creator may reserve any block from 0x10 to 0xFF (its element (gggg,00bb)): the kept
    elements of the last block stay with their creator like the first's."""
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(manufacturer="SIEMENS"), SeriesSpec(), 1)
    ds.add_new(0x00190000 | block, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x00190000 | block << 8 | 0x0C, "IS", 1000)  # B_value: kept by the override
    ds.add_new(0x00190000 | block << 8 | 0x0B, "DS", 5.0)  # not listed: removed
    engine.deidentify_dataset(ds)
    assert ds[0x00190000 | block].value == "SIEMENS MR HEADER"
    assert ds[0x00190000 | block << 8 | 0x0C].value == 1000
    assert 0x00190000 | block << 8 | 0x0B not in ds


def test_a_removed_private_element_does_not_end_the_walk(tmp_path: Path) -> None:
    """Elements after a removed private one (higher tags) are still de-identified."""
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.add_new(0x00090010, "LO", "SOME VENDOR")
    ds.add_new(0x00091001, "LO", "vendor data")  # removed: not in the allow-list
    ds.PatientName = "DOE^JOHN"  # (0010,0010), after it: replaced
    ds.add_new(0x00211010, "LO", "ACME")  # a creator with nothing kept, later still
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(tmp_path / "one.dcm")  # in tag order, as every file is read
    engine.deidentify_dataset(ds)
    assert str(ds.PatientName) == "ANONYMOUS"
    assert not any(tag.is_private for tag in ds.keys())
    assert "InstitutionName" not in ds and ds.AccessionNumber != ACCESSION


def test_a_copy_stops_at_its_range_when_the_source_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel is asked only for what is left of the range, never for the bytes after it."""
    from voxl_assets.deid import engine as engine_module

    kernel = _RecordingKernel(limit=300_000)
    monkeypatch.setattr(engine_module.os, "copy_file_range", kernel)
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD + b"TRAILING BYTES OF SOMETHING ELSE")
    with source.open("rb") as src, (tmp_path / "target.bin").open("w+b") as out:
        engine_module._copy_range(src, out, 1000, len(PAYLOAD) - 1000)
    assert (tmp_path / "target.bin").read_bytes() == PAYLOAD[1000:]
    assert kernel.asked[0] == len(PAYLOAD) - 1000  # then less each time: what is left
    assert all(later < earlier for earlier, later in pairwise(kernel.asked))
    assert sum(kernel.copied) == len(PAYLOAD) - 1000


def test_a_kept_private_element_removed_for_its_vr_does_not_end_the_walk(tmp_path: Path) -> None:
    """B_value (IS) written as FD cannot be relabelled: it is removed, and the elements after it
    are still de-identified."""
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(manufacturer="SIEMENS"), SeriesSpec(), 1)
    study_uid = ds.StudyInstanceUID
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "FD", 1000.0)
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(tmp_path / "one.dcm")  # in tag order, as every file is read
    engine.deidentify_dataset(ds)
    assert not any(tag.group == 0x0019 and tag.element > 0xFF for tag in ds.keys())
    assert ds.StudyInstanceUID != study_uid  # (0020,000D), after the private group
    assert str(ds.PatientName) == "ANONYMOUS" or "PatientName" not in ds


def test_numeric_range_caps_an_age_read_from_a_file(tmp_path: Path) -> None:
    """As read from disk (encoded bytes, the fast path's input), an age over 89 is capped too."""
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.PatientAge = "097Y"
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    read = pydicom.dcmread(tmp_path / "one.dcm")
    engine.deidentify_dataset(read)
    assert read.PatientAge == "089Y"


def test_a_replacement_value_the_file_gives_as_a_number_is_written(tmp_path: Path) -> None:
    """``value: 12345`` is a number to YAML: written as the element's text all the same."""
    engine = _engine_with_extra_operations(
        tmp_path, "  - {keyword: StudyID, op: replace, value: 12345}\n"
    )
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.StudyID = "ST-98765"
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    read = pydicom.dcmread(tmp_path / "one.dcm")
    engine.deidentify_dataset(read)
    assert str(read.StudyID) == "12345"


def test_a_study_folder_lists_its_files_in_order_without_hidden_ones_or_folders(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "study"
    (folder / "series-b").mkdir(parents=True)
    (folder / "series-a").mkdir()
    (folder / "series-b" / "2.dcm").write_bytes(b"x")
    (folder / "series-a" / "1.dcm").write_bytes(b"x")
    (folder / ".index.json").write_bytes(b"{}")  # a hidden file: bookkeeping, not an instance
    (folder / "series-a" / ".partial").write_bytes(b"")
    assert iter_study_files(folder) == [
        folder / "series-a" / "1.dcm",
        folder / "series-b" / "2.dcm",
    ]


def test_stray_meta_and_reserved_private_elements_are_removed_quietly(tmp_path: Path) -> None:
    """A file meta element inside the dataset and a private element outside any creator's
    blocks ((gggg,0100): reserved) are removed, the first without being counted as an
    attribute of the study (it is structure, like a group length)."""
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.add_new(0x00020100, "UI", "1.2.3.4")
    ds.add_new(0x00090100, "LO", "reserved")
    counts: dict[Any, int] = {}
    engine.deidentify_dataset(ds, None, counts)
    assert 0x00020100 not in ds and 0x00090100 not in ds
    assert not any(number >> 16 == 0x0002 for number, _creator, _op in counts)


def test_the_report_names_private_elements_with_their_creator(tmp_path: Path) -> None:
    from voxl_assets.deid.tally import REMOVED, private_key

    engine = make_engine(tmp_path)
    ds = make_instance(_spec(manufacturer="SIEMENS"), SeriesSpec(), 1)
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", 1000)  # kept
    block.add_new(0x0B, "DS", 5.0)  # removed
    counts: dict[Any, int] = {}
    engine.deidentify_dataset(ds, None, counts)
    assert counts[(private_key(0x0019, 0x0C), "SIEMENS MR HEADER", "keep")] == 1
    assert counts[(private_key(0x0019, 0x0B), "SIEMENS MR HEADER", REMOVED)] == 1


def test_numeric_range_clamps_every_value_of_a_multi_valued_element(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    ds = make_instance(_spec(), SeriesSpec(), 1)
    ds.PatientWeight = [70.5, 999]  # two values where one is expected: each clamped, none lost
    engine.deidentify_dataset(ds)
    assert [float(v) for v in ds.PatientWeight] == [70.5, 300.0]


def test_a_region_from_the_image_edge_keeps_the_edge(tmp_path: Path) -> None:
    """Regions are inclusive and may start at row or column 0 (or before: clipped), and run to
    the last row or column (or past it)."""
    from voxl_assets.deid.engine import blank_outside_regions

    ds = _ultrasound(_spec(modality="US"), regions=True)
    region = ds.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, -5
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 9, 9
    blank_outside_regions(ds)
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    assert (pixels[:10, :10] == 500).all() and pixels.sum() == 500 * 100
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 54, 54
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 200, 200
    ds.PixelData = np.full((ds.Rows, ds.Columns), 500, dtype=np.uint16).tobytes()
    blank_outside_regions(ds)
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    assert (pixels[54:, 54:] == 500).all() and pixels.sum() == 500 * (ds.Rows - 54) ** 2
