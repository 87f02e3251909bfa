"""The modality profiles (PET, RT structure set, plan and dose, MR spectroscopy, diffusion MR):
generated instances of each SOP class go through the engine with the shipped tag-operation
files; what is kept, replaced and removed is asserted, references between the RT objects and
between PET and CT still resolve, the independent checker passes and the identifier scan of the
end-to-end tests finds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import RTPlanStorage, RTStructureSetStorage

from tests.helpers.deid import make_engine
from tests.helpers.leaks import Identifiers, files_holding
from tests.helpers.modalities import (
    ACCESSION,
    BIRTH_DATE,
    DIFFUSION_PRIVATE,
    MODALITY_PROFILES,
    MRN,
    NOT_LISTED_PRIVATE_CREATOR,
    PATIENT_NAME,
    SourceUids,
    profiles_project_definition,
    write_modality_study,
)
from voxl_assets import settings
from voxl_assets.deid.checks import check_integrity, check_output
from voxl_assets.deid.engine import Deidentifier, DeidReport, iter_study_files
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.project_config import ProjectDefinition

OPS_DIR = settings.REPO_ROOT / "project_definitions" / "tag-operations"
NEW_PROFILES = [
    "pet.yaml",
    "rt-structure-set.yaml",
    "rt-plan.yaml",
    "rt-dose.yaml",
    "mr-spectroscopy.yaml",
    "mr-diffusion.yaml",
]


class Output:
    """The de-identified study, by modality / manufacturer."""

    def __init__(self, engine: Deidentifier, report: DeidReport, uids: SourceUids) -> None:
        self.engine = engine
        self.report = report
        self.uids = uids
        self.datasets = [pydicom.dcmread(p) for p in report.output_files]

    def uid(self, source: str) -> str:
        return self.engine.hasher.uid(source)

    def one(self, modality: str, manufacturer: str = "SYNTHETIC", sop_class: str = "") -> Dataset:
        found = [
            ds
            for ds in self.datasets
            if ds.Modality == modality
            and ds.Manufacturer == manufacturer
            and (not sop_class or ds.SOPClassUID == sop_class)
        ]
        assert len(found) == 1, (modality, manufacturer, len(found))
        return found[0]

    def sop_uids(self) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in self.datasets}


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Output:
    tmp_path = tmp_path_factory.mktemp("profiles")
    uids = SourceUids()
    write_modality_study(uids, tmp_path / "raw")
    project = ProjectDefinition.model_validate(profiles_project_definition())
    engine = make_engine(tmp_path, project)
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    identifiers.add(ACCESSION)
    report = engine.deidentify_study(
        iter_study_files(tmp_path / "raw"), tmp_path / "out", identifiers
    )
    return Output(engine, report, uids)


def test_every_instance_of_every_sop_class_is_written(output: Output) -> None:
    assert output.report.instances_out == output.report.instances_in == 11
    assert not output.report.filtered and not output.report.refused
    assert {str(ds.Modality) for ds in output.datasets} == {
        "CT",
        "PT",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "MR",
    }


def test_the_independent_checker_passes_and_the_identifier_scan_finds_nothing(
    output: Output, tmp_path: Path
) -> None:
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    identifiers.add(ACCESSION)
    for source in output.uids.all():
        identifiers.add(source)
    allow, leaks = check_output(output.report.output_files, output.engine.policy, identifiers)
    assert allow.passed, allow.summary()
    assert leaks.passed, leaks.summary()
    integrity = check_integrity(output.report.output_files)
    assert integrity.passed, integrity.summary()
    scan = Identifiers()
    scan.add("MRN", MRN)
    scan.add("accession number", ACCESSION)
    scan.add_name(PATIENT_NAME)
    scan.add_birth_date(BIRTH_DATE)
    scan.add("uid", *output.uids.all())
    scanned, found = files_holding(output.report.output_files[0].parent, scan)
    assert scanned == 11 and found == []


def test_every_new_profile_names_its_annex_e_options() -> None:
    for name in NEW_PROFILES:
        text = (OPS_DIR / name).read_text()
        raw = yaml.safe_load(text)
        assert "PS3.15" in raw["profile"], name
        assert "Annex E options followed" in text, name
    assert set(NEW_PROFILES) <= set(MODALITY_PROFILES)


def test_pet_keeps_the_radiopharmaceutical_and_still_points_at_its_ct(output: Output) -> None:
    pet = output.one("PT")
    cts = [ds for ds in output.datasets if ds.Modality == "CT"]
    assert pet.Units == "BQML" and pet.DecayCorrection == "START" and pet.DecayFactor == 1.02
    drug = pet.RadiopharmaceuticalInformationSequence[0]
    assert drug.Radiopharmaceutical == "Fluorodeoxyglucose"
    assert drug.RadionuclideTotalDose == 350000000 and drug.RadionuclideHalfLife == 6586.2
    assert drug.RadionuclideCodeSequence[0].CodeValue == "C-111A1"
    # date: truncated to the month as the project asks (time to midnight), not removed
    assert drug.RadiopharmaceuticalStartDateTime.startswith("202403")
    assert drug.RadiopharmaceuticalStartDateTime != "20240311083012"
    assert "SyringeCounts" not in drug and "PerformingPhysicianName" not in drug  # not listed
    # references to the CT resolve: same frame of reference, referenced image is a written CT
    assert pet.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert pet.FrameOfReferenceUID == output.uid(output.uids.frame_of_reference)
    referenced = str(pet.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
    assert referenced in {str(ct.SOPInstanceUID) for ct in cts}
    assert pet.StudyInstanceUID == cts[0].StudyInstanceUID


def test_structure_set_references_the_ct_slices_it_was_drawn_on(output: Output) -> None:
    rtstruct = output.one("RTSTRUCT")
    cts = {str(ds.SOPInstanceUID): ds for ds in output.datasets if ds.Modality == "CT"}
    ct = next(iter(cts.values()))
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == rtstruct.StudyInstanceUID == ct.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence} == set(cts)
    roi = rtstruct.StructureSetROISequence[0]
    assert roi.ROIName == "PTV" and roi.ReferencedFrameOfReferenceUID == ct.FrameOfReferenceUID
    contour = rtstruct.ROIContourSequence[0].ContourSequence[0]
    assert str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID) in cts
    assert list(contour.ContourData) == [0.0, 0.0, 2.5, 10.0, 0.0, 2.5, 0.0, 10.0, 2.5]
    observation = rtstruct.RTROIObservationsSequence[0]
    assert observation.RTROIInterpretedType == "PTV" and "ROIInterpreter" not in observation
    assert rtstruct.StructureSetLabel == "PLANNING" and rtstruct.StructureSetDate == "20240301"
    assert "OperatorsName" not in rtstruct and "InstitutionName" not in rtstruct


def test_plan_references_its_structure_set_and_dose_its_plan(output: Output) -> None:
    rtstruct, rtplan, rtdose = output.one("RTSTRUCT"), output.one("RTPLAN"), output.one("RTDOSE")
    # plan -> structure set
    plan_ref = rtplan.ReferencedStructureSetSequence[0]
    assert plan_ref.ReferencedSOPClassUID == RTStructureSetStorage  # class UIDs kept
    assert plan_ref.ReferencedSOPInstanceUID == rtstruct.SOPInstanceUID
    # dose -> plan and structure set, by the new UIDs
    dose_plan = rtdose.ReferencedRTPlanSequence[0]
    assert dose_plan.ReferencedSOPClassUID == RTPlanStorage
    assert dose_plan.ReferencedSOPInstanceUID == rtplan.SOPInstanceUID
    assert dose_plan.ReferencedFractionGroupSequence[0].ReferencedFractionGroupNumber == 1
    assert rtdose.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == (
        rtstruct.SOPInstanceUID
    )
    # all three in the planning CT's frame of reference, none under a source UID
    ct_frame = output.uid(output.uids.frame_of_reference)
    assert rtplan.FrameOfReferenceUID == rtdose.FrameOfReferenceUID == ct_frame
    sources = set(output.uids.all())
    assert not {str(rtplan.SOPInstanceUID), str(rtdose.SOPInstanceUID)} & sources
    # kept plan content; removed reviewer and treatment machine
    assert rtplan.RTPlanLabel == "PROSTATE 1" and rtplan.RTPlanGeometry == "PATIENT"
    assert rtplan.FractionGroupSequence[0].NumberOfFractionsPlanned == 20
    beam = rtplan.BeamSequence[0]
    assert beam.BeamName == "AP" and beam.ControlPointSequence[0].GantryAngle == 180.0
    assert "TreatmentMachineName" not in beam and "ReviewerName" not in rtplan
    # kept dose grid and its scaling
    assert rtdose.DoseUnits == "GY" and rtdose.DoseGridScaling == 0.0001
    assert list(rtdose.GridFrameOffsetVector) == [0.0, 2.5]
    assert rtdose.FrameIncrementPointer == 0x3004000C
    assert rtdose.pixel_array.shape == (2, 8, 8)


def test_spectroscopy_keeps_its_spectra_and_acquisition(output: Output) -> None:
    mrs = output.one("MR", sop_class="1.2.840.10008.5.1.4.1.1.4.2")
    spectra = np.frombuffer(mrs.SpectroscopyData, dtype=np.float32)
    assert list(spectra) == list(range(16))
    assert mrs.ResonantNucleus == "1H" and mrs.TransmitterFrequency == 127.7
    assert mrs.DataPointColumns == 8 and mrs.VolumeLocalizationTechnique == "PRESS"
    shared = mrs.SharedFunctionalGroupsSequence[0]
    assert shared.MREchoSequence[0].EffectiveEchoTime == 30.0
    frame = mrs.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0]
    assert frame.FrameAcquisitionDateTime.startswith("202403")
    assert frame.FrameAcquisitionDateTime != "20240311094512"
    organisation = mrs.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert organisation == output.uid(output.uids.dimension_organization)
    assert "ImageComments" not in mrs  # free text: removed


@pytest.mark.parametrize("manufacturer", sorted(DIFFUSION_PRIVATE))
def test_diffusion_keeps_b_values_and_directions_by_private_creator(
    output: Output, manufacturer: str
) -> None:
    ds = output.one("MR", manufacturer)
    assert ds.DiffusionBValue == 1000.0
    assert list(ds.DiffusionGradientOrientation) == [0.7071, 0.0, -0.7071]
    for creator, group, elements in DIFFUSION_PRIVATE[manufacturer]:
        block = ds.private_block(group, creator)
        for offset, _vr, value in elements:
            if value == MRN:  # an element of the same block that no profile lists
                assert block.get_tag(offset) not in ds
                continue
            kept = ds[block.get_tag(offset)].value
            if isinstance(value, float):
                assert kept == pytest.approx(value)
            elif isinstance(value, list):
                assert [str(v) for v in kept] == [str(v) for v in value] or list(
                    kept
                ) == pytest.approx(value)
            else:
                assert str(kept) == str(value)
    creators = {str(e.value) for e in ds if e.tag.is_private_creator}
    assert NOT_LISTED_PRIVATE_CREATOR not in creators  # another creator's block: removed


def test_enhanced_diffusion_keeps_the_per_frame_macro(output: Output) -> None:
    ds = output.one("MR", sop_class="1.2.840.10008.5.1.4.1.1.4.1")
    diffusion = ds.PerFrameFunctionalGroupsSequence[0].MRDiffusionSequence[0]
    assert diffusion.DiffusionBValue == 800.0
    assert diffusion.DiffusionDirectionality == "DIRECTIONAL"
    direction = diffusion.DiffusionGradientDirectionSequence[0]
    assert list(direction.DiffusionGradientOrientation) == [0.0, 1.0, 0.0]


def test_identity_replaced_everywhere(output: Output) -> None:
    for ds in output.datasets:
        assert ds.PatientName == "ANONYMOUS" and ds.PatientID != MRN
        assert ds.AccessionNumber != ACCESSION and ds.PatientBirthDate == "19000101"
        assert ds.StudyInstanceUID == output.uid(output.uids.study)
        assert str(ds.SOPInstanceUID).startswith("2.25.")
    assert len(output.sop_uids()) == 11
