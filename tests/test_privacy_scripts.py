"""Identifiers written in other scripts: an MRN in the decimal digits of any script Unicode has
(Arabic-Indic, Devanagari, Thai, ...), a name with Cyrillic or Greek look-alike letters in place
of Latin ones ("ZЕBЕDЕЕ"), and a Cyrillic or Greek name romanised in kept text ("IVANOV"). Each
is caught by the engine's in-memory check, by the independent checker, and by the leak guard."""

import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.privacy import (
    FAMILY,
    MRN,
    deidentify,
    deidentify_unchecked,
    hostile_spec,
    instance,
    save,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import OutputCheckError
from voxl_assets.export.leak_guard import private_identifiers, scan_bundle
from voxl_assets.identifier_rules import fold

# The zero of every run of decimal digits Unicode defines outside ASCII (about 70 scripts).
SCRIPT_ZEROS = [
    code
    for code in range(0x80, 0x110000)
    if unicodedata.category(chr(code)) == "Nd" and unicodedata.decimal(chr(code)) == 0
]
# Capital Cyrillic and Greek letters that look like Latin capitals.
LOOKALIKES = {
    "A": "АΑ",
    "B": "ВΒ",
    "C": "С",
    "E": "ЕΕ",
    "H": "НΗ",
    "I": "ІΙ",
    "K": "КΚ",
    "M": "МΜ",
    "N": "Ν",
    "O": "ОΟ",
    "P": "РΡ",
    "T": "ТΤ",
    "X": "ХΧ",
    "Y": "УΥ",
    "Z": "Ζ",
}
# (the name in the header, how a report spells it in Latin letters)
ROMANISED = [
    ("Иванов^Пётр", "IVANOV"),
    ("Кузнецова^Юлия", "Kuznetsova Yulia"),
    ("Кузнецова^Юлия", "kuznetsova iuliia"),
    ("Шевченко^Тарас", "SHEVCHENKO"),
    ("Хрущёв^Никита", "Khrushchev"),
    ("Παπαδόπουλος^Γιώργος", "PAPADOPOULOS"),
    ("Παπαδόπουλος^Γιώργος", "Giorgos Papadopoulos"),
    ("Οικονόμου^Ελένη", "oikonomou"),
]


def _in_script(zero: int, digits: str) -> str:
    return "".join(chr(zero + int(d)) for d in digits)


def _study(tmp_path: Path, name: str, series_description: str) -> list[Path]:
    ds = instance(hostile_spec(patient_name=name))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.SeriesDescription = series_description
    return [save(ds, tmp_path / "raw" / "1.dcm")]


def _caught_by_engine_and_checker(
    tmp_path: Path, files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = deidentify(tmp_path / "checked", files)
    assert isinstance(outcome, OutputCheckError), "let through by the engine"
    assert "(0008,103E)" in str(outcome)
    engine, report, identifiers = deidentify_unchecked(tmp_path, files, monkeypatch)
    assert report.instances_out == 1
    _allow, leaks = check_output(report.output_files, engine.policy, identifiers)
    assert not leaks.passed, "let through by the independent checker"


def _leak_guard_hits(tmp_path: Path, note: str, private: dict[str, list[str]]) -> int:
    (tmp_path / "private").mkdir(parents=True)
    pq.write_table(pa.table(private), tmp_path / "private" / "LINKS.parquet")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    pq.write_table(pa.table({"note_text": ["Chest clear.", note]}), bundle / "NOTE.parquet")
    identifiers = private_identifiers([tmp_path / "private" / "LINKS.parquet"], set())
    return len(scan_bundle(bundle, identifiers).hits)


@pytest.mark.parametrize("zero", SCRIPT_ZEROS, ids=[f"U+{z:04X}" for z in SCRIPT_ZEROS])
def test_an_mrn_in_any_scripts_digits_is_caught(
    tmp_path: Path, zero: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _in_script(zero, MRN)
    assert fold(written) == MRN
    files = _study(tmp_path, "ZEBEDEE^QUINCY", f"ref {written}")
    _caught_by_engine_and_checker(tmp_path, files, monkeypatch)
    assert _leak_guard_hits(tmp_path / "guard", f"MRN {written}.", {"mrn": [MRN]}) == 1


def test_a_longer_number_in_another_script_is_not_an_mrn(tmp_path: Path) -> None:
    written = _in_script(SCRIPT_ZEROS[0], MRN + "1")
    outcome = deidentify(tmp_path, _study(tmp_path, "ZEBEDEE^QUINCY", f"ref {written}"))
    assert not isinstance(outcome, OutputCheckError), str(outcome)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_name_with_look_alike_letters_is_caught(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    positions = [i for i, c in enumerate(FAMILY) if c in LOOKALIKES]
    chosen = data.draw(st.sets(st.sampled_from(positions), min_size=1))
    letters = list(FAMILY)
    for i in chosen:
        letters[i] = data.draw(st.sampled_from(LOOKALIKES[letters[i]]))
    disguised = "".join(letters)
    assert disguised != FAMILY
    tmp_path = tmp_path_factory.mktemp("lookalike")
    outcome = deidentify(tmp_path, _study(tmp_path, "ZEBEDEE^QUINCY", f"seen by {disguised}"))
    assert isinstance(outcome, OutputCheckError), "a disguised name was let through"
    note = f"Patient {disguised.lower()} reviewed."
    guard = tmp_path / "guard"
    assert _leak_guard_hits(guard, note, {"family_name": [FAMILY]}) == 1


@pytest.mark.parametrize(("name", "written"), ROMANISED, ids=[w for _, w in ROMANISED])
def test_a_cyrillic_or_greek_name_romanised_in_kept_text_is_caught(
    tmp_path: Path, name: str, written: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _study(tmp_path, name, f"follow up {written}")
    _caught_by_engine_and_checker(tmp_path, files, monkeypatch)


@pytest.mark.parametrize(
    "text", ["Thorax axial 1.0", "ВИДЕО СЕРИЯ 3", "Αξονική τομογραφία", "series ٣ of ٥"]
)
def test_ordinary_text_in_other_scripts_passes(tmp_path: Path, text: str) -> None:
    outcome = deidentify(tmp_path, _study(tmp_path, "Иванов^Пётр", text))
    assert not isinstance(outcome, OutputCheckError), str(outcome)
    assert outcome.instances_out == 1
