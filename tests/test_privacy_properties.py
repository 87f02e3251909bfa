"""Property test: identifiers planted at random places (kept text, private blocks, sequence items,
removed attributes), in random written forms, character sets, VRs, positions and transfer syntaxes
never leave. Either the engine refuses the study, or no written byte, decoded in any of the
instance's character sets, holds one; and whatever the engine would have let through without its
in-memory check, the independent checker flags."""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.helpers.privacy import (
    deidentify,
    deidentify_unchecked,
    hostile_spec,
    instance,
    leaked,
    put,
    save,
    siemens_private,
)
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import OutputCheckError
from voxl_assets.synthetic import SeriesSpec

# (SpecificCharacterSet, family names that charset can write).
CHARSETS: list[tuple[str | list[str], list[str]]] = [
    ("ISO_IR 6", ["OTTERBURN", "FAIRWEATHER", "QUIMBLETON"]),
    ("ISO_IR 100", ["Müllerová", "Søndergård", "Fairweather"]),
    ("ISO_IR 101", ["Dvořáková", "Łukaszewski"]),
    ("ISO_IR 144", ["Иванова", "Кузнецов"]),
    ("ISO_IR 192", ["Müllerová", "山田太郎", "Иванова", "Παπαδόπουλος"]),
    ("GB18030", ["王小明明", "OTTERBURN"]),
    (["", "ISO 2022 IR 87"], ["山田太郎", "やまだたろう"]),
    (["", "ISO 2022 IR 149"], ["김철수님", "OTTERBURN"]),
]
SEPARATORS = ["", " ", ".", "-", "_", ": ", "/", "#", ", ", "\t"]
VRS = [
    "LO",
    "SH",
    "LT",
    "ST",
    "UT",
    "UC",
    "CS",
    "PN",
    "OB",
    "OW",
    "OD",
    "OF",
    "FD",
    "FL",
    "UN",
    "UL",
]
PLACES = [
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "private kept",
    "private CS",
    "sequence item",
    "nested item",
    "removed attribute",
]


@dataclass
class Plant:
    instance: int
    place: str
    vr: str
    kind: str
    separator: str
    prefix: str
    upper: bool
    filler: int


plants = st.builds(
    Plant,
    instance=st.integers(0, 2),
    place=st.sampled_from(PLACES),
    vr=st.sampled_from(VRS),
    kind=st.sampled_from(["mrn", "accession", "name", "name reversed", "birth date", "uid"]),
    separator=st.sampled_from(SEPARATORS),
    prefix=st.sampled_from(["", "pt", "MRN", "see ", "(", "DOB"]),
    upper=st.booleans(),
    filler=st.sampled_from([0, 0, 10, 300, 70_000]),
)


def _render(plant: Plant, identity: dict[str, str]) -> tuple[str, str]:
    """(text to plant, the identifier core that must not survive)."""
    sep = plant.separator
    if plant.kind == "mrn":
        core = identity["mrn"][:4] + sep + identity["mrn"][4:]
    elif plant.kind == "accession":
        core = identity["accession"][:3] + sep + identity["accession"][3:]
    elif plant.kind == "name":
        core = identity["family"] + (sep or " ") + identity["given"]
    elif plant.kind == "name reversed":
        core = identity["given"] + (sep or " ") + identity["family"]
    elif plant.kind == "birth date":
        y, m, d = identity["birth"][:4], identity["birth"][4:6], identity["birth"][6:]
        core = {
            "": f"{y}{m}{d}",
            "-": f"{y}-{m}-{d}",
            "/": f"{d}/{m}/{y}",
            ".": f"{d}.{m}.{y}",
        }.get(sep, f"{d} Dec {y}" if m == "12" else f"{y}-{m}-{d}")
    else:
        core = identity["uid"]
    if plant.upper:
        core = core.upper()
    return f"{plant.prefix}{core} ", core


def _identity(family: str, index: int) -> dict[str, str]:
    return {
        "mrn": str(40_000_000 + 7919 * index),
        "accession": f"ACC{5_500_000 + 131 * index}",
        "family": family,
        "given": "WILHELMINA",
        "birth": "19611231",
        "uid": f"1.2.826.0.1.3680043.9.7433.{index}.77",
    }


def _plant(ds: Dataset, plant: Plant, text: str, charset: str | list[str]) -> None:
    encodings = convert_encodings([charset] if isinstance(charset, str) else charset)
    filler = "AXIAL " * (plant.filler // 6)
    value = encode_string(filler + text, encodings)
    if plant.place in ("SeriesDescription", "StudyDescription", "ProtocolName"):
        tag = {
            "SeriesDescription": 0x0008103E,
            "StudyDescription": 0x00081030,
            "ProtocolName": 0x00181030,
        }
        put(ds, tag[plant.place], plant.vr if plant.filler < 60_000 else "UT", value)
    elif plant.place == "private kept":
        siemens_private(ds, 0x0E, plant.vr if plant.filler < 60_000 else "UT", value)
    elif plant.place == "private CS":
        siemens_private(ds, 0x0D, "CS" if plant.filler < 60_000 else "OB", value)
    elif plant.place in ("sequence item", "nested item"):
        item = ds.ReferencedImageSequence[0]
        if plant.place == "nested item":
            nested = Dataset()
            nested.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            nested.ReferencedSOPInstanceUID = "1.2.3.4.5"
            item.SourceImageSequence = Sequence([nested])
            item = nested
        put(item, 0x0008103E, "LO", value[:65_000])
    else:
        put(ds, 0x00080080, plant.vr, value)  # InstitutionName: not kept


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    charset_index=st.integers(0, len(CHARSETS) - 1),
    family_index=st.integers(0, 3),
    carrier=st.integers(0, 2),
    planted=st.lists(plants, min_size=1, max_size=4),
    implicit=st.booleans(),
    seed=st.integers(1, 10_000),
)
def test_planted_identifiers_never_leave(
    charset_index: int,
    family_index: int,
    carrier: int,
    planted: list[Plant],
    implicit: bool,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    charset, families = CHARSETS[charset_index]
    identity = _identity(families[family_index % len(families)], seed)
    spec = hostile_spec(
        patient_id=identity["mrn"],
        accession_number=identity["accession"],
        patient_name=f"{identity['family']}^{identity['given']}",
        birth_date=identity["birth"],
        series=[SeriesSpec(instances=3)],
    )
    tmp = Path(tempfile.mkdtemp(prefix="voxl-privacy-prop-"))
    try:
        cores: list[str] = []
        paths = []
        for index in range(3):
            ds = instance(spec, index + 1)
            ds.SpecificCharacterSet = charset
            ds.PatientName = f"{identity['family']}^{identity['given']}"
            if index == carrier:  # the UID only one instance carries
                ds.FrameOfReferenceUID = identity["uid"]
            for plant in planted:
                if plant.instance == index:
                    if plant.vr in ("OD", "FD", "OW", "OF", "FL", "UL") and implicit:
                        continue  # an implicit-VR file has no explicit VR to trick
                    text, core = _render(plant, identity)
                    _plant(ds, plant, text, charset)
                    cores.append(core)
            paths.append(save(ds, tmp / "raw" / f"{index}.dcm", implicit=implicit))
        outcome = deidentify(tmp / "checked", paths)
        event("engine refused" if isinstance(outcome, OutputCheckError) else "engine wrote")
        if not isinstance(outcome, OutputCheckError):
            assert not leaked(outcome.output_files, cores), (planted, charset)
        engine, report, identifiers = deidentify_unchecked(tmp / "unchecked", paths, monkeypatch)
        if leaked(report.output_files, cores):
            event("unchecked output held a planted identifier")
            _allow, leaks = check_output(report.output_files, engine.policy, identifiers)
            assert not leaks.passed, ("checker missed", planted, charset)
            assert isinstance(outcome, OutputCheckError)  # and the engine refused it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
