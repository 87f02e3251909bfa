"""Finding 3 (length): an identifier anywhere in a long value (after 64 KiB, at its very end, in
a sequence item, in a private block) is caught: whole values are checked."""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.helpers.privacy import (
    MRN,
    NAME,
    deidentify,
    deidentify_unchecked,
    instance,
    put,
    save,
    siemens_private,
    study_identifiers,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import OutputCheckError

POSITIONS = [0, 1000, 65_530, 65_536, 65_540, 70_000, 200_000]
SERIES_DESCRIPTION = 0x0008103E


def _long(position: int, identifier: str, total: int = 210_000) -> bytes:
    filler = b"AXIAL " * (total // 6)
    value = filler[:position] + f" {identifier} ".encode() + filler[position:]
    return value[: max(total, position + 40)]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("where", ["implicit LO", "private UT", "private OB", "sequence item"])
# Private elements in an implicit-VR file: no VR is written, the dictionary's (CS) applies.
def test_engine_refuses_an_identifier_at_any_position(
    tmp_path: Path, position: int, where: str
) -> None:
    ds = instance()
    value = _long(position, MRN)
    # Explicit VR caps LO and CS values at 65,534 bytes: the sequence item is explicit where the
    # value fits, implicit (no length cap) beyond.
    implicit = where != "sequence item" or position >= 64_000
    if where == "implicit LO":
        put(ds, SERIES_DESCRIPTION, "LO", value, implicit=True)
    elif where == "private UT":
        siemens_private(ds, 0x0D, "UT", value)
    elif where == "private OB":
        siemens_private(ds, 0x0D, "OB", value)
    else:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        put(item, SERIES_DESCRIPTION, "LO", value if implicit else value[:65_000], implicit)
        ds.ReferencedImageSequence = Sequence([item])
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm", implicit=implicit)])
    assert isinstance(outcome, OutputCheckError), f"MRN at byte {position} ({where}) let through"


@pytest.mark.parametrize("position", POSITIONS)
def test_checker_reads_whole_values(
    tmp_path: Path, position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = instance()
    ds.SeriesDescription = "AXIAL"
    engine, report, _ = deidentify_unchecked(
        tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")], monkeypatch
    )
    crafted = pydicom.dcmread(report.output_files[0])
    for name, identifier in (("mrn", MRN), ("name", NAME.replace("^", " "))):
        siemens_private(crafted, 0x0D, "UT", _long(position, identifier))
        path = tmp_path / f"crafted-{name}.dcm"
        crafted.save_as(path, enforce_file_format=True)
        _allow, leaks = check_output([path], engine.policy, study_identifiers())
        assert not leaks.passed, f"{name} at byte {position} let through"
