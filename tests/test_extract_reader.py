"""Reading OMOP ES extracts (both layouts) and the CSV escape hatch, and every bad input."""

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxl_assets.cohort.csv_extract import read_csv_extract
from voxl_assets.cohort.extract_reader import ExtractError, read_any_extract, read_extract
from voxl_assets.synthetic import ExtractRow, synthetic_extract_rows, write_omop_extract


@pytest.mark.parametrize("layout", ["flat", "batched"])
def test_both_layouts_give_the_same_messages(tmp_path: Path, layout: str) -> None:
    rows = synthetic_extract_rows(25, seed=3)
    cohort = read_extract(write_omop_extract(tmp_path / layout, rows, layout=layout))
    assert cohort.summary.project_slug == "test-extract-uclh-omop-cdm"
    assert cohort.summary.extract_datetime == datetime(2026, 11, 1, 12, 0)
    assert cohort.summary.git_hash == "0123abcd"
    assert cohort.rows_read == 25 and cohort.imaging_studies == 25
    messages = cohort.messages.sort_values("procedure_occurrence_id")
    assert list(messages["mrn"]) == [r.mrn for r in rows]
    assert list(messages["accession_number"]) == [r.accession_number for r in rows]
    assert list(messages["study_uid"]) == [r.study_uid for r in rows]
    assert messages["study_datetime"].iloc[0] == pd.Timestamp(rows[0].study_datetime)


def _rewrite(path: Path, change: Callable[[pd.DataFrame], object]) -> None:
    frame = pd.read_parquet(path)
    change(frame)
    frame.to_parquet(path, index=False)


def test_ids_as_floats_and_identifiers_with_whitespace(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(5))
    _rewrite(
        extract / "public/omop/PROCEDURE_OCCURRENCE.parquet",
        lambda f: f.__setitem__(
            "procedure_occurrence_id", f["procedure_occurrence_id"].astype(float)
        ),
    )
    _rewrite(
        extract / "private/PERSON_LINKS.parquet",
        lambda f: f.__setitem__("PrimaryMrn", "  " + f["PrimaryMrn"] + " \t"),
    )
    _rewrite(
        extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet",
        lambda f: f.__setitem__(
            "procedure_occurrence_id", f["procedure_occurrence_id"].astype(float)
        ),
    )
    cohort = read_extract(extract)
    assert cohort.imaging_studies == 5
    assert all(m == m.strip() and m.isdigit() for m in cohort.messages["mrn"])


def test_rows_without_accession_and_uid_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(6)
    rows[1].accession_number, rows[1].study_uid = "", ""
    rows[2].study_uid = ""  # accession only: still imaging (emergency case)
    cohort = read_extract(write_omop_extract(tmp_path / "e", rows))
    assert cohort.rows_read == 6
    assert cohort.skipped_not_imaging == 1
    assert cohort.imaging_studies == 5


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    _rewrite(
        extract / "private/PERSON_LINKS.parquet", lambda f: f.__setitem__("NhsNumber", "9434765919")
    )
    assert read_extract(extract).imaging_studies == 3


def test_missing_file_is_named(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    (extract / "private/PERSON_LINKS.parquet").unlink()
    with pytest.raises(ExtractError, match=r"missing private/PERSON_LINKS\.parquet"):
        read_extract(extract)


def test_missing_summary_is_named(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    (extract / "extract_summary.json").unlink()
    with pytest.raises(ExtractError, match="extract_summary.json: missing"):
        read_extract(extract)


def test_missing_column_is_named(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    links = extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet"
    _rewrite(links, lambda f: f.drop(columns=["StudyUid_X"], inplace=True))
    with pytest.raises(ExtractError) as err:
        read_extract(extract)
    assert str(links) in str(err.value) and "StudyUid_X" in str(err.value)


def test_unreadable_parquet_is_named(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3), layout="batched")
    broken = extract / "private/person_links/part-1.parquet"
    broken.write_bytes(b"this is not parquet")
    with pytest.raises(ExtractError, match=r"part-1\.parquet: not a readable parquet file"):
        read_extract(extract)


def test_bad_datetime_in_summary(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    (extract / "extract_summary.json").write_text(
        json.dumps({"datetime": "yesterday", "settings": {"cdm_source_name": "x"}})
    )
    with pytest.raises(ExtractError, match=r"extract_summary\.json: field 'datetime'"):
        read_extract(extract)


def test_bad_procedure_datetime_names_row(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(4))
    public = extract / "public/omop/PROCEDURE_OCCURRENCE.parquet"

    def corrupt(frame: pd.DataFrame) -> None:
        frame["procedure_datetime"] = frame["procedure_datetime"].astype(str)
        frame.loc[2, "procedure_datetime"] = "31/31/2024 25:00"

    _rewrite(public, corrupt)
    with pytest.raises(
        ExtractError, match=r"row 2: column procedure_datetime is not a date or datetime"
    ):
        read_extract(extract)


def test_duplicate_procedure_rows_are_an_error(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(4)
    extract = write_omop_extract(tmp_path / "e", rows)
    links = extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet"
    frame = pd.read_parquet(links)
    pd.concat([frame, frame.iloc[[1]]]).to_parquet(links, index=False)
    with pytest.raises(ExtractError) as err:
        read_extract(extract)
    assert "duplicate procedure occurrence link" in str(err.value)
    assert rows[1].accession_number not in str(err.value)


def test_mrn_mapping_to_two_persons_is_an_error_without_the_mrn(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(4, people=4)
    rows[3].mrn = rows[0].mrn
    with pytest.raises(ExtractError) as err:
        read_extract(write_omop_extract(tmp_path / "e", rows))
    assert "more than one person_id" in str(err.value)
    assert rows[0].mrn not in str(err.value)


def test_person_without_mrn_is_an_error(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(4, people=4))
    _rewrite(extract / "private/PERSON_LINKS.parquet", lambda f: f.drop(index=[0], inplace=True))
    with pytest.raises(ExtractError, match="has no MRN"):
        read_extract(extract)


CSV_HEADER = "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,study_date,study_uid,participant_id\n"


def test_csv_escape_hatch(tmp_path: Path) -> None:
    path = tmp_path / "pre-epic.csv"
    path.write_text(
        CSV_HEADER
        + "1, 123 ,ACC1,Pre Epic Study,2026-10-01 10:00:00,2019-05-01,1.2.3,P1\n"
        + "2,124,,Pre Epic Study,2026-10-01 10:00:00,2019-05-02,,P2\n"
        + "3.0,125,ACC3,Pre Epic Study,2026-10-01 10:00:00,,1.2.5,\n"
    )
    cohort = read_any_extract(path)
    assert cohort.summary.project_slug == "pre-epic-study"
    assert cohort.rows_read == 3 and cohort.skipped_not_imaging == 1
    assert list(cohort.messages["mrn"]) == ["123", "125"]
    assert list(cohort.messages["procedure_occurrence_id"]) == [1, 3]
    assert pd.isna(cohort.messages["study_datetime"].iloc[1])


def test_csv_missing_column_and_bad_date(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("procedure_id,mrn\n1,2\n")
    with pytest.raises(ExtractError, match="missing column.*accession_number"):
        read_csv_extract(path)
    path.write_text(CSV_HEADER + "1,123,ACC1,P,2026-10-01 10:00:00,not-a-date,1.2.3,\n")
    with pytest.raises(ExtractError, match="row 2: column study_date"):
        read_csv_extract(path)


def test_extract_row_dataclass_defaults() -> None:
    row = ExtractRow(1, 1, "1", "A", "1.2")
    assert row.study_datetime.year == 2024


# --- ids, identifiers and datetimes as real extracts carry them ---------------------------------


def _links(extract: Path) -> Path:
    return extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet"


def _persons(extract: Path) -> Path:
    return extract / "private/PERSON_LINKS.parquet"


def _procedures(extract: Path) -> Path:
    return extract / "public/omop/PROCEDURE_OCCURRENCE.parquet"


def _write_table(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path)


def _replace_column(path: Path, column: str, array: pa.Array) -> None:
    table = pq.read_table(path)
    _write_table(path, table.set_column(table.schema.get_field_index(column), column, array))


@pytest.mark.parametrize(
    ("values", "arrow_type"),
    [
        ([1, 2, 2**64 - 1], pa.uint64()),  # uint64 max: wrapped to -1 before
        ([1.0, 2.0, 1e19], pa.float64()),  # beyond int64
        ([1.0, 2.0, float(2**53 + 2)], pa.float64()),  # a float this large may be rounded
        (["1", "2", "18446744073709551615"], pa.string()),
        (["1", "2", "9223372036854775808"], pa.string()),  # int64 max + 1
        ([1.0, 2.0, 2.5], pa.float64()),
        ([1.0, 2.0, float("inf")], pa.float64()),
        ([1, 2, None], pa.int64()),
    ],
)
def test_ids_must_fit_a_signed_64_bit_integer(
    tmp_path: Path, values: list[object], arrow_type: pa.DataType
) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    _replace_column(_procedures(extract), "procedure_occurrence_id", pa.array(values, arrow_type))
    with pytest.raises(ExtractError) as error:
        read_extract(extract)
    message = str(error.value)
    assert "PROCEDURE_OCCURRENCE.parquet: row 2: column procedure_occurrence_id" in message
    assert "18446744073709551615" not in message and "1e+19" not in message


def test_largest_ids_are_kept_exactly(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(2)
    rows[0].procedure_occurrence_id, rows[1].procedure_occurrence_id = 2**63 - 1, -(2**63)
    rows[0].person_id = 2**62 + 1
    cohort = read_extract(write_omop_extract(tmp_path / "e", rows))
    assert sorted(cohort.messages["procedure_occurrence_id"]) == [-(2**63), 2**63 - 1]


def test_binary_mrn_columns_are_utf8_or_refused(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(3, people=3)
    extract = write_omop_extract(tmp_path / "e", rows)
    mrns = [r.mrn.encode() for r in rows]
    mrns[1] = " Müller-7 ".encode()  # UTF-8, with stray spaces
    _replace_column(_persons(extract), "PrimaryMrn", pa.array(mrns, pa.binary()))
    cohort = read_extract(extract)
    assert set(cohort.messages["mrn"]) == {rows[0].mrn, "Müller-7", rows[2].mrn}
    mrns[2] = b"\xff\xfe4711"
    _replace_column(_persons(extract), "PrimaryMrn", pa.array(mrns, pa.binary()))
    with pytest.raises(ExtractError, match=r"row 2: column PrimaryMrn is binary data that is not"):
        read_extract(extract)


@pytest.mark.parametrize("control", ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85"])
@pytest.mark.parametrize(
    ("file", "column"),
    [
        ("persons", "PrimaryMrn"),
        ("links", "AccessionNumber"),
        ("links", "StudyUid_X"),
        ("links", "SeriesUid_X"),
    ],
)
def test_control_characters_in_identifiers_are_refused(
    tmp_path: Path, control: str, file: str, column: str
) -> None:
    rows = synthetic_extract_rows(3, people=3)
    extract = write_omop_extract(tmp_path / "e", rows)
    path = _persons(extract) if file == "persons" else _links(extract)
    table = pq.read_table(path)
    values = [f"ID{n}" for n in range(table.num_rows)]
    values[1] = f"ID4{control}711"
    if column in table.schema.names:
        _replace_column(path, column, pa.array(values))
    else:
        _write_table(path, table.append_column(column, pa.array(values)))
    with pytest.raises(ExtractError, match=rf"row 1: column {column} holds a control character"):
        read_extract(extract)


def test_an_identifier_too_long_for_the_database_is_refused(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    _replace_column(_links(extract), "AccessionNumber", pa.array(["A1", "A2", "A" * 65]))
    with pytest.raises(ExtractError, match=r"row 2: column AccessionNumber is longer than 64"):
        read_extract(extract)


def test_timezone_aware_and_text_procedure_datetimes(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(3))
    _replace_column(
        _procedures(extract),
        "procedure_datetime",
        pa.array(["2024-01-31T13:45:00Z", "2024-02-01 08:00:00+01:00", "2024-02-02"]),
    )
    times = read_extract(extract).messages.sort_values("procedure_occurrence_id")
    assert list(times["study_datetime"]) == [
        pd.Timestamp("2024-01-31 13:45"),
        pd.Timestamp("2024-02-01 08:00"),  # wall-clock time kept, as DICOM study times are
        pd.Timestamp("2024-02-02"),
    ]


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-01 12:00:00", datetime(2026, 11, 1, 12, 0)),
        ("2026-11-01T12:00:00Z", datetime(2026, 11, 1, 12, 0)),
        ("2026-11-01T13:00:00+01:00", datetime(2026, 11, 1, 12, 0)),
        ("2026-11-01T12:00:00.999999", datetime(2026, 11, 1, 12, 0)),  # keys hold seconds
    ],
)
def test_summary_datetimes_in_iso_8601(tmp_path: Path, stamp: str, expected: datetime) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(1))
    summary = extract / "extract_summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "datetime": stamp}))
    assert read_extract(extract).summary.extract_datetime == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", r"not UTF-8 text \(byte 0\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"JSON nested too deeply|nested more than 32"),
        (
            json.dumps(
                {
                    "datetime": "2026-01-01",
                    "settings": {
                        "cdm_source_name": "x",
                        "a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                    },
                }
            ).encode(),
            r"nested more than 32",
        ),
        (b'{"datetime": 12, "settings": {"cdm_source_name": "x"}}', r"'datetime' is not a"),
        (b'{"datetime": "2026-01-01", "settings": {"cdm_source_name": []}}', r"cdm_source_name"),
        (b'{"datetime": "2026-01-01", "settings": {"cdm_source_name": "??"}}', r"no letters"),
        (b"{" + b" " * (1 << 20) + b"}", r"larger than"),
    ],
)
def test_summaries_that_are_not_summaries(tmp_path: Path, content: bytes, message: str) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(1))
    (extract / "extract_summary.json").write_bytes(content)
    with pytest.raises(ExtractError, match=message):
        read_extract(extract)


def test_a_summary_that_is_a_folder_is_named(tmp_path: Path) -> None:
    extract = write_omop_extract(tmp_path / "e", synthetic_extract_rows(1))
    summary = extract / "extract_summary.json"
    summary.unlink()
    summary.mkdir()
    with pytest.raises(ExtractError, match=r"extract_summary\.json: cannot be read \(is a dir"):
        read_extract(extract)


def test_a_zero_row_extract_is_read(tmp_path: Path) -> None:
    cohort = read_extract(write_omop_extract(tmp_path / "e", []))
    assert cohort.rows_read == 0 and cohort.imaging_studies == 0
