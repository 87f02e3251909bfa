"""participant_id from a CSV extract: the study's pseudonymous PatientID and its id in the mapping
table, in place of the keyed hash of the MRN; end to end through a DIMSE VNA, local delivery and
the export, with a second project in the same file that has none (hashed as before)."""

import os
import shutil
import zipfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from dagster import DagsterInstance

from tests.helpers.deid import TEST_KEY, make_engine, make_project
from tests.peers import free_port
from voxl_assets import settings
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.deid.engine import Deidentifier, iter_study_files
from voxl_assets.deid.hashing import LocalHashing, ProjectHasher, SaltStore
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.operations import load_policy
from voxl_assets.demo.vna import DemoVna
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study

FIXTURE = Path(__file__).parent / "fixtures" / "escape_hatch" / "two_projects_three_extracts.csv"
MRN = "MRN5566778"


def _deidentify(
    engine: Deidentifier, raw: Path, out: Path, pseudonym: str | None
) -> tuple[pydicom.Dataset, str | None]:
    identifiers = StudyIdentifiers()
    identifiers.add(MRN)
    report = engine.deidentify_study(iter_study_files(raw), out, identifiers, pseudonym)
    assert report.instances_out == 2
    return pydicom.dcmread(report.output_files[0]), report.pseudo_patient_id


def test_the_participant_id_replaces_the_hashed_patient_id(tmp_path: Path) -> None:
    project = make_project(deid={"dates": "shift", "date_shift_days_max": 30})
    engine = make_engine(tmp_path, project)
    raw = tmp_path / "raw"
    write_study(StudySpec(patient_id=MRN, accession_number="ACC1", series=[SeriesSpec(2)]), raw)
    hashed, hashed_id = _deidentify(engine, raw, tmp_path / "hashed", None)
    named, named_id = _deidentify(engine, raw, tmp_path / "named", "PE-001")
    assert hashed.PatientID == hashed_id == engine.hasher.hash(MRN, 64)
    assert named.PatientID == named_id == "PE-001"
    # Everything else is as without it: the date shift stays keyed on the source patient.
    assert named.StudyDate == hashed.StudyDate != "20240301"
    assert named.StudyInstanceUID == hashed.StudyInstanceUID


def test_no_patient_id_is_written_where_the_allow_list_deletes_it(tmp_path: Path) -> None:
    ops = tmp_path / "tag-operations"
    shutil.copytree(settings.REPO_ROOT / "project_definitions" / "tag-operations", ops)
    base = ops / "base.yaml"
    base.write_text(
        base.read_text().replace(
            "{keyword: PatientID, op: secure_hash}", "{keyword: PatientID, op: delete}"
        )
    )
    project = make_project()
    policy = load_policy(
        ops, project.tag_operations.base, project.tag_operations.manufacturer_overrides
    )
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'hash.db'}")
    engine = Deidentifier(
        project, policy, ProjectHasher(LocalHashing(TEST_KEY, SaltStore(database)), "p")
    )
    raw = tmp_path / "raw"
    write_study(StudySpec(patient_id=MRN, accession_number="ACC1", series=[SeriesSpec(2)]), raw)
    ds, pseudo_patient_id = _deidentify(engine, raw, tmp_path / "out", "PE-001")
    assert "PatientID" not in ds and pseudo_patient_id is None


@pytest.fixture
def voxl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "voxl"
    (home / "dagster").mkdir(parents=True)
    registry = tmp_path / "projects"
    shutil.copytree(settings.REPO_ROOT / "project_definitions", registry)
    example = yaml.safe_load((registry / "test-extract-uclh-omop-cdm.yaml").read_text())
    for slug, name in (
        ("pre-epic-study", "Pre Epic Study"),
        ("legacy-mri-cohort", "Legacy MRI Cohort"),
    ):
        example["project"] = {**example["project"], "slug": slug, "name": name}
        (registry / f"{slug}.yaml").write_text(yaml.safe_dump(example))
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(registry))
    monkeypatch.setenv("VOXL_HASHING_KEY", "participant-test-key-0123456789abcdef")
    monkeypatch.setenv("VOXL_VNA_AE_TITLE", "DEMOVNA")
    for name in list(os.environ):
        if name.startswith("VOXL_DATABASE_URL"):
            monkeypatch.delenv(name)
    return home


def _archive(root: Path) -> None:
    """The studies the fixture's rows ask for, as the VNA holds them."""
    when = datetime(2019, 5, 1, 9, 0)
    studies = [
        ("40000001", "ACC0001", "1.2.826.0.1.3680043.10.1.1", None),
        ("40000002", "ACC0002", "1.2.826.0.1.3680043.10.1.2", None),
        ("40000002", "ACC0003", "1.2.826.0.1.3680043.10.1.3", "1.2.826.0.1.3680043.10.1.3.7"),
        ("40000004", "ACC0005", "1.2.826.0.1.3680043.10.9.9", None),  # found by MRN + accession
        ("50000001", "ACC1001", "1.2.826.0.1.3680043.10.2.1", None),
        ("50000002", "ACC1002", "1.2.826.0.1.3680043.10.2.2", None),
    ]
    for index, (mrn, accession, uid, series_uid) in enumerate(studies):
        series = [SeriesSpec(instances=2)]
        if series_uid:  # a series-level request: only this series of the study is wanted
            series = [SeriesSpec(instances=2, series_uid=series_uid), SeriesSpec(1, number=2)]
        spec = StudySpec(
            patient_id=mrn,
            accession_number=accession,
            study_uid=uid,
            study_datetime=when,
            series=series,
        )
        write_study(spec, root / f"study-{index}")


@pytest.mark.slow
def test_participant_ids_reach_the_images_and_the_mapping_table(
    voxl_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.cohort.extract_reader import read_any_summaries
    from voxl_assets.cohort.registration import register
    from voxl_assets.orchestration import (
        materialize_cohort,
        materialize_export,
        materialize_studies,
    )
    from voxl_assets.partitions import STUDIES

    _archive(voxl_env / "archive")
    source = voxl_env / "incoming" / "pre-epic.csv"
    source.parent.mkdir()
    shutil.copy(FIXTURE, source)
    port = free_port()
    monkeypatch.setenv("VOXL_VNA_PORT", str(port))
    database = VoxlDatabase()
    with DemoVna(voxl_env / "archive", port=port, ae_title="DEMOVNA"):
        instance = DagsterInstance.get()
        keys = [register(database, s, s.project_slug).key for s in read_any_summaries(source)]
        for key in keys:
            materialize_cohort(instance, key, "test")
        materialize_studies(instance, list(instance.get_dynamic_partitions(STUDIES)), "test")
        for key in keys:
            materialize_export(instance, key, "test")

    with database.session() as session:
        studies = list(session.query(Study))
    assert {s.status for s in studies} == {StudyStatus.UPLOADED.value}, [
        (s.id, s.status, s.failure_reason) for s in studies
    ]

    def linker(project: str, extract: str) -> pd.DataFrame:
        path = voxl_env / "exports" / project / extract / "IMAGE_LINKER.parquet"
        return pd.read_parquet(path).set_index("procedure_occurrence_id")

    first = linker("pre-epic-study", "2023-01-01T00-00-00")
    assert first["pseudo_patient_id"].to_dict() == {1: "PE-001", 2: "PE-002", 3: "PE-002"}
    later = linker("pre-epic-study", "2023-06-01T12-00-00")
    assert later["pseudo_patient_id"].to_dict() == {5: "PE-004"}
    legacy = linker("legacy-mri-cohort", "2023-01-01T00-00-00")
    hashed = list(legacy["pseudo_patient_id"])
    assert len(set(hashed)) == 2 and all(len(h) == 64 and int(h, 16) >= 0 for h in hashed)

    def delivered(project: str, extract: str, pseudo_uid: str) -> list[pydicom.Dataset]:
        path = voxl_env / "delivered" / "images" / project / extract / "dicom" / f"{pseudo_uid}.zip"
        with zipfile.ZipFile(path) as archive:
            return [pydicom.dcmread(archive.open(name)) for name in archive.namelist()]

    for procedure, participant in ((1, "PE-001"), (3, "PE-002")):
        images = delivered(
            "pre-epic-study", "2023-01-01T00-00-00", first.loc[procedure, "pseudo_study_uid"]
        )
        assert {str(ds.PatientID) for ds in images} == {participant}
        if procedure == 3:  # the series request: only its two instances, one series
            assert len(images) == 2 and len({str(ds.SeriesInstanceUID) for ds in images}) == 1
    images = delivered(
        "legacy-mri-cohort", "2023-01-01T00-00-00", legacy.iloc[0]["pseudo_study_uid"]
    )
    assert {str(ds.PatientID) for ds in images} == {hashed[0]}
