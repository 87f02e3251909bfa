"""Finding 5 (numbers): a numeric MRN (or birth date) repeated in a kept number, as a number
string (IS, DS in any notation) or as a binary number (US..FD, OF/OD/OL/OV), is caught."""

from pathlib import Path

import pydicom
import pytest

from tests.helpers.privacy import (
    MRN,
    crafted_output,
    deidentify,
    instance,
    pack,
    put,
    save,
    siemens_private,
    study_identifiers,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import OutputCheckError

NUMBER = int(MRN)
NUMBER_STRINGS = [
    ("IS", MRN),
    ("IS", f"+{MRN}"),
    ("IS", f"00{MRN}"),
    ("IS", f"1\\{MRN}"),
    ("DS", f"{MRN}.0"),
    ("DS", "4.7000022E7"),
    ("DS", "4.7000022e+07"),
    ("DS", "4.70000220E7"),  # as text, another digit follows the MRN's: only its value tells
    ("DS", f"0.5\\{MRN}"),
]
# Kept public number attributes (ct.yaml, base.yaml) and where their VR puts the value.
PUBLIC_NUMBERS = [(0x00200011, "IS"), (0x00200013, "IS"), (0x00180060, "DS"), (0x00281050, "DS")]
BINARY = [
    ("UL", pack("I", NUMBER)),
    ("SL", pack("i", NUMBER)),
    ("UV", pack("Q", NUMBER)),
    ("SV", pack("q", NUMBER)),
    ("FL", pack("f", NUMBER)),
    ("FD", pack("d", NUMBER)),
    ("OF", pack("3f", 1.0, NUMBER, 2.0)),
    ("OD", pack("2d", 0.5, NUMBER)),
    ("OL", pack("2I", 7, NUMBER)),
    ("OV", pack("2Q", 7, NUMBER)),
    ("FD", pack("6d", 1.0, 0.0, 0.0, 1.0, NUMBER, 0.0)),  # B_matrix: FD, 6 values
]


# Every number string in every kept number attribute of its VR (a decimal is not an IS value).
NUMBER_CASES = [
    (tag, vr, text)
    for tag, vr in PUBLIC_NUMBERS
    for text_vr, text in NUMBER_STRINGS
    if not (vr == "IS" and text_vr == "DS")
]


@pytest.mark.parametrize(("tag", "vr", "text"), NUMBER_CASES)
def test_engine_refuses_a_numeric_mrn_in_a_number_string(
    tmp_path: Path, tag: int, vr: str, text: str
) -> None:
    ds = instance()
    put(ds, tag, vr, text.encode())
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(outcome, OutputCheckError), f"{text} in ({tag >> 16:04X},{tag & 0xFFFF:04X})"


@pytest.mark.parametrize(("vr", "value"), BINARY, ids=[f"{vr}-{len(v)}" for vr, v in BINARY])
def test_engine_refuses_a_numeric_mrn_as_a_binary_number(
    tmp_path: Path, vr: str, value: bytes
) -> None:
    ds = instance()
    siemens_private(ds, 0x27, vr, value)  # B_matrix: kept, FD in Siemens' dictionary
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    if isinstance(outcome, OutputCheckError):
        return
    for path in outcome.output_files:  # removed for its VR: then nothing of it is left
        assert 0x00191027 not in pydicom.dcmread(path)


@pytest.mark.parametrize(("vr", "value"), BINARY, ids=[f"{vr}-{len(v)}" for vr, v in BINARY])
def test_checker_finds_a_numeric_mrn_as_a_binary_number(
    tmp_path: Path, vr: str, value: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, path, _ = crafted_output(
        tmp_path, monkeypatch, lambda crafted: siemens_private(crafted, 0x27, vr, value)
    )
    _allow, leaks = check_output([path], engine.policy, study_identifiers())
    assert not leaks.passed, vr


@pytest.mark.parametrize(("vr", "text"), NUMBER_STRINGS)
def test_checker_finds_a_numeric_mrn_in_a_number_string(
    tmp_path: Path, vr: str, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = 0x00281050 if vr == "DS" else 0x00200013
    engine, path, _ = crafted_output(
        tmp_path, monkeypatch, lambda crafted: put(crafted, tag, vr, text.encode())
    )
    _allow, leaks = check_output([path], engine.policy, study_identifiers())
    assert not leaks.passed, text


def test_ordinary_numbers_pass(tmp_path: Path) -> None:
    ds = instance()
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.InstanceNumber = 4700
    siemens_private(ds, 0x27, "FD", pack("6d", 1.0, 0.0, 0.0, 1.0, 1000.0, 0.0))
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert not isinstance(outcome, OutputCheckError), str(outcome)
