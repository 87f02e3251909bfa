"""Extract identity and ingest outcomes through `voxl populate`, `voxl status` and `voxl export`
on the embedded default: one source per (project, extract datetime), a failed ingest that leaves
only its failure, exit codes, 0-row extracts, CSV files of several extracts, exported_at."""

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from sqlalchemy import create_engine, func, select, text

from tests.helpers.projects import write_project
from voxl_assets.cli import main
from voxl_assets.db import Extract, Study, VoxlDatabase
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

KEY = "test-extract-uclh-omop-cdm/2026-11-01T12-00-00"
FIXTURES = Path(__file__).parent / "fixtures" / "escape_hatch"


@pytest.fixture
def voxl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    projects = tmp_path / "projects"
    local_ehr: dict[str, object] = {
        "destinations": {"ehr": {"kind": "local", "path": "delivered/ehr"}}
    }
    write_project(projects, extra=local_ehr)
    write_project(projects, "pre-epic-study", name="Pre Epic Study")
    write_project(projects, "legacy-mri-cohort", name="Legacy MRI Cohort")
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(projects))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("VOXL_DAGSTER_LOGS_DIR", raising=False)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    return home


def _status(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    report: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return report


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("voxl: error:")]


def _extract_partitions(home: Path) -> list[str]:
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return list(instance.get_dynamic_partitions("extracts"))


def test_another_folder_for_an_ingested_extract_is_refused_naming_both(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_omop_extract(tmp_path / "first", synthetic_extract_rows(7, seed=1))
    assert main(["populate", str(first)]) == 0
    other = write_omop_extract(tmp_path / "other", synthetic_extract_rows(3, seed=2))
    capsys.readouterr()
    assert main(["populate", str(other)]) == 2
    captured = capsys.readouterr()
    [line] = _error_lines(captured.err)
    assert f"extract {KEY} is already registered from {first} (ingested)" in line
    assert str(other) in line
    assert "new_studies" not in captured.out  # the old folder's counts are not shown
    [extract] = _status(capsys)
    assert (extract["source"], extract["total"]) == (str(first), 7)


def test_a_failed_ingest_leaves_only_its_failure_and_a_corrected_copy_replaces_it(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = synthetic_extract_rows(4, people=4)
    rows[3].mrn = rows[0].mrn
    bad = write_omop_extract(tmp_path / "bad", rows)
    assert main(["populate", str(bad)]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "PERSON_LINKS.parquet: column PrimaryMrn" in line and "row 0, row 3" in line
    assert rows[0].mrn not in line

    # Nothing but the failure: no extracts row, no studies, no partition; status says why.
    database = VoxlDatabase(f"sqlite:///{voxl_home / 'voxl.db'}")
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Extract)) == 0
        assert session.scalar(select(func.count()).select_from(Study)) == 0
    assert _extract_partitions(voxl_home) == []
    [failed] = _status(capsys)
    assert (failed["extract"], failed["state"], failed["total"], failed["source"]) == (
        KEY,
        "failed",
        None,
        str(bad),
    )
    assert "more than one person_id" in str(failed["reason"])
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert f"{KEY}  failed  from {bad}" in table and "more than one person_id" in table

    fixed = write_omop_extract(tmp_path / "fixed", synthetic_extract_rows(4, people=4))
    assert main(["populate", str(fixed)]) == 0
    out = capsys.readouterr().out
    assert f"replaces the registration from {bad}" in out and "new_studies: 4" in out
    [extract] = _status(capsys)
    assert (extract["state"], extract["source"], extract["total"]) == ("ingested", str(fixed), 4)
    assert _extract_partitions(voxl_home) == [KEY]


def _uint64_ids(extract: Path) -> None:
    path = extract / "public/omop/PROCEDURE_OCCURRENCE.parquet"
    table = pq.read_table(path)
    ids = pa.array([1, 2, 2**64 - 1], pa.uint64())
    pq.write_table(table.set_column(0, "procedure_occurrence_id", ids), path)


def _missing_column(extract: Path) -> None:
    path = extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet"
    pq.write_table(pq.read_table(path).drop(["StudyUid_X"]), path)


def _control_character_in_mrn(extract: Path) -> None:
    path = extract / "private/PERSON_LINKS.parquet"
    table = pq.read_table(path)
    mrns = pa.array(["40000001", "4000\n0002", "40000003"][: table.num_rows])
    pq.write_table(table.set_column(1, "PrimaryMrn", mrns), path)


def _undecodable_summary(extract: Path) -> None:
    (extract / "extract_summary.json").write_bytes(b"\xff\xfe{}")


def _nested_summary(extract: Path) -> None:
    (extract / "extract_summary.json").write_text("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_uint64_ids, "PROCEDURE_OCCURRENCE.parquet: row 2: column procedure_occurrence_id is not"),
        (_missing_column, "PROCEDURE_OCCURRENCE_LINKS.parquet: missing column(s) StudyUid_X"),
        (
            _control_character_in_mrn,
            "PERSON_LINKS.parquet: row 1: column PrimaryMrn holds a control",
        ),
        (_undecodable_summary, "extract_summary.json: not UTF-8 text (byte 0)"),
        (_nested_summary, "extract_summary.json: JSON nested"),
    ],
)
def test_bad_content_exits_2_with_one_line(
    voxl_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: object,
    expected: str,
) -> None:
    extract = write_omop_extract(tmp_path / "x", synthetic_extract_rows(3, people=3))
    damage(extract)  # type: ignore[operator]
    assert main(["populate", str(extract)]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert expected in line


@pytest.fixture
def limited_postgres(postgres_url: str) -> Iterator[str]:
    """The VOXL schema on PostgreSQL, and a role that may do everything but add studies."""
    VoxlDatabase(postgres_url).dispose()  # migrate as the owner
    role = f"voxl_limited_{uuid.uuid4().hex[:8]}"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
        conn.execute(text(f'REVOKE INSERT ON studies FROM "{role}"'))
    try:
        yield postgres_url.replace("postgres@", f"{role}@", 1)
    finally:
        with engine.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        engine.dispose()


def test_an_operational_failure_exits_1(
    voxl_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    limited_postgres: str,
) -> None:
    monkeypatch.setenv("VOXL_DATABASE_URL", limited_postgres)
    rows = synthetic_extract_rows(3)
    extract = write_omop_extract(tmp_path / "x", rows)
    assert main(["populate", str(extract)]) == 1
    err = capsys.readouterr().err
    [line] = _error_lines(err)
    assert "ingest of" in line and "failed (ProgrammingError); nothing was written" in line
    assert not any(r.mrn in err or r.accession_number in err for r in rows)
    [failed] = _status(capsys)
    assert failed["state"] == "failed"


def test_a_zero_row_extract_is_accepted_with_a_warning(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extract = write_omop_extract(tmp_path / "empty", [])
    assert main(["populate", str(extract)]) == 0
    out = capsys.readouterr().out
    assert "imaging_studies: 0" in out and "warning: 0 imaging studies" in out
    [status] = _status(capsys)
    assert status["state"] == "ingested" and status["total"] == 0
    assert status["warnings"] == [
        "0 imaging studies: the extract was accepted but has nothing to retrieve"
    ]
    assert main(["status"]) == 0
    assert f"{KEY}: warning: 0 imaging studies" in capsys.readouterr().out


def test_a_csv_of_several_projects_is_counted_per_project(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pre-epic.csv"
    shutil.copy(FIXTURES / "two_projects_three_extracts.csv", source)
    assert main(["populate", str(source)]) == 0
    out = capsys.readouterr().out
    headers = [line.split()[1] for line in out.splitlines() if line.startswith("extract ")]
    assert sorted(headers) == [
        "legacy-mri-cohort/2023-01-01T00-00-00",
        "pre-epic-study/2023-01-01T00-00-00",
        "pre-epic-study/2023-06-01T12-00-00",
    ]
    assert "duplicate_rows_folded: 1" in out and "skipped_not_imaging: 1" in out
    report = {s["extract"]: s for s in _status(capsys)}
    assert {k: (v["total"], v["source"]) for k, v in report.items()} == {
        "legacy-mri-cohort/2023-01-01T00-00-00": (2, str(source)),
        "pre-epic-study/2023-01-01T00-00-00": (3, str(source)),
        "pre-epic-study/2023-06-01T12-00-00": (1, str(source)),
    }
    assert sorted(_extract_partitions(voxl_home)) == sorted(str(key) for key in report)
    database = VoxlDatabase(f"sqlite:///{voxl_home / 'voxl.db'}")
    with database.session() as session:
        participants = dict(
            session.execute(
                select(Study.mrn, Study.participant_id).where(Study.project == "pre-epic-study")
            ).all()
        )
    assert participants == {"40000001": "PE-001", "40000002": "PE-002", "40000004": "PE-004"}
    # Populating the same file again is a no-op per extract.
    assert main(["populate", str(source)]) == 0
    assert capsys.readouterr().out.count("new_studies: 0") == 3


def test_exported_at_is_set_when_the_bundle_is_delivered(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extract = write_omop_extract(tmp_path / "x", synthetic_extract_rows(3))
    assert main(["populate", str(extract)]) == 0
    [before] = _status(capsys)
    assert before["exported_at"] is None
    assert main(["export", "test-extract-uclh-omop-cdm", "2026-11-01T12-00-00"]) == 0
    [after] = _status(capsys)
    assert after["exported_at"] is not None
    delivered = voxl_home / "delivered" / "ehr" / "test-extract-uclh-omop-cdm"
    assert any(delivered.rglob("IMAGE_LINKER.parquet"))


def test_a_csv_without_rows_holds_no_extract(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "empty.csv"
    source.write_text(
        "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,study_date,"
        "study_uid\n"
    )
    assert main(["populate", str(source)]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert f"{source}: has a header but no rows" in line


def test_the_leak_guard_checks_a_csv_extract_against_its_registered_identifiers(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CSV extract has no private files: the identifiers the guard looks for are the ones the
    # VOXL database holds for its studies. Here a participant id is another patient's MRN.
    source = tmp_path / "pre-epic.csv"
    source.write_text(
        "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,study_date,"
        "study_uid,participant_id\n"
        "1,40000001,ACC0001,Pre Epic Study,2023-01-01T00:00:00Z,2019-05-01,1.2.3.4.1,PE-001\n"
        "2,40000002,ACC0002,Pre Epic Study,2023-01-01T00:00:00Z,2019-05-02,1.2.3.4.2,40000001\n"
    )
    assert main(["populate", str(source)]) == 0
    database = VoxlDatabase(f"sqlite:///{voxl_home / 'voxl.db'}")
    with database.session() as session:
        for study in session.scalars(select(Study)):
            study.status = "uploaded"
            study.pseudo_study_uid = f"2.25.{study.id}"
            study.pseudo_patient_id = study.participant_id
    capsys.readouterr()
    assert main(["export", "pre-epic-study", "2023-01-01T00-00-00"]) == 1
    err = capsys.readouterr().err
    assert "leak guard" in err and "IMAGE_LINKER.parquet" in err
    assert "40000001" not in err
    assert not (voxl_home / "delivered").exists()
