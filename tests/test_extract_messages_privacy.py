"""A bad cell may hold an identifier (an MRN typed into a date column, a name pasted into an id):
the errors about it name the file, column and row, never the value. Each kind of bad cell the
readers meet, with an identifier as the bad value, goes through the sensor, the cohort run and
`voxl status`; the value must be absent from the error, the sensor log, everything the Dagster
instance stored (event log, compute logs) and the status report (issue 13, finding 12)."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, instance_for_test, materialize

from resources.extracts import ExtractsFolderResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from tests.helpers.projects import write_project
from tests.helpers.sensor_tick import tick
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cli import main
from voxl_assets.cohort.extract_reader import ExtractError, read_any_extract, read_any_summaries
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

MRN = "47110021"
NAME = "SMITH^JOHN"
ACCESSION = "ACC99887766"
CSV_HEADER = (
    "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,study_date,"
    "study_uid,series_uid,participant_id\n"
)
GOOD_CSV_ROW = "1,40000001,ACC1,P,2023-01-01T00:00:00Z,2019-01-01,1.2.3,,PX-1\n"


def _set(path: Path, column: str, values: list[object], arrow_type: pa.DataType) -> None:
    table = pq.read_table(path)
    array = pa.array(values, arrow_type)
    if column in table.schema.names:
        table = table.set_column(table.schema.get_field_index(column), column, array)
    else:
        table = table.append_column(column, array)
    pq.write_table(table.replace_schema_metadata(None), path)


PROCEDURES = "public/omop/PROCEDURE_OCCURRENCE.parquet"
PERSONS = "private/PERSON_LINKS.parquet"
LINKS = "private/PROCEDURE_OCCURRENCE_LINKS.parquet"


def _parquet_cell(file: str, column: str, bad: object, arrow_type: pa.DataType) -> Callable:
    def write(directory: Path) -> Path:
        extract = write_omop_extract(directory / "extract", synthetic_extract_rows(3, people=3))
        good: dict[str, list[object]] = {
            "procedure_occurrence_id": [1, 2, 3],
            "person_id": [1, 2, 3],
            "procedure_datetime": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "PrimaryMrn": ["40000001", "40000002", "40000003"],
            "AccessionNumber": ["A1", "A2", "A3"],
            "StudyUid_X": ["1.2.1", "1.2.2", "1.2.3"],
            "SeriesUid_X": ["1.3.1", "1.3.2", "1.3.3"],
        }
        values = list(good[column])
        values[1] = bad
        if arrow_type == pa.binary():
            values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        elif arrow_type == pa.string():
            values = [str(v) for v in values]
        elif arrow_type == pa.float64():
            values = [float(v) for v in values]  # type: ignore[arg-type]
        _set(extract / file, column, values, arrow_type)
        return extract

    return write


def _summary_datetime(directory: Path) -> Path:
    extract = write_omop_extract(directory / "extract", synthetic_extract_rows(2))
    summary = extract / "extract_summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "datetime": f"MRN {MRN}"}))
    return extract


def _csv(row: str, *, header: str = CSV_HEADER, raw: bytes | None = None) -> Callable:
    def write(directory: Path) -> Path:
        path = directory / "extract.csv"
        if raw is not None:
            path.write_bytes(header.encode() + GOOD_CSV_ROW.encode() + raw)
        else:
            path.write_text(header + GOOD_CSV_ROW + row)
        return path

    return write


def _csv_row(**cells: str) -> str:
    row = {
        "procedure_id": "2",
        "mrn": "40000002",
        "accession_number": "ACC2",
        "project_name": "P",
        "extract_generated_timestamp": "2023-01-01T00:00:00Z",
        "study_date": "2019-01-02",
        "study_uid": "1.2.4",
        "series_uid": "",
        "participant_id": "PX-2",
        **cells,
    }
    return ",".join(f'"{v}"' if "\n" in v or "," in v else v for v in row.values()) + "\n"


CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    # name: (writer, the identifier that must not be echoed, what the error names)
    "parquet procedure id holds an MRN": (
        _parquet_cell(PROCEDURES, "procedure_occurrence_id", f"MRN{MRN}", pa.string()),
        MRN,
        "column procedure_occurrence_id",
    ),
    "parquet person id holds a name": (
        _parquet_cell(PROCEDURES, "person_id", NAME, pa.string()),
        NAME,
        "column person_id",
    ),
    "parquet link id holds an accession": (
        _parquet_cell(LINKS, "procedure_occurrence_id", ACCESSION, pa.string()),
        ACCESSION,
        "column procedure_occurrence_id",
    ),
    "parquet person link id holds an MRN": (
        _parquet_cell(PERSONS, "person_id", f"{MRN}.5", pa.string()),
        MRN,
        "column person_id",
    ),
    "parquet datetime holds an MRN": (
        _parquet_cell(PROCEDURES, "procedure_datetime", MRN, pa.string()),
        MRN,
        "column procedure_datetime",
    ),
    "parquet MRN with a newline": (
        _parquet_cell(PERSONS, "PrimaryMrn", f"{MRN}\n{NAME}", pa.string()),
        MRN,
        "column PrimaryMrn",
    ),
    "parquet MRN not UTF-8": (
        _parquet_cell(PERSONS, "PrimaryMrn", b"\xff" + MRN.encode(), pa.binary()),
        MRN,
        "column PrimaryMrn",
    ),
    "parquet MRN fractional": (
        _parquet_cell(PERSONS, "PrimaryMrn", float(MRN) + 0.5, pa.float64()),
        MRN,
        "column PrimaryMrn",
    ),
    "parquet accession too long": (
        _parquet_cell(LINKS, "AccessionNumber", f"{ACCESSION} " * 6, pa.string()),
        ACCESSION,
        "column AccessionNumber",
    ),
    "parquet study UID with NUL": (
        _parquet_cell(LINKS, "StudyUid_X", f"1.2.{MRN}\x00", pa.string()),
        MRN,
        "column StudyUid_X",
    ),
    "parquet series UID with CR": (
        _parquet_cell(LINKS, "SeriesUid_X", f"1.2.{MRN}\r9", pa.string()),
        MRN,
        "column SeriesUid_X",
    ),
    "summary datetime holds an MRN": (_summary_datetime, MRN, "field 'datetime'"),
    "CSV procedure id holds an MRN": (
        _csv(_csv_row(procedure_id=f"MRN{MRN}")),
        MRN,
        "column procedure_id",
    ),
    "CSV timestamp holds an MRN": (
        _csv(_csv_row(extract_generated_timestamp=MRN)),
        MRN,
        "column extract_generated_timestamp",
    ),
    "CSV study date holds a name": (_csv(_csv_row(study_date=NAME)), NAME, "column study_date"),
    "CSV MRN with a newline": (_csv(_csv_row(mrn=f"{MRN}\n1")), MRN, "column mrn"),
    "CSV accession too long": (
        _csv(_csv_row(accession_number=ACCESSION * 6)),
        ACCESSION,
        "column accession_number",
    ),
    "CSV series UID with a tab": (
        _csv(_csv_row(series_uid=f"1.2.{MRN}\t9")),
        MRN,
        "column series_uid",
    ),
    "CSV participant id is the MRN": (
        _csv(_csv_row(mrn=MRN, participant_id=f"P-{MRN}")),
        MRN,
        "column participant_id",
    ),
    "CSV participant id not ASCII": (
        _csv(_csv_row(participant_id=f"{NAME}-Ö")),
        NAME,
        "column participant_id",
    ),
    "CSV cell not UTF-8": (
        _csv("", raw=f"2,{MRN},A,P,2023-01-01,2019-01-02,1.2,,\n".encode() + b"\xe9"),
        MRN,
        "not UTF-8 text",
    ),
    "CSV row with a cell too many": (
        _csv(_csv_row(participant_id=f"PX-2,{MRN}")[:-1].replace('"', "") + "\n"),
        MRN,
        "more cells than the header",
    ),
}


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    """One instance for all cases (they use different extract folders and databases); a value
    found in its storage fails whichever case looks, so a leak is never missed."""
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.mark.slow  # a sensor tick and a cohort run per case
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_cell_is_named_never_echoed(
    case: str,
    instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    writer, secret, named = CASES[case]
    folder = tmp_path / "extracts"
    folder.mkdir()
    source = writer(folder)
    projects = tmp_path / "projects"
    write_project(projects)
    write_project(projects, "p", name="P")
    database_url = f"sqlite:///{tmp_path / 'voxl.db'}"
    monkeypatch.setenv("VOXL_EXTRACTS_DIR", str(folder))
    monkeypatch.setenv("VOXL_EXTRACT_QUIET_SECONDS", "0")
    monkeypatch.setenv("VOXL_DATABASE_URL", database_url)
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(projects))

    # The reader's error.
    with pytest.raises(ExtractError) as error:
        for summary in read_any_summaries(source):
            read_any_extract(source, summary)
    message = str(error.value)
    assert named in message and str(source.name) in message
    assert secret not in message

    resources = {
        "voxl_db": VoxlDatabaseResource(url=database_url),
        "projects": ProjectRegistryResource(directory=str(projects)),
        "extracts": ExtractsFolderResource(directory=str(folder), quiet_seconds=0),
    }
    # The sensor: a summary-level problem is its to report; otherwise it starts a run.
    first = tick(instance, resources, None)
    logs = "\n".join(message for _level, message in first.logs)
    assert secret not in logs
    for request in first.result.run_requests or []:
        result = materialize(
            [cohort_messages],
            instance=instance,
            partition_key=request.partition_key,
            resources=resources,
            raise_on_error=False,
        )
        assert not result.success
    assert first.errors or first.result.run_requests  # it was reported or it ran (and failed)
    # Everything the Dagster instance stored: runs, event log, compute logs.
    stored = [p for p in Path(instance.root_directory).rglob("*") if p.is_file()]
    assert stored
    assert not [p for p in stored if secret.encode() in p.read_bytes()]

    assert main(["status"]) == 0
    assert main(["status", "--json"]) == 0
    report = capsys.readouterr().out
    assert named in report or "not UTF-8" in report  # the problem is shown ...
    assert secret not in report  # ... without the value
