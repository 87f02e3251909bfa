"""The CSV escape hatch as the hospital's existing tooling writes it (fixtures in
``tests/fixtures/escape_hatch/``): ISO timestamps, several projects and timestamps in one file,
whitespace and NA values, duplicate rows, participant ids, series ids; and its refusals."""

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from voxl_assets.cohort.csv_extract import read_csv_extract, read_csv_summaries
from voxl_assets.cohort.extract_reader import ExtractError, read_any_extract, read_any_summaries

FIXTURES = Path(__file__).parent / "fixtures" / "escape_hatch"
TWO_PROJECTS = FIXTURES / "two_projects_three_extracts.csv"
HEADER = (
    "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,study_date,"
    "study_uid,series_uid,participant_id\n"
)


def _extracts(path: Path) -> dict[tuple[str, datetime], pd.DataFrame]:
    return {
        (s.project_slug, s.extract_datetime): read_any_extract(path, s).messages
        for s in read_any_summaries(path)
    }


def test_one_extract_per_project_and_timestamp() -> None:
    summaries = read_csv_summaries(TWO_PROJECTS)
    assert [(s.project_slug, s.extract_datetime) for s in summaries] == [
        # T...Z, the space form and +01:00 of the same instant are one extract
        ("pre-epic-study", datetime(2023, 1, 1, 0, 0)),
        ("pre-epic-study", datetime(2023, 6, 1, 12, 0)),
        ("legacy-mri-cohort", datetime(2023, 1, 1, 0, 0)),
    ]
    assert {s.project_name for s in summaries} == {"Pre Epic Study", "Legacy MRI Cohort"}
    assert all(s.source == TWO_PROJECTS and s.settings["source"] == "csv" for s in summaries)


def test_each_extract_holds_its_own_rows() -> None:
    first = read_csv_extract(TWO_PROJECTS, read_csv_summaries(TWO_PROJECTS)[0])
    assert first.rows_read == 5  # spreadsheet rows 2-6
    assert first.duplicate_rows_folded == 1  # row 5 repeats row 4
    assert first.skipped_not_imaging == 1  # row 6: no accession number, no study UID
    messages = first.messages.set_index("procedure_occurrence_id")
    assert list(messages.index) == [1, 2, 3]
    assert messages.loc[1, "mrn"] == "40000001"  # stray spaces stripped
    assert messages.loc[2, "accession_number"] == "ACC0002"
    assert messages.loc[3, "accession_number"] == ""  # NA is no value, not the text "NA"
    assert messages.loc[2, "series_uid"] == ""
    assert messages.loc[3, "series_uid"] == "1.2.826.0.1.3680043.10.1.3.7"
    assert list(messages["participant_id"]) == ["PE-001", "PE-002", "PE-002"]
    assert messages.loc[1, "study_datetime"] == pd.Timestamp("2019-05-01")
    assert messages.loc[2, "study_datetime"] == pd.Timestamp("2019-05-02 09:30")
    assert list(first.messages["_row"]) == [2, 3, 4]


def test_the_other_extracts_of_the_file() -> None:
    extracts = _extracts(TWO_PROJECTS)
    later = extracts[("pre-epic-study", datetime(2023, 6, 1, 12, 0))]
    assert list(later["procedure_occurrence_id"]) == [5]
    assert later["study_uid"].iloc[0] == "" and later["accession_number"].iloc[0] == "ACC0005"
    assert later["study_datetime"].iloc[0] == pd.Timestamp("2020-01-01 08:15")
    legacy = extracts[("legacy-mri-cohort", datetime(2023, 1, 1, 0, 0))]
    # Procedure ids are the extract's own: 1 and 2 exist in both projects.
    assert list(legacy["procedure_occurrence_id"]) == [1, 2]
    assert list(legacy["accession_number"]) == ["ACC1001", "ACC1002"]  # rows 9-10 folded
    assert list(legacy["participant_id"]) == ["", ""]
    assert pd.isna(legacy["study_datetime"].iloc[1])  # null / NULL


def test_a_spreadsheet_export_with_bom_crlf_quotes_and_extra_columns() -> None:
    cohort = read_csv_extract(FIXTURES / "excel_export.csv")
    assert cohort.summary.project_slug == "pre-epic-study"
    assert cohort.summary.extract_datetime == datetime(2023, 2, 1, 8, 0)  # lower-case z
    assert list(cohort.messages["procedure_occurrence_id"]) == [101, 102, 103]
    assert list(cohort.messages["mrn"]) == ["40000101", "40000102", "40000103"]
    assert list(cohort.messages["accession_number"]) == ["ACC0101", "ACC0102", ""]
    assert pd.isna(cohort.messages["study_datetime"].iloc[2])


def test_reading_without_naming_the_extract_needs_a_file_of_one(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="holds 3 extracts"):
        read_csv_extract(TWO_PROJECTS)


def test_a_file_changed_after_registration_is_refused(tmp_path: Path) -> None:
    summary = read_csv_summaries(TWO_PROJECTS)[1]
    changed = tmp_path / "changed.csv"
    changed.write_text(TWO_PROJECTS.read_text().replace("2023-06-01T12:00:00Z", "2023-07-01"))
    moved = type(summary)(
        summary.project_name, summary.extract_datetime, {}, None, changed
    )  # the registration's view
    with pytest.raises(ExtractError, match="holds no rows of project pre-epic-study"):
        read_csv_extract(changed, moved)


def _csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "extract.csv"
    path.write_text(header + "".join(f"{r}\n" for r in rows))
    return path


ROW = "{id},{mrn},{acc},P,2023-01-01T00:00:00Z,2019-01-01,1.2.{id},,{participant}"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [ROW.format(id=1, mrn="4711", acc="A1", participant="4711")],
            r"row 2: column participant_id holds the row's MRN",
        ),
        (
            [ROW.format(id=1, mrn="40000001", acc="ACC77", participant="P-40000001-X")],
            r"row 2: column participant_id holds the row's MRN",
        ),
        (
            [ROW.format(id=1, mrn="40000001", acc="ACC77", participant="p-acc77")],
            r"row 2: column participant_id holds the row's MRN or accession number",
        ),
        (
            [ROW.format(id=1, mrn="1", acc="A1", participant="P\\1")],
            r"row 2: column participant_id must be printable ASCII without a backslash",
        ),
        (
            [ROW.format(id=1, mrn="1", acc="A1", participant="Pärticipant")],
            r"row 2: column participant_id must be printable ASCII",
        ),
        (
            [ROW.format(id=1, mrn="1", acc="A1", participant="P" * 65)],
            r"row 2: column participant_id is longer than 64 characters",
        ),
        (
            [
                ROW.format(id=1, mrn="1", acc="A1", participant="P1"),
                ROW.format(id=2, mrn="1", acc="A2", participant="P2"),
            ],
            r"column participant_id: the rows of one MRN carry different participant ids .*rows 2, 3",
        ),
        (
            [
                ROW.format(id=1, mrn="1", acc="A1", participant="P1"),
                ROW.format(id=2, mrn="1", acc="A2", participant=""),
            ],
            r"the rows of one MRN carry different participant ids \(or some none",
        ),
        (
            [
                ROW.format(id=1, mrn="1", acc="A1", participant="P1"),
                ROW.format(id=2, mrn="2", acc="A2", participant="P1"),
            ],
            r"one participant id is given to several MRNs \(rows 2, 3\)",
        ),
    ],
)
def test_participant_ids_must_be_pseudonyms_of_one_patient(
    tmp_path: Path, rows: list[str], message: str
) -> None:
    with pytest.raises(ExtractError, match=message) as error:
        read_csv_extract(_csv(tmp_path, *rows))
    assert "40000001" not in str(error.value) and "4711" not in str(error.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["x,1,A,P,2023-01-01,2019-01-01,1.2,,"], r"row 2: column procedure_id is not a whole"),
        ([",1,A,P,2023-01-01,2019-01-01,1.2,,"], r"row 2: column procedure_id is empty"),
        (["1,NA,A,P,2023-01-01,2019-01-01,1.2,,"], r"row 2: column mrn is empty"),
        (["1,1,A,,2023-01-01,2019-01-01,1.2,,"], r"row 2: column project_name is empty"),
        (["1,1,A,!!!,2023-01-01,2019-01-01,1.2,,"], r"row 2: column project_name has no letters"),
        (["1,1,A,P,,2019-01-01,1.2,,"], r"row 2: column extract_generated_timestamp is empty"),
        (
            ["1,1,A,P,2023-01-01,2019-01-01,1.2,,", "2,2,B,P,01/02/2023,2019-01-01,1.3,,"],
            r"row 3: column extract_generated_timestamp is not a datetime",
        ),
        (["1,1,A,P,2023-01-01,31/12/2019,1.2,,"], r"row 2: column study_date is not a date"),
        (
            ["1,1,A,P,2023-01-01,2019-01-01,1.2,,", "1,2,B,P,2023-01-01,2019-01-01,1.3,,"],
            r"column procedure_id: 2 rows share a procedure_id but differ .*rows 2, 3",
        ),
        (["1,1,A,P,2023-01-01,2019-01-01,1.2,extra,,"], r"not a well-formed CSV file near row 2"),
        (
            ["1,1,A,P,2023-01-01,2019-01-01,1.2,,", "2,2,B,P,2023-01-01,2019-01-01,1.3,x,,"],
            r"not a well-formed CSV file near row 3",
        ),
    ],
)
def test_bad_rows_name_file_column_and_row(tmp_path: Path, rows: list[str], message: str) -> None:
    path = _csv(tmp_path, *rows)
    with pytest.raises(ExtractError, match=message) as error:
        read_csv_summaries(path)
        read_csv_extract(path)
    assert str(path) in str(error.value)


def test_missing_columns_empty_files_and_bad_encodings(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("procedure_id,mrn\n1,2\n")
    with pytest.raises(ExtractError, match="missing column.*accession_number"):
        read_csv_summaries(path)
    path.write_text("")
    with pytest.raises(ExtractError, match="is empty"):
        read_csv_summaries(path)
    path.write_text(HEADER)
    with pytest.raises(ExtractError, match="has a header but no rows"):
        read_csv_summaries(path)
    path.write_bytes(HEADER.encode() + b"1,\xe9\xff,A,P,2023-01-01,2019-01-01,1.2,,\n")
    with pytest.raises(ExtractError, match="not UTF-8 text"):
        read_csv_summaries(path)


def test_a_row_with_neither_accession_nor_uid_is_not_imaging(tmp_path: Path) -> None:
    cohort = read_csv_extract(
        _csv(
            tmp_path,
            "1,1,,P,2023-01-01,2019-01-01,,,",
            "2,2,NA,P,2023-01-01,2019-01-01,null,1.2.3,",
        )
    )
    assert cohort.rows_read == 2 and cohort.skipped_not_imaging == 2 and cohort.imaging_studies == 0
