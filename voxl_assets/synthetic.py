"""Generated DICOM studies and OMOP ES extracts for the demo, tests and benchmarks.

Everything here is made up: names, MRNs and UIDs are synthetic, but the files are real DICOM
(valid file meta, pixel data) that Orthanc and pydicom accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}


@dataclass
class SeriesSpec:
    instances: int = 3
    description: str = "AXIAL"
    series_uid: str = field(default_factory=generate_uid)
    number: int = 1


@dataclass
class StudySpec:
    """A synthetic study; identifiers default to fresh random-looking values."""

    patient_id: str
    accession_number: str
    study_uid: str = field(default_factory=generate_uid)
    modality: str = "CT"
    patient_name: str = "DOE^JANE"
    birth_date: str = "19700101"
    study_datetime: datetime = datetime(2024, 3, 1, 9, 30)
    manufacturer: str = "SIEMENS"
    series: list[SeriesSpec] = field(default_factory=lambda: [SeriesSpec()])
    rows: int = 64
    columns: int = 64
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    referenced_sop_uid: str = field(default_factory=generate_uid)

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def make_instance(spec: StudySpec, series: SeriesSpec, index: int) -> Dataset:
    """One instance of ``series`` (1-based ``index``), with identifiers, a private block and a
    nested sequence so that de-identification has something to remove."""
    sop_class = SOP_CLASS_BY_MODALITY.get(spec.modality, SOP_CLASS_BY_MODALITY["OT"])
    sop_instance = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = spec.study_datetime.strftime("%Y%m%d")
    ds.StudyTime = spec.study_datetime.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.AccessionNumber = spec.accession_number
    ds.Modality = spec.modality
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = "SYNTH-1"
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.ReferringPhysicianName = "WHO^DR"
    ds.StudyDescription = f"{spec.modality} STUDY"
    ds.SeriesDescription = series.description
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = "F"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.InstanceNumber = index
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = spec.referenced_sop_uid
    ds.ReferencedImageSequence = Sequence([ref])
    # A private block, as vendors write them: must never survive an allow-list.
    block = ds.private_block(0x0011, "SYNTH PRIVATE", create=True)
    block.add_new(0x01, "LO", spec.patient_id)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if spec.modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.SliceThickness = 1.0
        ds.KVP = 120
    pixels = (np.arange(spec.rows * spec.columns, dtype=np.uint16) * (index + 1)) % 4096
    ds.PixelData = pixels.tobytes()
    return ds


def iter_study(spec: StudySpec) -> Iterator[Dataset]:
    for series in spec.series:
        for index in range(1, series.instances + 1):
            yield make_instance(spec, series, index)


def write_study(spec: StudySpec, directory: Path) -> list[Path]:
    """Write ``spec`` as one file per instance under ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_study(spec):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --- OMOP ES extracts ----------------------------------------------------------------------------


@dataclass
class ExtractRow:
    """One procedure occurrence of a synthetic OMOP ES extract."""

    procedure_occurrence_id: int
    person_id: int
    mrn: str
    accession_number: str
    study_uid: str
    study_datetime: datetime = datetime(2024, 3, 1, 9, 30)


def synthetic_extract_rows(
    count: int, *, seed: int = 0, people: int | None = None
) -> list[ExtractRow]:
    """``count`` imaging procedures over ``people`` patients (default count // 2 + 1)."""
    import random

    rng = random.Random(seed)
    people = people or count // 2 + 1
    rows = []
    for index in range(count):
        person = index % people + 1
        rows.append(
            ExtractRow(
                procedure_occurrence_id=index + 1,
                person_id=person,
                mrn=f"{40000000 + person + seed * 1000003}",
                accession_number=f"ACC{seed:02d}{index:08d}",
                study_uid=f"2.25.{rng.getrandbits(100)}",
                study_datetime=datetime(2024, 1, 1, 8, 0) + timedelta(minutes=index),
            )
        )
    return rows


def write_omop_extract(
    directory: Path,
    rows: list[ExtractRow],
    *,
    project_name: str = "Test Extract - UCLH OMOP CDM",
    extract_datetime: datetime = datetime(2026, 11, 1, 12, 0, 0),
    layout: str = "flat",
    parts: int = 3,
    git_hash: str | None = "0123abcd",
) -> Path:
    """Write an OMOP ES extract (``flat`` files or ``batched`` part-N folders); returns ``directory``."""
    import json

    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    procedures = pd.DataFrame(
        {
            "procedure_occurrence_id": [r.procedure_occurrence_id for r in rows],
            "person_id": [r.person_id for r in rows],
            "procedure_datetime": [r.study_datetime for r in rows],
            "procedure_concept_id": [4163872] * len(rows),
        }
    )
    person_ids = sorted({r.person_id for r in rows})
    mrn_by_person = {r.person_id: r.mrn for r in rows}
    persons = pd.DataFrame(
        {"person_id": person_ids, "PrimaryMrn": [mrn_by_person[p] for p in person_ids]}
    )
    links = pd.DataFrame(
        {
            "procedure_occurrence_id": [r.procedure_occurrence_id for r in rows],
            "AccessionNumber": [r.accession_number for r in rows],
            "StudyUid_X": [r.study_uid for r in rows],
        }
    )
    tables = {
        (
            "public/omop/PROCEDURE_OCCURRENCE.parquet",
            "public/omop/procedure_occurrence",
        ): procedures,
        ("private/PERSON_LINKS.parquet", "private/person_links"): persons,
        ("private/PROCEDURE_OCCURRENCE_LINKS.parquet", "private/procedure_occurrence_links"): links,
    }
    for (flat, batched), frame in tables.items():
        if layout == "flat":
            (directory / flat).parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(directory / flat, index=False)
        else:
            folder = directory / batched
            folder.mkdir(parents=True, exist_ok=True)
            size = max(1, -(-len(frame) // parts))
            for part in range(parts):
                chunk = frame.iloc[part * size : (part + 1) * size]
                chunk.to_parquet(folder / f"part-{part}.parquet", index=False)
    summary: dict[str, object] = {
        "datetime": extract_datetime.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {"cdm_source_name": project_name, "cdm_source_abbreviation": "test"},
    }
    if git_hash:
        summary["git_hash"] = git_hash
    (directory / "extract_summary.json").write_text(json.dumps(summary, indent=2))
    return directory
