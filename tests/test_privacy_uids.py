"""Finding 7 (other UIDs): every kept UI value that is not a well-known DICOM UID (SOP classes,
transfer syntaxes, coding schemes... in pydicom's UID dictionary) is replaced, at any depth and in
private blocks; the checker flags a written UI value that is neither well-known nor pseudonymous."""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from tests.helpers.deid import make_engine
from tests.helpers.privacy import deidentify, deidentify_unchecked, instance, project, save
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import DeidReport
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.operations import TagPolicy, load_operations_file

FOREIGN = [
    "1.2.826.0.1.3680043.2.1125.99999999.1",  # another study's instance
    "1.3.12.2.1107.5.9.1",  # a vendor's private SOP class: not well-known
    "2.25.123456789012345678901234567890",
]
WELL_KNOWN = [
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.2.16.4",  # DICOM Controlled Terminology coding scheme
    "1.2.840.10008.1.4.1.1",  # Talairach Brain Atlas Frame of Reference
]


@pytest.mark.parametrize("uid", FOREIGN)
@pytest.mark.parametrize("where", ["top level", "sequence item", "nested item"])
def test_kept_foreign_uids_are_replaced(tmp_path: Path, uid: str, where: str) -> None:
    ds = instance()
    item = ds.ReferencedImageSequence[0]
    if where == "top level":
        ds.SOPClassUID = uid  # kept attribute; the filter sees a non-secondary-capture class
    elif where == "sequence item":
        item.ReferencedSOPClassUID = uid
    else:
        nested = Dataset()
        nested.ReferencedSOPClassUID = uid
        nested.ReferencedSOPInstanceUID = "1.2.3"
        item.SourceImageSequence = Sequence([nested])
    report = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(report, DeidReport), str(report)
    raw = report.output_files[0].read_bytes()
    assert uid.encode() not in raw


@pytest.mark.parametrize("uid", WELL_KNOWN)
def test_well_known_uids_are_kept(tmp_path: Path, uid: str) -> None:
    assert uid in UID_dictionary
    ds = instance()
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = uid
    report = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(report, DeidReport)
    out = pydicom.dcmread(report.output_files[0])
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == uid


def test_kept_private_ui_elements_are_replaced(tmp_path: Path) -> None:
    operations = tmp_path / "ops"
    operations.mkdir()
    (operations / "private.yaml").write_text(
        "operations:\n  - {group: 0x0029, private_creator: 'ACME 1', element: 0x01, op: keep}\n"
    )
    engine = make_engine(tmp_path, project())
    extra = load_operations_file(operations / "private.yaml")
    engine.policy = TagPolicy(engine.policy.base.merged(extra), engine.policy.overrides)
    ds = instance()
    block = ds.private_block(0x0029, "ACME 1", create=True)
    block.add_new(0x01, "UI", FOREIGN[0])
    report = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")], engine)
    assert isinstance(report, DeidReport), str(report)
    assert FOREIGN[0].encode() not in report.output_files[0].read_bytes()
    out = pydicom.dcmread(report.output_files[0])
    assert out.private_block(0x0029, "ACME 1")[0x01].value.startswith("2.25.")


def test_checker_flags_a_foreign_uid_in_a_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = instance()
    engine, report, _ = deidentify_unchecked(
        tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")], monkeypatch
    )
    crafted = pydicom.dcmread(report.output_files[0])
    crafted.ReferencedImageSequence[0].ReferencedSOPClassUID = FOREIGN[0]
    path = tmp_path / "crafted.dcm"
    crafted.save_as(path, enforce_file_format=True)
    _allow, leaks = check_output([path], engine.policy, StudyIdentifiers())
    assert not leaks.passed
    assert "(0008,1150)" in leaks.summary()
    clean = check_output(report.output_files, engine.policy, StudyIdentifiers())[1]
    assert clean.passed, clean.summary()
