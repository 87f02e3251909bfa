"""Generated instances of the SOP classes the modality profiles cover (PET with its CT, RT
structure set, plan and dose, MR spectroscopy, classic and enhanced diffusion MR from GE, Philips
and Siemens), built with pydicom: each carries identifiers where vendors put them, elements the
profiles must remove, and references between the objects that must still resolve afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MRSpectroscopyStorage,
    PositronEmissionTomographyImageStorage,
    RTDoseStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    generate_uid,
)

MRN = "MRN7788990"
ACCESSION = "ACC55667788"
PATIENT_NAME = "RADIOTHERAPY^PATIENTNAME"
BIRTH_DATE = "19561113"
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (RT references)

MODALITY_PROFILES = [
    "base.yaml",
    "ct.yaml",
    "mr.yaml",
    "pet.yaml",
    "rt-structure-set.yaml",
    "rt-plan.yaml",
    "rt-dose.yaml",
    "mr-spectroscopy.yaml",
    "mr-diffusion.yaml",
]
MODALITIES = ["CT", "PT", "RTSTRUCT", "RTPLAN", "RTDOSE", "MR"]


def profiles_project_definition(slug: str = "modality-profiles") -> dict[str, object]:
    return {
        "project": {"slug": slug, "name": slug, "modalities": MODALITIES},
        "tag_operations": {"base": MODALITY_PROFILES, "manufacturer_overrides": []},
        "series_filters": {"description_patterns": [], "min_instances": 1},
        "deid": {"dates": "truncate_to_month"},
    }


@dataclass
class SourceUids:
    """The source UIDs of a generated study, to follow references through de-identification."""

    study: str = field(default_factory=generate_uid)
    frame_of_reference: str = field(default_factory=generate_uid)
    ct_series: str = field(default_factory=generate_uid)
    ct_instances: list[str] = field(default_factory=lambda: [generate_uid(), generate_uid()])
    pet_series: str = field(default_factory=generate_uid)
    pet_instance: str = field(default_factory=generate_uid)
    structure_set: str = field(default_factory=generate_uid)
    plan: str = field(default_factory=generate_uid)
    dose: str = field(default_factory=generate_uid)
    spectroscopy: str = field(default_factory=generate_uid)
    dimension_organization: str = field(default_factory=generate_uid)
    diffusion: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[str]:
        return [
            self.study,
            self.frame_of_reference,
            self.ct_series,
            *self.ct_instances,
            self.pet_series,
            self.pet_instance,
            self.structure_set,
            self.plan,
            self.dose,
            self.spectroscopy,
            self.dimension_organization,
            *self.diffusion.values(),
        ]


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _base(uids: SourceUids, sop_class: str, sop_instance: str, modality: str) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = "20240311"
    ds.StudyTime = "093000"
    ds.AccessionNumber = ACCESSION
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.OperatorsName = "OPERATOR^ANNE"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "M"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _image(ds: Dataset, rows: int = 8, frames: int = 1) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(rows * rows * frames, dtype=np.uint16) % 512).tobytes()


def ct_instances(uids: SourceUids) -> list[Dataset]:
    out = []
    for index, sop in enumerate(uids.ct_instances, start=1):
        ds = _base(uids, CTImageStorage, sop, "CT")
        ds.SeriesInstanceUID = uids.ct_series
        ds.FrameOfReferenceUID = uids.frame_of_reference
        ds.InstanceNumber = index
        ds.ImagePositionPatient = [0, 0, 2.5 * index]
        ds.KVP = 120
        _image(ds)
        out.append(ds)
    return out


def pet_instance(uids: SourceUids) -> Dataset:
    ds = _base(uids, PositronEmissionTomographyImageStorage, uids.pet_instance, "PT")
    ds.SeriesInstanceUID = uids.pet_series
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.Units = "BQML"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.DecayCorrection = "START"
    ds.DecayFactor = 1.02
    ds.ImageIndex = 1
    ds.ReferencedImageSequence = Sequence(
        [_item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=uids.ct_instances[0])]
    )
    nuclide = _item(CodeValue="C-111A1", CodingSchemeDesignator="SRT", CodeMeaning="^18^Fluorine")
    drug = _item(
        Radiopharmaceutical="Fluorodeoxyglucose",
        RadionuclideTotalDose=350000000,
        RadionuclideHalfLife=6586.2,
        RadionuclidePositronFraction=0.97,
        RadiopharmaceuticalStartDateTime="20240311083012",
        RadiopharmaceuticalStartTime="083012",
        RadionuclideCodeSequence=Sequence([nuclide]),
        # not in the profile: removed from the item (a person and a count's source)
        SyringeCounts=1234,
        PerformingPhysicianName=PATIENT_NAME,
    )
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
    _image(ds)
    return ds


def structure_set(uids: SourceUids) -> Dataset:
    ds = _base(uids, RTStructureSetStorage, uids.structure_set, "RTSTRUCT")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.StructureSetLabel = "PLANNING"
    ds.StructureSetDate = "20240312"
    ds.StructureSetTime = "101500"
    contour_images = Sequence(
        [
            _item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=sop)
            for sop in uids.ct_instances
        ]
    )
    series = _item(SeriesInstanceUID=uids.ct_series, ContourImageSequence=contour_images)
    study = _item(
        ReferencedSOPClassUID=STUDY_REFERENCE_CLASS,
        ReferencedSOPInstanceUID=uids.study,
        RTReferencedSeriesSequence=Sequence([series]),
    )
    ds.ReferencedFrameOfReferenceSequence = Sequence(
        [
            _item(
                FrameOfReferenceUID=uids.frame_of_reference,
                RTReferencedStudySequence=Sequence([study]),
            )
        ]
    )
    ds.StructureSetROISequence = Sequence(
        [
            _item(
                ROINumber=1,
                ReferencedFrameOfReferenceUID=uids.frame_of_reference,
                ROIName="PTV",
                ROIGenerationAlgorithm="MANUAL",
            )
        ]
    )
    contour = _item(
        ContourImageSequence=Sequence(
            [
                _item(
                    ReferencedSOPClassUID=CTImageStorage,
                    ReferencedSOPInstanceUID=uids.ct_instances[0],
                )
            ]
        ),
        ContourGeometricType="CLOSED_PLANAR",
        NumberOfContourPoints=3,
        ContourData=[0.0, 0.0, 2.5, 10.0, 0.0, 2.5, 0.0, 10.0, 2.5],
    )
    ds.ROIContourSequence = Sequence(
        [
            _item(
                ReferencedROINumber=1,
                ROIDisplayColor=[255, 0, 0],
                ContourSequence=Sequence([contour]),
            )
        ]
    )
    ds.RTROIObservationsSequence = Sequence(
        [
            _item(
                ObservationNumber=1,
                ReferencedROINumber=1,
                RTROIInterpretedType="PTV",
                ROIInterpreter=PATIENT_NAME,  # a person: removed (Z in E.1-1)
            )
        ]
    )
    return ds


def plan(uids: SourceUids) -> Dataset:
    ds = _base(uids, RTPlanStorage, uids.plan, "RTPLAN")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 4
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.RTPlanLabel = "PROSTATE 1"
    ds.RTPlanDate = "20240313"
    ds.RTPlanTime = "111500"
    ds.RTPlanGeometry = "PATIENT"
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewerName = "REVIEWER^BOB"  # removed (X)
    ds.ReferencedStructureSetSequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID=RTStructureSetStorage,
                ReferencedSOPInstanceUID=uids.structure_set,
            )
        ]
    )
    ds.FractionGroupSequence = Sequence(
        [
            _item(
                FractionGroupNumber=1,
                NumberOfFractionsPlanned=20,
                NumberOfBeams=1,
                NumberOfBrachyApplicationSetups=0,
                ReferencedBeamSequence=Sequence(
                    [_item(ReferencedBeamNumber=1, BeamMeterset=123.4)]
                ),
            )
        ]
    )
    control = _item(ControlPointIndex=0, NominalBeamEnergy=6, GantryAngle=180.0)
    ds.BeamSequence = Sequence(
        [
            _item(
                BeamNumber=1,
                BeamName="AP",
                BeamType="STATIC",
                RadiationType="PHOTON",
                TreatmentMachineName="LINAC-ROOM-3",  # device identity: removed
                NumberOfControlPoints=1,
                ControlPointSequence=Sequence([control]),
            )
        ]
    )
    return ds


def dose(uids: SourceUids) -> Dataset:
    ds = _base(uids, RTDoseStorage, uids.dose, "RTDOSE")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 5
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = 0.0001
    ds.GridFrameOffsetVector = [0.0, 2.5]
    ds.FrameIncrementPointer = 0x3004000C
    ds.ReferencedRTPlanSequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID=RTPlanStorage,
                ReferencedSOPInstanceUID=uids.plan,
                ReferencedFractionGroupSequence=Sequence([_item(ReferencedFractionGroupNumber=1)]),
            )
        ]
    )
    ds.ReferencedStructureSetSequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID=RTStructureSetStorage,
                ReferencedSOPInstanceUID=uids.structure_set,
            )
        ]
    )
    _image(ds, frames=2)
    return ds


def spectroscopy(uids: SourceUids) -> Dataset:
    ds = _base(uids, MRSpectroscopyStorage, uids.spectroscopy, "MR")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 6
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SPECTROSCOPY", "NONE"]
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = f"patient {MRN}"  # free text: removed
    ds.TransmitterFrequency = 127.7
    ds.SpectralWidth = 2000.0
    ds.ResonantNucleus = "1H"
    ds.VolumeLocalizationTechnique = "PRESS"
    ds.ChemicalShiftReference = [4.7, 4.7]
    ds.NumberOfFrames = 1
    ds.Rows = 1
    ds.Columns = 1
    ds.DataPointRows = 1
    ds.DataPointColumns = 8
    ds.DataRepresentation = "COMPLEX"
    ds.SignalDomainColumns = "TIME"
    ds.SpectroscopyData = np.arange(16, dtype=np.float32).tobytes()
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                MREchoSequence=Sequence([_item(EffectiveEchoTime=30.0)]),
                PixelMeasuresSequence=Sequence(
                    [_item(PixelSpacing=[20.0, 20.0], SliceThickness=20.0)]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _item(
                FrameContentSequence=Sequence(
                    [
                        _item(
                            FrameAcquisitionDateTime="20240311094512",
                            DimensionIndexValues=[1],
                        )
                    ]
                )
            )
        ]
    )
    ds.DimensionOrganizationSequence = Sequence(
        [_item(DimensionOrganizationUID=uids.dimension_organization)]
    )
    return ds


# (creator, group, [(offset, VR, value)]) of each manufacturer's private diffusion attributes,
# plus one element in the same block that the profile does not list.
PrivateBlock = tuple[str, int, list[tuple[int, str, Any]]]
DIFFUSION_PRIVATE: dict[str, list[PrivateBlock]] = {
    "GE MEDICAL SYSTEMS": [
        ("GEMS_PARM_01", 0x0043, [(0x39, "IS", ["1000", "8", "0", "0"]), (0x3A, "SH", MRN)]),
        ("GEMS_ACQU_01", 0x0019, [(0xBB, "DS", "0.7071"), (0xBC, "DS", "0.0"), (0xBD, "DS", "-0.7071")]),
    ],
    "Philips": [
        ("Philips Imaging DD 001", 0x2001, [(0x03, "FL", 1000.0), (0x04, "CS", "O"), (0x05, "LO", MRN)]),
        ("Philips MR Imaging DD 001", 0x2005, [(0xB0, "FL", 0.7071), (0xB1, "FL", 0.0), (0xB2, "FL", -0.7071)]),
    ],
    "SIEMENS": [
        ("SIEMENS MR HEADER", 0x0019, [(0x0C, "IS", "1000"), (0x0D, "CS", "DIRECTIONAL"), (0x0E, "FD", [0.7071, 0.0, -0.7071]), (0x08, "CS", MRN)]),
    ],
}  # fmt: skip
NOT_LISTED_PRIVATE_CREATOR = "SYNTH UNLISTED"


def diffusion_instances(uids: SourceUids) -> list[Dataset]:
    """A classic MR diffusion instance per manufacturer, and an enhanced MR one (public macro)."""
    out = []
    for number, (manufacturer, blocks) in enumerate(DIFFUSION_PRIVATE.items(), start=10):
        sop = uids.diffusion.setdefault(manufacturer, generate_uid())
        ds = _base(uids, MRImageStorage, sop, "MR")
        ds.Manufacturer = manufacturer
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesNumber = number
        ds.SeriesDescription = "DTI"
        ds.FrameOfReferenceUID = uids.frame_of_reference
        ds.DiffusionBValue = 1000.0
        ds.DiffusionGradientOrientation = [0.7071, 0.0, -0.7071]
        for creator, group, elements in blocks:
            block = ds.private_block(group, creator, create=True)
            for offset, vr, value in elements:
                block.add_new(offset, vr, value)
        ds.private_block(0x0029, NOT_LISTED_PRIVATE_CREATOR, create=True).add_new(0x01, "LO", MRN)
        _image(ds)
        out.append(ds)
    sop = uids.diffusion.setdefault("enhanced", generate_uid())
    ds = _base(uids, EnhancedMRImageStorage, sop, "MR")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 20
    ds.FrameOfReferenceUID = uids.frame_of_reference
    direction = _item(DiffusionGradientOrientation=[0.0, 1.0, 0.0])
    diffusion = _item(
        DiffusionBValue=800.0,
        DiffusionDirectionality="DIRECTIONAL",
        DiffusionGradientDirectionSequence=Sequence([direction]),
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_item(MRDiffusionSequence=Sequence([diffusion]))]
    )
    _image(ds)
    out.append(ds)
    return out


def modality_study(uids: SourceUids) -> list[Dataset]:
    return [
        *ct_instances(uids),
        pet_instance(uids),
        structure_set(uids),
        plan(uids),
        dose(uids),
        spectroscopy(uids),
        *diffusion_instances(uids),
    ]


def write_modality_study(uids: SourceUids, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(modality_study(uids)):
        path = directory / f"{index:03d}-{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
