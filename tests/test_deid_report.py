"""The de-identification report: tallied by the engine while it runs, kept per study in the VOXL
database, written with the export bundle (parquet and a self-contained HTML page) and by
`voxl deid-preview` for a sample folder. Its content is asserted on a generated extract, and the
identifier scan of the end-to-end tests finds nothing in it."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from sqlalchemy import select

from tests.helpers.deid import TEST_KEY
from tests.helpers.leaks import Identifiers, scan_file
from tests.helpers.modalities import (
    NOT_LISTED_PRIVATE_CREATOR,
    SourceUids,
    profiles_project_definition,
    write_modality_study,
)
from voxl_assets import settings
from voxl_assets.cli import main
from voxl_assets.cohort.extract_reader import read_extract
from voxl_assets.cohort.ingest import persist_cohort, register_extract
from voxl_assets.db import ExtractStudy, Study, StudyDeidSummary, StudyStatus, VoxlDatabase
from voxl_assets.deid.engine import Deidentifier, DeidReport, FilterReason
from voxl_assets.deid.hashing import LocalHashing, SaltStore
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.operations import TagPolicy, load_policy
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.deid.study import (
    ALLOW_LIST_CHECK,
    IDENTIFIER_CHECK,
    AnonymisedStudy,
    anonymise_study,
    build_deidentifier,
    study_tally,
)
from voxl_assets.deid.tally import (
    CREATOR_REMOVED,
    REMOVED,
    WITHHELD_CREATOR,
    CheckTally,
    DeidTally,
)
from voxl_assets.export.bundle import write_ehr_bundle
from voxl_assets.export.deid_report import REPORT_HTML, REPORT_PARQUET
from voxl_assets.outcomes import StudyFiltered
from voxl_assets.project_config import ProjectDefinition, load_project
from voxl_assets.study_state import StudyRequest, load_study_requests
from voxl_assets.synthetic import SeriesSpec, StudySpec, synthetic_extract_rows, write_omop_extract
from voxl_assets.synthetic import write_study as write_synthetic_study

SLUG = "test-extract-uclh-omop-cdm"  # the synthetic extract's cdm_source_name, slugified


def _projects_dir(tmp_path: Path) -> Path:
    """A registry with the shipped tag-operation files and a project using every profile."""
    projects = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", projects / "tag-operations"
    )
    definition = profiles_project_definition(SLUG)
    definition["series_filters"] = {"description_patterns": ["(?i)scout"], "min_instances": 1}
    (projects / f"{SLUG}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return projects


def _write_studies(tmp_path: Path, rows: list) -> list[Path]:
    """Three study folders: the modality study (PET-CT, RT, MRS, diffusion), a CT with a scout
    series (filtered), and an ultrasound study (every instance filtered: US is not listed)."""
    folders = [tmp_path / "raw" / str(n) for n in range(3)]
    write_modality_study(SourceUids(study=rows[0].study_uid), folders[0])
    ct = StudySpec(
        patient_id=rows[1].mrn,
        accession_number=rows[1].accession_number,
        study_uid=rows[1].study_uid,
        patient_name="SMITHERS^WAYLON",
        birth_date="19620704",
        series=[SeriesSpec(instances=2), SeriesSpec(instances=1, description="SCOUT", number=2)],
    )
    write_synthetic_study(ct, folders[1])
    us = StudySpec(
        patient_id=rows[2].mrn,
        accession_number=rows[2].accession_number,
        study_uid=rows[2].study_uid,
        modality="US",
    )
    write_synthetic_study(us, folders[2])
    return folders


class Extract:
    def __init__(self, tmp_path: Path) -> None:
        self.projects = _projects_dir(tmp_path)
        self.project = load_project(self.projects / f"{SLUG}.yaml")
        rows = synthetic_extract_rows(3, seed=11, people=3)
        extract = write_omop_extract(tmp_path / "extract", rows)
        self.database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
        cohort = read_extract(extract)
        self.key = register_extract(self.database, cohort.summary, cohort.summary.project_slug)
        persist_cohort(self.database, cohort, cohort.summary.project_slug)
        with self.database.session() as session:
            study_ids = dict(
                session.execute(
                    select(ExtractStudy.procedure_occurrence_id, ExtractStudy.study_id)
                ).all()
            )
        self.folders = _write_studies(tmp_path, rows)
        backend = LocalHashing(TEST_KEY, SaltStore(self.database))
        self.engine = build_deidentifier(self.project, self.projects, backend)
        store = AnonymisedStore(tmp_path / "anonymised")
        requests = load_study_requests(self.database, [f"{SLUG}/{study_ids[n]}" for n in (1, 2, 3)])
        self.filtered = 0
        for request, folder in zip(requests, self.folders, strict=True):
            files = sorted(p for p in folder.rglob("*.dcm"))
            try:
                anonymise_study(request, files, self.engine, store, self.database)
            except StudyFiltered:
                self.filtered += 1
        self.identifiers = Identifiers()
        for row in rows:
            self.identifiers.add("MRN", row.mrn)
            self.identifiers.add("accession number", row.accession_number)
            self.identifiers.add("uid", row.study_uid)
        for folder in self.folders:
            self.identifiers.add_dicom_files(sorted(folder.rglob("*.dcm")))
        self.bundle = write_ehr_bundle(self.database, self.key, tmp_path / "exports")
        self.table = pd.read_parquet(self.bundle.directory / REPORT_PARQUET)
        self.page = (self.bundle.directory / REPORT_HTML).read_text()

    def section(self, name: str) -> pd.DataFrame:
        return self.table[self.table["section"] == name]

    def counts(self, section: str) -> dict[str, int]:
        rows = self.section(section)
        return {str(n): int(c) for n, c in zip(rows["name"], rows["count"], strict=True)}

    def attribute(self, keyword: str, operation: str) -> int:
        rows = self.section("attribute")
        found = rows[(rows["name"] == keyword) & (rows["operation"] == operation)]
        return int(found["count"].sum())


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Extract:
    return Extract(tmp_path_factory.mktemp("report"))


def test_every_study_leaves_a_tally_in_the_voxl_database(extract: Extract) -> None:
    with extract.database.session() as session:
        summaries = list(session.scalars(select(StudyDeidSummary.summary)))
    tallies = [DeidTally.from_json(s) for s in summaries]
    assert len(tallies) == 3 and extract.filtered == 1
    assert sorted(t.instances_out for t in tallies) == [0, 2, 11]


def test_summary_filters_and_checks(extract: Extract) -> None:
    summary = extract.counts("summary")
    assert summary["studies in scope"] == 3 and summary["studies de-identified"] == 3
    assert summary["studies with instances written"] == 2
    assert summary["studies filtered out entirely"] == 1
    assert summary["instances read"] == 11 + 3 + 3 and summary["instances written"] == 13
    filters = extract.counts("filter")
    assert filters == {FilterReason.MODALITY.value: 3, FilterReason.SERIES_DESCRIPTION.value: 1}
    checks = extract.section("check").set_index("name")
    for name in (ALLOW_LIST_CHECK, IDENTIFIER_CHECK):
        assert checks.loc[name, "operation"] == "2 of 2 studies passed"
        assert checks.loc[name, "count"] == 13  # instances checked
    assert "2 of 2 studies passed" in extract.page


def test_every_attribute_with_its_operation_and_count(extract: Extract) -> None:
    assert extract.attribute("PatientID", "secure_hash") == 13
    assert extract.attribute("SOPInstanceUID", "replace_uid") == 13
    assert extract.attribute("PatientName", "replace") == 13
    assert extract.attribute("InstitutionName", REMOVED) == 13
    assert extract.attribute("ReviewerName", REMOVED) == 1
    assert extract.attribute("ROIInterpreter", REMOVED) == 1
    assert extract.attribute("ImageComments", "delete") == 1
    assert extract.attribute("RadiopharmaceuticalStartDateTime", "date") == 1
    # nested: the CT and PET image references, the RT references between objects
    assert extract.attribute("ReferencedSOPInstanceUID", "replace_uid") == 8 + 2
    assert extract.attribute("RadiopharmaceuticalInformationSequence", "keep") == 1
    assert extract.attribute("DiffusionBValue", "keep") == 4
    # filtered instances were never walked: US attributes are not in the report
    assert extract.attribute("Modality", "keep") == 13
    assert "(0010,0020)" in extract.page and "secure_hash" in extract.page


def test_private_blocks_by_creator(extract: Extract) -> None:
    blocks = extract.section("private_block").set_index("private_creator")
    assert blocks.loc["SIEMENS MR HEADER", "detail"] == "3 kept, 1 removed"
    assert blocks.loc["GEMS_PARM_01", "detail"] == "1 kept, 1 removed"
    assert blocks.loc["Philips MR Imaging DD 001", "detail"] == "3 kept, 0 removed"
    assert blocks.loc[NOT_LISTED_PRIVATE_CREATOR, "detail"] == "0 kept, 3 removed"
    # the synthetic CT's own private block, removed with its creator
    assert blocks.loc["SYNTH PRIVATE", "detail"] == "0 kept, 2 removed"
    attributes = extract.section("attribute")
    creators = attributes[attributes["name"] == "PrivateCreator"]
    removed = creators[creators["operation"] == CREATOR_REMOVED]
    assert set(removed["private_creator"]) == {NOT_LISTED_PRIVATE_CREATOR, "SYNTH PRIVATE"}


def test_profile_files_with_their_sha256(extract: Extract) -> None:
    files = extract.section("profile_file").set_index("name")
    assert list(files.index) == sorted(extract.project.tag_operations.base)
    for name in files.index:
        digest = hashlib.sha256((extract.projects / "tag-operations" / name).read_bytes())
        assert files.loc[name, "detail"] == f"sha256:{digest.hexdigest()}"
        assert files.loc[name, "count"] == 3  # studies de-identified under this version
    assert "PS3.15" in files.loc["pet.yaml", "operation"]
    assert digest.hexdigest() in extract.page


def test_nothing_identifying_in_the_report(extract: Extract) -> None:
    assert len(extract.identifiers.needles()) > 20
    for name in (REPORT_PARQUET, REPORT_HTML):
        assert scan_file(extract.bundle.directory / name, extract.identifiers) == []
    assert "<script" not in extract.page and "http" not in extract.page  # self-contained


def test_report_shown_on_the_asset(extract: Extract) -> None:
    markdown = extract.bundle.deid_report_markdown()
    assert "**2** of 3 studies written" in markdown
    assert f"| {ALLOW_LIST_CHECK} | 2 of 2 | 13 |" in markdown
    assert extract.bundle.deid_report_page.name == REPORT_HTML


def test_a_private_creator_holding_an_identifier_is_withheld(tmp_path: Path) -> None:
    projects = _projects_dir(tmp_path)
    project = ProjectDefinition.model_validate(load_project(projects / f"{SLUG}.yaml"))
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")
    engine = build_deidentifier(project, projects, LocalHashing(TEST_KEY, SaltStore(database)))
    spec = StudySpec(patient_id="MRN3141592", accession_number="ACC27182818")
    paths = write_synthetic_study(spec, tmp_path / "raw")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.private_block(0x0033, "CREATOR MRN3141592", create=True).add_new(0x01, "LO", "x")
        ds.save_as(path)
    report = engine.deidentify_study(paths, tmp_path / "out", StudyIdentifiers())
    creators = {creator for _n, creator, _op in report.attributes}
    assert WITHHELD_CREATOR in creators and not any("3141592" in c for c in creators)


def test_deid_preview_writes_the_same_report_for_a_sample_folder(
    extract: Extract,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(extract.projects))
    sample = tmp_path / "sample"
    for index, folder in enumerate(extract.folders):
        shutil.copytree(folder, sample / f"study-{index}")
    out = tmp_path / "preview"
    assert main(["deid-preview", SLUG, str(sample), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 studies: 13 of 17 instances written" in printed
    preview = pd.read_parquet(out / REPORT_PARQUET)
    columns = ["section", "tag", "name", "private_creator", "operation", "count", "detail"]
    for section in ("attribute", "filter", "check", "private_block", "profile_file"):
        exported = extract.section(section)[columns].reset_index(drop=True)
        previewed = preview[preview["section"] == section][columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(previewed, exported)
    assert scan_file(out / REPORT_HTML, extract.identifiers) == []
    assert scan_file(out / REPORT_PARQUET, extract.identifiers) == []


def test_deid_preview_refuses_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(_projects_dir(tmp_path)))
    assert main(["deid-preview", SLUG, str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["deid-preview", "no-such-project", str(tmp_path / "empty")]) == 2
    assert "not registered" in capsys.readouterr().err
    assert main(["deid-preview", SLUG, str(tmp_path / "empty")]) == 2
    assert "no files" in capsys.readouterr().err


def _one_study(
    tmp_path: Path, description: str
) -> tuple[VoxlDatabase, StudyRequest, list[Path], Deidentifier]:
    """A registered one-study extract of the profiles project, and its instances on disk."""
    projects = _projects_dir(tmp_path)
    project = load_project(projects / f"{SLUG}.yaml")
    rows = synthetic_extract_rows(1, seed=5)
    cohort = read_extract(write_omop_extract(tmp_path / "extract", rows))
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    register_extract(database, cohort.summary, cohort.summary.project_slug)
    persist_cohort(database, cohort, cohort.summary.project_slug)
    with database.session() as session:
        study_id = session.scalar(select(ExtractStudy.study_id))
    (request,) = load_study_requests(database, [f"{SLUG}/{study_id}"])
    spec = StudySpec(
        patient_id=rows[0].mrn,
        accession_number=rows[0].accession_number,
        study_uid=rows[0].study_uid,
        series=[SeriesSpec(instances=2, description=description)],
    )
    files = write_synthetic_study(spec, tmp_path / "raw")
    engine = build_deidentifier(project, projects, LocalHashing(TEST_KEY, SaltStore(database)))
    return database, request, files, engine


def _tally(database: VoxlDatabase) -> DeidTally:
    with database.session() as session:
        (summary,) = list(session.scalars(select(StudyDeidSummary.summary)))
    return DeidTally.from_json(summary)


def test_a_study_stopped_by_a_privacy_check_counts_as_failed(tmp_path: Path) -> None:
    from voxl_assets.deid.study import PrivacyCheckFailed

    rows = synthetic_extract_rows(1, seed=5)
    database, request, files, engine = _one_study(tmp_path, f"AXIAL {rows[0].mrn}")
    with pytest.raises(PrivacyCheckFailed) as raised:
        anonymise_study(request, files, engine, AnonymisedStore(tmp_path / "a"), database)
    # The message names the failed check only; the checks go with it for the asset's metadata.
    assert str(raised.value) == f"privacy check failed: {IDENTIFIER_CHECK}"
    assert raised.value.checks[ALLOW_LIST_CHECK] == (True, "passed")
    assert raised.value.checks[IDENTIFIER_CHECK][0] is False
    tally = _tally(database)
    assert tally.studies_failed_checks == 1 and tally.instances_out == 0 and not tally.attributes
    assert tally.instances_in == 2
    assert tally.checks[IDENTIFIER_CHECK] == CheckTally(1, 0, 0)  # no instance was checked
    assert tally.checks[ALLOW_LIST_CHECK] == CheckTally(1, 1, 0)


def test_de_identifying_a_study_again_replaces_its_tally(tmp_path: Path) -> None:
    database, request, files, engine = _one_study(tmp_path, "AXIAL")
    store = AnonymisedStore(tmp_path / "a")
    anonymise_study(request, files, engine, store, database)
    first = _tally(database).to_json()
    anonymise_study(request, files, engine, store, database)
    assert _tally(database).to_json() == first
    assert DeidTally.from_json(first).attributes[(0x00100020, "", "secure_hash")] == 2


def test_a_studys_own_identifiers_are_looked_for_whatever_its_headers_hold() -> None:
    """The extract's MRN, accession number and UIDs join what the first pass reads from the
    headers; an absent one ('') adds nothing."""
    from voxl_assets.db import StudyStatus
    from voxl_assets.deid.study import request_identifiers
    from voxl_assets.study_state import StudyRequest

    request = StudyRequest(
        1, "p", "47000022", "ACC7001", "1.2.826.0.1.3680043.9.7433.5", "", None,
        StudyStatus.RETRIEVED, None,
    )  # fmt: skip
    identifiers = request_identifiers(request)
    assert len(identifiers) == 3
    matcher = identifiers.matcher()
    for value in ("MRN 47000022", "acc 7001", "uid 1.2.826.0.1.3680043.9.7433.5"):
        assert matcher.find(value), value


def _policy() -> TagPolicy:
    ops = settings.REPO_ROOT / "project_definitions" / "tag-operations"
    return load_policy(ops, ["base.yaml", "ct.yaml"], [])


def _report(out: int, *, refused: int = 0) -> DeidReport:
    return DeidReport(
        instances_in=4,
        instances_out=out,
        filtered=Counter({FilterReason.SERIES_DESCRIPTION.value: 2}),
        refused=Counter({"not a DICOM file": refused}) if refused else Counter(),
        vr_changes=Counter({"(0008,103E) OD relabelled LO": 1}),
        attributes=Counter({(0x00100020, "", "secure_hash"): out}),
    )


def test_a_studys_tally_counts_what_its_report_counted() -> None:
    """One study, its instances and the instances written, the reasons kept from the engine's
    report, each check with the instances it checked, and the tag-operation files it ran under."""
    policy = _policy()
    passed = {ALLOW_LIST_CHECK: (True, "ok"), IDENTIFIER_CHECK: (True, "ok")}
    tally = study_tally(_report(1, refused=1), policy, passed, 99)
    assert (tally.studies, tally.instances_in, tally.instances_out) == (1, 4, 1)
    assert (tally.studies_written, tally.studies_filtered, tally.studies_failed_checks) == (1, 0, 0)
    assert tally.filtered == {FilterReason.SERIES_DESCRIPTION.value: 2}
    assert tally.refused == {"not a DICOM file": 1}
    assert tally.vr_changes == {"(0008,103E) OD relabelled LO": 1}
    assert tally.attributes == {(0x00100020, "", "secure_hash"): 1}
    assert tally.profile_files == {(f.name, f.sha256): 1 for f in policy.files}
    assert sorted(tally.profiles) == ["base.yaml", "ct.yaml"]
    for name in passed:
        assert tally.checks[name] == CheckTally(
            studies_run=1, studies_passed=1, instances_checked=1
        )
    # Written with more than one instance, no refusal: written, not filtered.
    tally = study_tally(_report(2), policy, passed, 4)
    assert (tally.studies_written, tally.studies_filtered) == (1, 0)
    # Nothing written and nothing refused: every instance was filtered out.
    tally = study_tally(_report(0), policy, {}, 4)
    assert (tally.studies_written, tally.studies_filtered, tally.checks) == (0, 1, {})
    # Nothing written because the files were broken: neither written nor filtered.
    tally = study_tally(_report(0, refused=4), policy, {}, 4)
    assert (tally.studies_written, tally.studies_filtered) == (0, 0)


def test_a_study_a_check_stopped_checked_no_instance() -> None:
    checks = {ALLOW_LIST_CHECK: (True, "passed"), IDENTIFIER_CHECK: (False, "1 identifier")}
    tally = study_tally(None, _policy(), checks, 3)
    assert (tally.studies, tally.instances_in, tally.instances_out) == (1, 3, 0)
    assert (tally.studies_written, tally.studies_filtered, tally.studies_failed_checks) == (0, 0, 1)
    assert tally.checks[ALLOW_LIST_CHECK] == CheckTally(1, 1, 0)
    assert tally.checks[IDENTIFIER_CHECK] == CheckTally(1, 0, 0)


def test_the_metadata_shown_on_the_asset() -> None:
    empty = DeidReport(instances_in=2, instances_out=2, series_out=1, bytes_out=2048)
    assert AnonymisedStudy(empty).metadata() == {  # nothing filtered, refused or changed
        "instances_in": 2,
        "instances_out": 2,
        "series_out": 1,
        "bytes_out": 2048,
    }
    report = _report(1, refused=1)
    report.vr_changes["(0018,0050) UN read as DS"] = 2
    report.blanked_instances = 1
    metadata = AnonymisedStudy(report).metadata()
    assert metadata["instances_filtered"] == 2 and metadata["instances_refused"] == 1
    assert metadata["filter_reasons"] == f"2 {FilterReason.SERIES_DESCRIPTION.value}"
    assert metadata["refusal_reasons"] == "1 not a DICOM file"
    assert metadata["vr_changes"] == (
        "(0008,103E) OD relabelled LO x1, (0018,0050) UN read as DS x2"
    )
    assert metadata["ultrasound_blanked"] == 1


def _study_row(database: VoxlDatabase) -> Study:
    with database.session() as session:
        study = session.scalars(select(Study)).one()
        session.expunge(study)
    return study


def test_an_anonymised_study_is_recorded_with_its_pseudonyms(tmp_path: Path) -> None:
    database, request, files, engine = _one_study(tmp_path, "AXIAL")
    store = AnonymisedStore(tmp_path / "a")
    result = anonymise_study(request, files, engine, store, database)
    assert isinstance(result, AnonymisedStudy) and result.report.instances_out == 2
    study = _study_row(database)
    assert study.status == StudyStatus.ANONYMISED.value and study.anonymised_at is not None
    assert study.details == {"deid": result.metadata()}
    assert result.report.pseudo_study_uid and result.report.pseudo_patient_id
    assert study.pseudo_study_uid == result.report.pseudo_study_uid
    assert study.pseudo_patient_id == result.report.pseudo_patient_id
    written = store.files(request.project, request.study_id)
    assert written is not None and len(written) == 2
    assert {pydicom.dcmread(p).PatientID for p in written} == {result.report.pseudo_patient_id}


def test_a_participant_id_is_the_patient_id_written_and_recorded(tmp_path: Path) -> None:
    database, request, files, engine = _one_study(tmp_path, "AXIAL")
    request = dataclasses.replace(request, participant_id="PARTICIPANT-0007")
    store = AnonymisedStore(tmp_path / "a")
    anonymise_study(request, files, engine, store, database)
    assert _study_row(database).pseudo_patient_id == "PARTICIPANT-0007"
    written = store.files(request.project, request.study_id)
    assert written is not None and len(written) == 2
    assert {pydicom.dcmread(p).PatientID for p in written} == {"PARTICIPANT-0007"}
