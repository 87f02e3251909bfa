"""Finding 4, EHR side: the leak guard catches identifiers of the private files embedded in free
text however they are written (sentence punctuation, glued prefixes, separators inside, case,
full-width digits, any position in a long note, text files too), names the file, column and row,
and leaves ordinary text alone. Parametrised over the forms, then a property test."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxl_assets.export.leak_guard import private_identifiers, scan_bundle

MRNS = ["47000022", "47000023", "0012345678"]
ACCESSIONS = ["ACC5566778", "RIS-2024-00042"]
STUDY_UIDS = ["1.2.826.0.1.3680043.9.7433.1.77"]
NHS = ["9434765919"]
PUBLIC_KEYS = {"person_id", "procedure_occurrence_id"}

LEAKING = [
    "MRN: 47000022.",
    "mrn47000023",
    "MRN-47000022 seen",
    "MRN 4700 0022",
    "47-00-00-22",
    "(47000022)",
    "id=47000022;",
    "\uff14\uff17\uff10\uff10\uff10\uff10\uff12\uff12",  # full-width digits
    "12345678 (leading zeros dropped)",
    "pt_ACC5566778",
    "ACC5566778#2",
    "acc5566778",
    "ACC 5566778",
    "Accession: acc-5566778.",
    "ris2024 00042",
    "NHS no 943 476 5919.",
    "uid 1.2.826.0.1.3680043.9.7433.1.77 compared",
]
CLEAN = [
    "Unremarkable chest film.",
    "ref 470000221",  # a longer number holding an MRN's digits
    "ACC55667789 is another accession",
    "Follow up in 4700 days",
    "NHS 111 advice given",
]


def _write_private(root: Path) -> list[Path]:
    private = root / "extract" / "private"
    private.mkdir(parents=True)
    persons = pa.table(
        {
            "person_id": pa.array(range(len(MRNS)), pa.int64()),
            "PrimaryMrn": MRNS,
            "NhsNumber": NHS * len(MRNS),
        }
    )
    procedures = pa.table(
        {
            "procedure_occurrence_id": pa.array([1, 2], pa.int64()),
            "AccessionNumber": ACCESSIONS,
            "StudyUid_X": STUDY_UIDS * 2,
        }
    )
    pq.write_table(persons, private / "PERSON_LINKS.parquet")
    pq.write_table(procedures, private / "PROCEDURE_OCCURRENCE_LINKS.parquet")
    return sorted(private.glob("*.parquet"))


def _scan(
    tmp_path: Path, notes: list[str], text_file: str | None = None
) -> list[tuple[str, str, list[int]]]:
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    pq.write_table(
        pa.table({"note_id": pa.array(range(len(notes)), pa.int64()), "note_text": notes}),
        bundle / "omop" / "NOTE.parquet",
    )
    if text_file is not None:
        (bundle / "log.txt").write_text(text_file)
    identifiers = private_identifiers(private, PUBLIC_KEYS)
    report = scan_bundle(bundle, identifiers)
    for hit in report.hits:  # a finding never quotes the value
        assert "47000022" not in str(hit) and "5566778" not in str(hit)
    return [(h.file, h.column, h.rows) for h in report.hits]


@pytest.mark.parametrize("text", LEAKING)
def test_identifiers_in_free_text_are_caught(tmp_path: Path, text: str) -> None:
    notes = ["Chest clear.", f"Patient seen today, {text} no change.", "Stable."]
    assert _scan(tmp_path, notes) == [("omop/NOTE.parquet", "note_text", [1])]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_free_text_passes(tmp_path: Path, text: str) -> None:
    assert _scan(tmp_path, ["Chest clear.", text]) == []


@pytest.mark.parametrize("position", [0, 65_536, 300_000])
def test_identifiers_anywhere_in_a_long_note(tmp_path: Path, position: int) -> None:
    filler = "lungs clear " * 40_000
    note = filler[:position] + " mrn47000023. " + filler[position:]
    assert _scan(tmp_path, ["x", note]) == [("omop/NOTE.parquet", "note_text", [1])]


def test_text_files_in_the_bundle_are_scanned(tmp_path: Path) -> None:
    log = "extract started\nrow 7: MRN: 47000022.\nfinished\n"
    assert ("log.txt", "line", [1]) in _scan(tmp_path, ["Chest clear."], log)


def test_identifiers_in_binary_list_and_number_columns(tmp_path: Path) -> None:
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    table = pa.table(
        {
            "blob": pa.array([b"x", b"MRN: 47000022.", b"\xff\xfe"], pa.binary()),
            "tags": pa.array([["a"], [], ["pt_ACC5566778"]], pa.list_(pa.string())),
            "mrn_float": pa.array([1.5, 47000023.0, None]),
        }
    )
    pq.write_table(table, bundle / "OTHER.parquet")
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert sorted((h.column, h.rows) for h in report.hits) == [
        ("blob", [1]),
        ("mrn_float", [1]),
        ("tags", [2]),
    ]


def test_hits_in_every_batch_are_named_by_row(tmp_path: Path) -> None:
    notes = ["clear"] * 140_000
    for row in (0, 65_535, 65_536, 131_071, 139_999):
        notes[row] = f"follow up pt_ACC5566778 row {row}"
    assert _scan(tmp_path, notes) == [
        ("omop/NOTE.parquet", "note_text", [0, 65_535, 65_536, 131_071, 139_999])
    ]


WORDS = ["patient", "seen", "today", "chest", "clear", "stable", "ref", "no", "change", "dose"]
FORMS = st.sampled_from(
    [
        "{p}{v}{s}",
        "MRN{sep}{v}{s}",
        "mrn{v}",
        "pt_{v}",
        "({v})",
        "{v}#2",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=30),
    numbers=st.lists(st.integers(0, 10**10), max_size=5),
    identifier=st.sampled_from(MRNS[:2] + ACCESSIONS + NHS + STUDY_UIDS),
    form=FORMS,
    sep=st.sampled_from(["", " ", "-", ": ", "_", ".", "/"]),
    split=st.sampled_from(["", " ", "-", "."]),
    upper=st.booleans(),
    position=st.integers(0, 30),
    row=st.integers(0, 4),
)
def test_property_any_embedding_is_caught_and_nothing_else(
    tmp_path_factory: pytest.TempPathFactory,
    words: list[str],
    numbers: list[int],
    identifier: str,
    form: str,
    sep: str,
    split: str,
    upper: bool,
    position: int,
    row: int,
) -> None:
    tmp_path = tmp_path_factory.mktemp("leak")
    value = identifier[:4] + split + identifier[4:] if identifier.isdigit() else identifier
    value = value.upper() if upper else value.lower()
    embedded = form.format(p="", v=value, s=".", sep=sep)
    safe_numbers = [
        str(n)
        for n in numbers
        if all(str(n).lstrip("0") != m.lstrip("0") for m in [*MRNS, *NHS, "5566778"])
    ]
    clean = " ".join(words + safe_numbers)
    notes = [clean] * 5
    tokens = clean.split(" ")
    tokens.insert(min(position, len(tokens)), embedded)
    notes[row] = " ".join(tokens)
    assert _scan(tmp_path, notes) == [("omop/NOTE.parquet", "note_text", [row])], notes[row]


@pytest.mark.parametrize(
    "where", ["column name", "file metadata", "schema metadata", "field metadata"]
)
def test_identifiers_in_parquet_column_names_and_metadata(tmp_path: Path, where: str) -> None:
    """A parquet file carries text besides its cells; a writer may put anything there."""
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    planted = "note for MRN 47000022"
    field = pa.field(planted if where == "column name" else "note_text", pa.string())
    if where == "field metadata":
        field = field.with_metadata({"comment": planted})
    schema = pa.schema([field])
    if where == "schema metadata":
        schema = schema.with_metadata({"origin": planted})
    writer = pq.ParquetWriter(bundle / "NOTE.parquet", schema)
    writer.write_table(pa.table({field.name: ["clear"]}, schema=schema))
    if where == "file metadata":
        writer.add_key_value_metadata({"written_for": planted})
    writer.close()
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert [(h.file, h.column, h.rows) for h in report.hits] == [
        ("NOTE.parquet", "(column names and metadata)", [])
    ]
    assert report.rows_scanned == 1
    assert report.summary() == "1 leaks: NOTE.parquet: (column names and metadata)"


def test_clean_metadata_passes(tmp_path: Path) -> None:
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    table = pa.table({"note_text": ["clear"]}).replace_schema_metadata({"origin": "OMOP ES"})
    pq.write_table(table, bundle / "NOTE.parquet")  # pyarrow adds its own schema metadata
    assert scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS)).clean


@pytest.mark.parametrize("column", ["birth_datetime", "DOB", "Date of Birth", "mother_dob"])
@pytest.mark.parametrize("kind", [pa.date32(), pa.timestamp("us"), pa.timestamp("s", tz="UTC")])
def test_typed_birth_dates_in_public_files_are_caught(
    tmp_path: Path, column: str, kind: pa.DataType
) -> None:
    """The private person file's date of birth, typed, in a public column named for it; a typed
    event date (a visit on someone's birthday) is not compared: every day is someone's."""
    from datetime import date, datetime

    private = _write_private(tmp_path)
    pq.write_table(
        pa.table({"person_id": [0], "birth_datetime": pa.array([date(1961, 12, 31)])}),
        private[0].parent / "PERSON.parquet",
    )
    private = sorted(private[0].parent.glob("*.parquet"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    born, other = datetime(1961, 12, 31), datetime(1980, 5, 17)
    values = [other, born] if kind != pa.date32() else [other.date(), born.date()]
    pq.write_table(
        pa.table({column: pa.array(values, kind), "visit_start": pa.array(values, kind)}),
        bundle / "PERSON.parquet",
    )
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert [(h.column, h.rows) for h in report.hits] == [(column, [1])]


def test_the_report_counts_every_file_and_row_it_scanned(tmp_path: Path) -> None:
    """What the export records as scanned is what was: a count off by a batch or a file would
    hide a file or rows the guard never read."""
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    (bundle / "omop").mkdir(parents=True)
    notes = ["clear"] * 70_000  # two batches
    pq.write_table(pa.table({"note_text": notes}), bundle / "omop" / "NOTE.parquet")
    (bundle / "log.txt").write_text("started\nfinished\n")
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert (report.files_scanned, report.rows_scanned) == (2, 70_002)
    assert report.clean
    assert report.summary() == "2 files, 70002 rows scanned: no private value found"


def test_a_missing_value_and_a_typed_birth_date_in_the_private_files(tmp_path: Path) -> None:
    """A null cell in a private column does not end the identifiers read after it, and a birth
    date stored as a date (not text) is looked for as the dates people write."""
    from datetime import date

    private = tmp_path / "private"
    private.mkdir()
    persons = pa.table(
        {
            "person_id": pa.array([1, 2], pa.int64()),
            "PrimaryMrn": pa.array([None, "47000022"], pa.string()),
            "birth_date": pa.array([date(1961, 3, 14), None], pa.date32()),
        }
    )
    pq.write_table(persons, private / "PERSON_LINKS.parquet")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    notes = ["seen today", "MRN 47000022 reviewed", "born 14/03/1961, stable", "clear"]
    pq.write_table(pa.table({"note_text": notes}), bundle / "NOTE.parquet")
    report = scan_bundle(bundle, private_identifiers(sorted(private.glob("*")), PUBLIC_KEYS))
    assert [(h.column, h.rows) for h in report.hits] == [("note_text", [1, 2])]


def test_a_hit_names_at_most_ten_rows_and_counts_the_rest() -> None:
    from voxl_assets.export.leak_guard import LeakHit

    assert str(LeakHit("NOTE.parquet", "note_text", list(range(10)))) == (
        "NOTE.parquet: column note_text: rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    )
    for rows, more in ((11, 1), (12, 2)):
        assert str(LeakHit("NOTE.parquet", "note_text", list(range(rows)))).endswith(
            f"rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (+{more} more)"
        )


def test_columns_after_a_flag_a_date_or_an_empty_column_are_still_scanned(tmp_path: Path) -> None:
    """Flags, typed dates and all-null columns are skipped, and only they: the text columns
    beside them, before or after, are scanned."""
    from datetime import date

    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    table = pa.table(
        {
            "flag": [True, False],
            "note_before": ["clear", "MRN 47000022"],
            "seen": pa.array([date(2024, 1, 2), None], pa.date32()),
            "nothing": pa.nulls(2),
            "note_after": ["pt_ACC5566778", "clear"],
        }
    )
    pq.write_table(table, bundle / "NOTE.parquet")
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert sorted((h.column, h.rows) for h in report.hits) == [
        ("note_after", [0]),
        ("note_before", [1]),
    ]


def test_the_summary_names_five_hits(tmp_path: Path) -> None:
    private = _write_private(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    columns = {f"note_{n}": ["clear", "MRN 47000022"] for n in range(6)}
    pq.write_table(pa.table(columns), bundle / "NOTE.parquet")
    report = scan_bundle(bundle, private_identifiers(private, PUBLIC_KEYS))
    assert len(report.hits) == 6
    summary = report.summary()
    assert summary.startswith("6 leaks: NOTE.parquet: column note_0: rows 1;")
    assert summary.count("NOTE.parquet") == 5 and "note_5" not in summary
