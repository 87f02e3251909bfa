"""The identifier scan used by the end-to-end tests finds what a plain byte search would miss:
values inside compressed parquet, zip and gzip members, SQLite rows stored as UTF-16, DICOM values
in another character set, UTF-16 text, other cases, written-out birth dates and names in another
order; it skips the VOXL database itself and nothing else."""

from __future__ import annotations

import gzip
import sqlite3
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.dataset import Dataset

from tests.helpers.leaks import Identifiers, files_holding
from voxl_assets.synthetic import SeriesSpec, StudySpec, make_instance

MRN = "MRN7730021"
ACCESSION = "ACC55501234"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1234567890123"
SOP_UID = "1.2.826.0.1.3680043.8.498.9876543210987"
NAME = "MÜLLER^JÜRGEN"
BIRTH_DATE = "19630415"


def _identifiers() -> Identifiers:
    found = Identifiers()
    found.add("MRN", MRN)
    found.add("accession number", ACCESSION)
    found.add("SeriesInstanceUID", SERIES_UID)
    found.add("SOPInstanceUID", SOP_UID)
    found.add_name(NAME)
    found.add_birth_date(BIRTH_DATE)
    return found


def _dicom(path: Path, comment: str, charset: str) -> None:
    ds: Dataset = make_instance(StudySpec(patient_id="P", accession_number="A"), SeriesSpec(), 1)
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.SpecificCharacterSet = charset
    ds.ImageComments = comment
    ds.save_as(path, enforce_file_format=True)


def _plant(root: Path) -> dict[str, str]:
    """Files each holding one identifier, hidden from a byte search; returns name -> kind."""
    root.mkdir(parents=True)
    notes = [f"visit {n}: routine follow-up, nothing of note" for n in range(400)]
    notes[123] = f"seen with {MRN} today"
    pq.write_table(
        pa.table({"note": notes}),
        root / "notes.parquet",
        compression="gzip",
        use_dictionary=False,
        write_statistics=False,
    )
    with zipfile.ZipFile(root / "study.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.txt", f"accession {ACCESSION} " + "filler " * 500)
    (root / "log.gz").write_bytes(gzip.compress(f"sop={SOP_UID}\n".encode() * 50))
    (root / "utf16.txt").write_bytes(f"series {SERIES_UID}".encode("utf-16"))
    (root / "lower.txt").write_text(f"mrn {MRN.lower()}")
    (root / "dob.csv").write_text("person,dob\n1,15/04/1963\n")
    (root / "reordered.txt").write_text("Jürgen Müller came in")
    _dicom(root / "latin1.dcm", "patient MÜLLER^JÜRGEN", "ISO_IR 100")  # Latin-1 bytes on disk
    events = sqlite3.connect(root / "events.db")  # like Dagster's event storage
    events.execute("PRAGMA encoding = 'UTF-16le'")
    events.execute("CREATE TABLE event_logs (event TEXT)")
    events.execute("INSERT INTO event_logs VALUES (?)", (f"materialised series {SERIES_UID}",))
    events.commit()
    events.close()
    (root / "sub").mkdir()
    other = sqlite3.connect(root / "sub" / "voxl.db")  # not the VOXL database: scanned
    other.execute("CREATE TABLE t (v TEXT)")
    other.execute("INSERT INTO t VALUES (?)", (ACCESSION,))
    other.commit()
    other.close()
    return {
        "notes.parquet": "MRN",
        "study.zip!report.txt": "accession number",
        "log.gz!gunzip": "SOPInstanceUID",
        "utf16.txt": "SeriesInstanceUID",
        "lower.txt": "MRN",
        "dob.csv": "birth date",
        "reordered.txt": "name",
        "latin1.dcm": "name",
        "events.db": "SeriesInstanceUID",
        "sub/voxl.db": "accession number",
    }


def test_planted_identifiers_are_found_wherever_they_hide(tmp_path: Path) -> None:
    root = tmp_path / "written"
    planted = _plant(root)
    hidden = {
        "notes.parquet": MRN,
        "study.zip": ACCESSION,
        "log.gz": SOP_UID,
        "latin1.dcm": "MÜLLER",
        "utf16.txt": SERIES_UID,
        "events.db": SERIES_UID,
    }
    for name, value in hidden.items():  # a plain byte search would miss each of these
        assert value.encode() not in (root / name).read_bytes(), name
    scanned, leaks = files_holding(root, _identifiers())
    found = {(leak.path, leak.kind) for leak in leaks}
    missed = {(path, kind) for path, kind in planted.items() if (path, kind) not in found}
    assert not missed, f"the scan missed {sorted(missed)}"
    assert scanned == len({p.split("!")[0] for p in planted})


def test_clean_files_and_the_voxl_database_pass(tmp_path: Path) -> None:
    root = tmp_path / "written"
    root.mkdir()
    pq.write_table(pa.table({"pseudo": ["2.25.1", "2.25.2"]}), root / "IMAGE_LINKER.parquet")
    with zipfile.ZipFile(root / "study.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", "nothing to see")
    _dicom(root / "clean.dcm", "no identifier here", "ISO_IR 100")
    database = sqlite3.connect(root / "voxl.db")  # the one place identifiers belong
    database.execute("CREATE TABLE studies (mrn TEXT)")
    database.execute("INSERT INTO studies VALUES (?)", (MRN,))
    database.commit()
    database.close()
    scanned, leaks = files_holding(root, _identifiers())
    assert scanned == 3 and leaks == []
    (root / "copy.db").write_bytes((root / "voxl.db").read_bytes())  # a copy is no exemption
    _, leaks = files_holding(root, _identifiers())
    assert [(leak.path, leak.kind) for leak in leaks] == [("copy.db", "MRN")] * len(leaks) != []


def test_birth_dates_and_names_are_looked_for_in_their_common_forms() -> None:
    identifiers = Identifiers()
    identifiers.add_birth_date("19630415")
    identifiers.add_name("DOE^JANE")
    values = {value for _, value in identifiers.needles()}
    assert {"19630415", "1963-04-15", "15/04/1963", "15.04.1963", "04/15/1963"} <= values
    assert {"doe^jane", "doe jane", "jane doe", "doe, jane"} <= values
