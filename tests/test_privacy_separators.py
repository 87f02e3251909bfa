"""Finding 4 (separators and glued prefixes), DICOM side: identifiers written with separators,
glued to prefixes or suffixes, dates in the usual written formats and names by their parts are
caught in kept text, private blocks and sequence items; ordinary text is not."""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.helpers.privacy import (
    deidentify,
    deidentify_unchecked,
    instance,
    save,
    shared_engine,
    siemens_private,
    study_identifiers,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import DeidReport, OutputCheckError
from voxl_assets.deid.operations import TagPolicy

# The study's identifiers are MRN 47000022, accession ACC5566778, ZEBEDEE^QUINCY, born 19611231.
LEAKING = [
    "ZEBEDEE.QUINCY",
    "QUINCY ZEBEDEE",
    "Zebedee, Quincy",
    "pt_ZEBEDEE",
    "ptZEBEDEE",
    "Dr.Zebedee's",
    "Z E B E D E E",
    "ZEBEDEEQUINCY",
    "MRN-47000022",
    "MRN: 47000022.",
    "mrn47000023"[:-1] + "2",
    "4700-0022",
    "47 00 00 22",
    "(47000022)",
    "ACC5566778#2",
    "acc-5566778",
    "5566778 acc",
    "DOB-19611231",
    "born 1961-12-31",
    "31/12/1961",
    "31.12.1961",
    "12/31/1961",
    "31 Dec 1961",
    "31-DEC-1961",
    "December 31, 1961",
    "dob19611231t0930",
]
CLEAN = [
    "AXIAL 1.0 B30f",
    "470000221",  # a longer number that contains the MRN's digits
    "ACC55667789",  # a different accession number
    "ZEBEDEES",  # fine: but see ZEBEDEE glued forms above; a plural of the name is caught too
    "follow up 2024-03-01",
    "THORAX 19 61 12",
]
CLEAN.remove("ZEBEDEES")  # a name part glued to letters is caught (long parts match anywhere)
PLACES = ["SeriesDescription", "private block", "sequence item"]


def _plant(ds: Dataset, place: str, text: str) -> None:
    if place == "SeriesDescription":
        ds.SeriesDescription = text
    elif place == "private block":
        siemens_private(ds, 0x0D, "CS", text.encode())
    else:
        item = ds.ReferencedImageSequence[0]
        nested = Dataset()
        nested.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        nested.ReferencedSOPInstanceUID = "1.2.3.4.5"
        nested.SeriesDescription = text
        item.SourceImageSequence = Sequence([nested])


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("text", LEAKING)
def test_engine_refuses_identifiers_however_written(tmp_path: Path, text: str, place: str) -> None:
    ds = instance()
    _plant(ds, place, text)
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(outcome, OutputCheckError), f"{text!r} in {place} was let through"


@pytest.mark.parametrize("text", LEAKING)
def test_checker_finds_identifiers_however_written(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = instance()
    _plant(ds, "SeriesDescription", text)
    engine, report, _ = deidentify_unchecked(
        tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")], monkeypatch
    )
    assert pydicom.dcmread(report.output_files[0]).SeriesDescription == text
    _allow, leaks = check_output(report.output_files, engine.policy, study_identifiers())
    assert not leaks.passed, f"{text!r} let through by the checker"


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_passes(tmp_path: Path, text: str, place: str) -> None:
    ds = instance()
    _plant(ds, place, text)
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(outcome, DeidReport), f"{text!r} in {place} refused: {outcome}"
    _allow, leaks = check_output(outcome.output_files, make_policy(tmp_path), study_identifiers())
    assert leaks.passed, leaks.summary()


def make_policy(tmp_path: Path) -> TagPolicy:
    return shared_engine().policy
