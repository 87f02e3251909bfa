"""Finding 1 (character sets): a patient's name in kept text is caught whatever the instance's
SpecificCharacterSet (single-byte, UTF-8, GB18030, ISO 2022 code extensions), and whatever its
case or accents, by the engine's in-memory check and by the independent checker."""

from pathlib import Path

import pytest

from tests.helpers.privacy import (
    deidentify,
    deidentify_unchecked,
    hostile_spec,
    instance,
    leaked,
    save,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import OutputCheckError

# (SpecificCharacterSet, patient name in that script, how kept text writes it).
CHARSETS = [
    ("ISO_IR 6", "ZEBEDEE^QUINCY", "zebedee quincy"),
    ("ISO_IR 100", "Müller^Jörg", "MULLER JORG"),  # accents dropped, upper case
    ("ISO_IR 100", "Müller^Jörg", "Mueller Joerg"),  # German transliteration
    ("ISO_IR 101", "Dvořák^Zdeněk", "DVORAK"),
    ("ISO_IR 109", "Ċaruana^Ġorġ", "caruana"),
    ("ISO_IR 110", "Ķēniņš^Jānis", "KENINS"),
    ("ISO_IR 126", "Παπαδόπουλος^Γιώργος", "ΠΑΠΑΔΟΠΟΥΛΟΣ"),
    ("ISO_IR 127", "قباني^نزار", "قباني"),
    ("ISO_IR 138", "שרון^אריאל", "שרון"),
    ("ISO_IR 144", "Иванов^Пётр", "ИВАНОВ"),
    ("ISO_IR 148", "Öztürk^Ayşe", "ozturk"),
    ("ISO_IR 166", "สมชาย^ใจดี", "สมชาย"),
    ("ISO_IR 192", "Müller^Jörg", "müller"),
    ("ISO_IR 192", "山田^太郎", "山田太郎"),
    ("GB18030", "王^小明", "王小明"),
    ("GBK", "王^小明", "王小明"),
    ("ISO 2022 IR 87", "山田^太郎", "山田太郎"),
    ("ISO 2022 IR 87", "山田^太郎=やまだ^たろう", "やまだ"),
    ("ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "ﾔﾏﾀﾞ"),
    ("ISO 2022 IR 149", "김^철수", "김철수"),
    ("ISO 2022 IR 58", "王^小明", "王小明"),
    ("ISO 2022 IR 100", "Müller^Jörg", "MÜLLER"),
]
IDS = [f"{charset}-{written}" for charset, _, written in CHARSETS]


def _charset_value(charset: str) -> str | list[str]:
    if charset.startswith("ISO 2022"):
        return ["", *charset.split("\\")] if "IR 13" not in charset else charset.split("\\")
    return charset


def _study(tmp_path: Path, charset: str, name: str, written: str) -> list[Path]:
    spec = hostile_spec(patient_name=name)
    ds = instance(spec)
    ds.SpecificCharacterSet = _charset_value(charset)
    ds.PatientName = name
    ds.SeriesDescription = f"follow up {written}"
    return [save(ds, tmp_path / "raw" / "1.dcm")]


@pytest.mark.parametrize(("charset", "name", "written"), CHARSETS, ids=IDS)
def test_engine_refuses_a_name_in_kept_text_in_any_character_set(
    tmp_path: Path, charset: str, name: str, written: str
) -> None:
    outcome = deidentify(tmp_path, _study(tmp_path, charset, name, written))
    assert isinstance(outcome, OutputCheckError), "the name in SeriesDescription was let through"
    assert "(0008,103E)" in str(outcome)


@pytest.mark.parametrize(("charset", "name", "written"), CHARSETS, ids=IDS)
def test_checker_finds_a_name_the_engine_let_through_in_any_character_set(
    tmp_path: Path, charset: str, name: str, written: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _study(tmp_path, charset, name, written)
    engine, report, identifiers = deidentify_unchecked(tmp_path, files, monkeypatch)
    assert leaked(report.output_files, [written.split()[0]])  # the crafted leak is there
    _allow, leaks = check_output(report.output_files, engine.policy, identifiers)
    assert not leaks.passed
    assert "(0008,103E)" in leaks.summary()
    assert written.split()[0] not in leaks.summary()  # findings never quote the value


@pytest.mark.parametrize(("charset", "name", "written"), CHARSETS[:6], ids=IDS[:6])
def test_unrelated_text_in_any_character_set_passes(
    tmp_path: Path, charset: str, name: str, written: str
) -> None:
    ds = instance(hostile_spec(patient_name=name))
    ds.SpecificCharacterSet = _charset_value(charset)
    ds.PatientName = name
    ds.SeriesDescription = "Thorax axial 1.0 Ü"
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert not isinstance(outcome, OutputCheckError), str(outcome)
    assert outcome.instances_out == 1


@pytest.mark.parametrize(("charset", "name", "written"), CHARSETS, ids=IDS)
def test_engine_refuses_a_name_in_kept_text_inside_a_sequence_item(
    tmp_path: Path, charset: str, name: str, written: str
) -> None:
    """Sequence items are read by the in-memory check's prefilter as well as the header."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(_study(tmp_path, charset, name, written)[0])
    del ds.SeriesDescription
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.SeriesDescription = f"follow up {written}"
    ds.ReferencedImageSequence = Sequence([item])
    outcome = deidentify(tmp_path, [save(ds, tmp_path / "raw" / "1.dcm")])
    assert isinstance(outcome, OutputCheckError), "the name in a sequence item was let through"
    assert "(0008,1140)[0].(0008,103E)" in str(outcome)
