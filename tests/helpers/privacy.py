"""Hostile studies and output files for the privacy tests, and an oracle that looks for identifiers
in every written byte without VOXL's own matching rules (so a bug there cannot hide a leak here)."""

from __future__ import annotations

import struct
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import config, dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.helpers.deid import make_engine, make_project
from voxl_assets.deid import output as output_module
from voxl_assets.deid.checks import check_output
from voxl_assets.deid.engine import Deidentifier, DeidReport, OutputCheckError
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.project_config import ProjectDefinition
from voxl_assets.synthetic import SeriesSpec, StudySpec, make_instance

MRN = "47000022"
ACCESSION = "ACC5566778"
FAMILY, GIVEN = "ZEBEDEE", "QUINCY"
NAME = f"{FAMILY}^{GIVEN}"
BIRTH_DATE = "19611231"
SIEMENS_CREATOR = "SIEMENS MR HEADER"
# Kept by the Siemens override (offsets in the block): B_value, DiffusionDirectionality,
# DiffusionGradientDirection, B_matrix.
SIEMENS_KEPT = (0x0C, 0x0D, 0x0E, 0x27)
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def hostile_spec(**kwargs: Any) -> StudySpec:
    values: dict[str, Any] = {
        "patient_id": MRN,
        "accession_number": ACCESSION,
        "patient_name": NAME,
        "birth_date": BIRTH_DATE,
    }
    values.update(kwargs)
    return StudySpec(**values)


def instance(
    spec: StudySpec | None = None, index: int = 1, series: SeriesSpec | None = None
) -> Dataset:
    spec = spec or hostile_spec()
    return make_instance(spec, series or spec.series[0], index)


def padded(value: bytes, multiple: int = 2, pad: bytes = b" ") -> bytes:
    while len(value) % multiple:
        value += pad
    return value


def put(ds: Dataset, tag: int, vr: str, value: bytes, implicit: bool = False) -> None:
    """Store ``value`` as it is, under ``vr`` (which need not be the tag's dictionary VR)."""
    value = padded(
        value,
        8
        if vr in {"FD", "OD", "OV", "UV", "SV"}
        else 4
        if vr in {"FL", "OF", "OL", "UL", "SL", "AT"}
        else 2,
    )
    # Straight into the dataset: pydicom's __setitem__ would convert a known private element.
    ds._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)


def siemens_private(ds: Dataset, offset: int, vr: str, value: bytes) -> int:
    """A kept Siemens private element holding ``value`` under ``vr``; returns its tag."""
    ds[0x00190010] = DataElement(0x00190010, "LO", SIEMENS_CREATOR)
    tag = 0x00191000 | offset
    put(ds, tag, vr, value)
    return tag


def save(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    wrong_length = config.convert_wrong_length_to_UN
    config.convert_wrong_length_to_UN = True  # pydicom rereads known private tags on writing
    try:
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    finally:
        config.convert_wrong_length_to_UN = wrong_length
    return path


def project(**overrides: Any) -> ProjectDefinition:
    return make_project(allowed_manufacturers=[{"regex": ".*"}], **overrides)


_ENGINES: dict[str, Deidentifier] = {}
_ENGINE_DIR = Path(tempfile.mkdtemp(prefix="voxl-privacy-engines-"))


def shared_engine(definition: ProjectDefinition | None = None) -> Deidentifier:
    """One engine per project definition for the whole session (an engine keeps no study's
    state; its hashing database takes a while to set up)."""
    definition = definition or project()
    key = definition.model_dump_json()
    if key not in _ENGINES:
        directory = _ENGINE_DIR / str(len(_ENGINES))
        directory.mkdir(parents=True)
        _ENGINES[key] = make_engine(directory, definition)
    return _ENGINES[key]


def deidentify(
    tmp_path: Path, files: Sequence[Path], engine: Deidentifier | None = None
) -> DeidReport | OutputCheckError:
    """The engine's outcome: its report, or the privacy failure it raised."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = engine or shared_engine()
    try:
        return engine.deidentify_study(files, tmp_path / "out", StudyIdentifiers())
    except OutputCheckError as exc:
        return exc


def deidentify_unchecked(
    tmp_path: Path,
    files: Sequence[Path],
    monkeypatch: pytest.MonkeyPatch,
    engine: Deidentifier | None = None,
) -> tuple[Deidentifier, DeidReport, StudyIdentifiers]:
    """What the engine writes with its in-memory identifier check switched off: the files the
    independent checker must catch."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = engine or shared_engine()
    identifiers = StudyIdentifiers()
    with monkeypatch.context() as patch:
        patch.setattr(output_module, "output_identifier_hits", lambda *_args, **_kwargs: [])
        report = engine.deidentify_study(files, tmp_path / "unchecked", identifiers)
    return engine, report, identifiers


def crafted_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    alter: Callable[[Dataset], Any],
    source: Dataset | None = None,
) -> tuple[Deidentifier, Path, StudyIdentifiers]:
    """A file the engine wrote (its in-memory check off), then changed by ``alter`` as a
    hostile archive or a defect could, saved as ``crafted.dcm``: what the checker must catch."""
    source = source if source is not None else instance()
    engine, report, identifiers = deidentify_unchecked(
        tmp_path, [save(source, tmp_path / "raw" / "1.dcm")], monkeypatch
    )
    crafted = dcmread(report.output_files[0])
    alter(crafted)
    path = tmp_path / "crafted.dcm"
    crafted.save_as(path, enforce_file_format=True)
    return engine, path, identifiers


def study_identifiers(*uids: str) -> StudyIdentifiers:
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    identifiers.add(ACCESSION)
    identifiers.add_name(NAME)
    identifiers.add_birth_date(BIRTH_DATE)
    for uid in uids:
        identifiers.add(uid)
    return identifiers


def checker_finds_leak(
    files: Sequence[Path], engine: Deidentifier, identifiers: StudyIdentifiers
) -> bool:
    _allow, leaks = check_output(files, engine.policy, identifiers)
    return not leaks.passed


# --- the oracle ------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Case, accents and separators removed: the plainest reading of 'the same identifier'."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = (c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in "".join(kept).casefold() if c.isalnum())


def _charsets(ds: Dataset) -> list[str]:
    value = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    terms = [value] if isinstance(value, str) else list(value)
    try:
        return list(dict.fromkeys(convert_encodings(terms)))
    except (LookupError, ValueError):
        return ["iso8859"]


def _element_bytes(ds: Dataset) -> Iterable[tuple[int, bytes]]:
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if int(tag) in PIXEL_TAGS:
            continue
        if elem.VR == "SQ" or (isinstance(elem, RawDataElement) and elem.length == 0xFFFFFFFF):
            for item in ds[tag].value:
                yield from _element_bytes(item)
            continue
        if isinstance(elem, RawDataElement):
            yield int(tag), elem.value or b""
        else:  # pydicom converted it (sequence items): encode it back the way it is written
            value = elem.value
            if isinstance(value, bytes):
                yield int(tag), value
            else:
                yield int(tag), str(value).encode("utf-8", "replace")


def written_texts(path: Path) -> list[str]:
    """Every value of ``path`` (file meta, preamble and nested items included, pixel data not),
    decoded in each of the instance's character sets, as UTF-8 and as Latin-1."""
    ds = dcmread(path)
    charsets = _charsets(ds)
    codecs = [*charsets, "utf-8", "latin-1"]
    texts = [ds.preamble.decode("latin-1") if ds.preamble else ""]
    for source in (ds.file_meta, ds):
        for _tag, value in _element_bytes(source):
            texts.append(decode_bytes(value, charsets, set()))
            for codec in codecs:
                texts.append(value.decode(codec, "replace"))
    return texts


def leaked(paths: Iterable[Path], planted: Iterable[str]) -> list[str]:
    """The planted identifiers (folded) that any written file still holds."""
    needles = {fold(p) for p in planted if fold(p)}
    found: set[str] = set()
    for path in paths:
        folded = [fold(t) for t in written_texts(path)]
        found |= {n for n in needles if any(n in f for f in folded)}
    return sorted(found)


def pack(fmt: str, *values: Any) -> bytes:
    return struct.pack("<" + fmt, *values)
