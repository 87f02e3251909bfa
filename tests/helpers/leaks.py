"""Scan everything VOXL (and a destination) wrote for patient identifiers, decoding what would
hide them from a byte search: parquet (compressed columns) becomes its values, zip and gzip their
members, SQLite files their rows (Dagster's event storage among them), DICOM files their element
values decoded by their character sets. Raw bytes are searched too, case-insensitively and in
UTF-8 and UTF-16. The VOXL database itself is the one file allowed to hold identifiers; the raw
cache and the test's own inputs are passed as allowed folders.

Looked for: MRNs, accession numbers, study, series and SOP instance UIDs, patient names (as stored,
``^`` as a space, given name first) and birth dates (``YYYYMMDD`` and the common written forms).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIN_LENGTH = 4  # shorter values would match by chance anywhere


@dataclass
class Identifiers:
    """The identifiers of a test's patients, by kind."""

    values: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, *values: str) -> None:
        for value in values:
            value = str(value).strip()
            if len(value) >= MIN_LENGTH:
                self.values.setdefault(kind, set()).add(value)

    def add_name(self, name: str) -> None:
        parts = [p.strip() for p in str(name).split("^") if p.strip()]
        if not parts:
            return
        self.add("name", str(name), " ".join(parts))
        if len(parts) >= 2:
            self.add("name", f"{parts[1]} {parts[0]}", f"{parts[0]}, {parts[1]}")

    def add_birth_date(self, date: str) -> None:
        date = str(date).strip()
        if len(date) != 8 or not date.isdigit():
            return
        year, month, day = date[:4], date[4:6], date[6:]
        self.add(
            "birth date",
            date,
            f"{year}-{month}-{day}",
            f"{year}/{month}/{day}",
            f"{day}/{month}/{year}",
            f"{day}.{month}.{year}",
            f"{day}-{month}-{year}",
            f"{month}/{day}/{year}",
        )

    def add_dicom_files(self, files: Iterable[Path]) -> None:
        """Every identifier in these (source) DICOM files' headers."""
        from pydicom import dcmread

        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            self.add("MRN", str(ds.get("PatientID", "")))
            self.add("accession number", str(ds.get("AccessionNumber", "")))
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                self.add(keyword, str(ds.get(keyword, "")))
            self.add_name(str(ds.get("PatientName", "")))
            self.add_birth_date(str(ds.get("PatientBirthDate", "")))

    def needles(self) -> list[tuple[str, str]]:
        """(kind, lower-case value) pairs."""
        return sorted({(k, v.lower()) for k, vs in self.values.items() for v in vs})


@dataclass
class Leak:
    path: str  # relative to the scanned root; ``!member`` for a member of an archive
    kind: str
    how: str  # where in the file: bytes, utf-16, parquet, sqlite, dicom


def _texts(data: bytes, name: str, depth: int = 0) -> Iterator[tuple[str, str, bytes | str]]:
    """(member name, how, content) views of one file's bytes, archives opened recursively."""
    yield name, "bytes", data
    if depth > 3:
        return
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    yield from _texts(archive.read(member), f"{name}!{member}", depth + 1)
        except zipfile.BadZipFile:
            pass
    elif data.startswith(b"\x1f\x8b"):
        with contextlib.suppress(OSError, EOFError):
            yield from _texts(gzip.decompress(data), f"{name}!gunzip", depth + 1)
    elif data.startswith(b"PAR1"):
        yield name, "parquet", _parquet_text(data)
    elif data.startswith(b"SQLite format 3\x00"):
        yield name, "sqlite", _sqlite_text(data)
    elif data[128:132] == b"DICM":
        yield name, "dicom", _dicom_text(data)


def _parquet_text(data: bytes) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    lines = [str(table.schema)]
    for column in table.columns:
        lines.extend(str(value) for value in column.to_pylist())
    return "\n".join(lines)


def _sqlite_text(data: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as copy:
        copy.write(data)
        copy.flush()
        connection = sqlite3.connect(f"file:{copy.name}?mode=ro", uri=True)
        try:
            lines: list[str] = []
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master")]
            for table in tables:
                try:
                    rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
                except sqlite3.DatabaseError:
                    continue
                for row in rows:
                    for value in row:
                        if isinstance(value, bytes):
                            lines.extend(
                                view.decode("latin-1") if isinstance(view, bytes) else view
                                for _, _, view in _texts(value, "")
                            )
                        else:
                            lines.append(str(value))
            return "\n".join(lines)
        except sqlite3.DatabaseError:
            return ""
        finally:
            connection.close()


def _dicom_text(data: bytes) -> str:
    """Every element's value, decoded with the file's character sets, sequences included."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError):
        return ""
    values: list[str] = []

    def walk(dataset: object) -> None:
        for element in dataset:  # type: ignore[attr-defined]
            if element.VR == "SQ":
                for item in element.value or []:
                    walk(item)
            else:
                try:
                    values.append(str(element.value))
                except (ValueError, TypeError):
                    continue

    walk(ds.file_meta)
    walk(ds)
    return "\n".join(values)


def _found(content: bytes | str, needles: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    if isinstance(content, str):
        lowered = content.lower()
        for kind, needle in needles:
            if needle in lowered:
                yield kind, "text"
        return
    lowered_bytes = content.lower()
    for kind, needle in needles:
        if needle.encode() in lowered_bytes:
            yield kind, "bytes"
        elif needle.encode("utf-16-le") in lowered_bytes:
            yield kind, "utf-16"  # big-endian text holds the same sequence shifted by one byte
        elif needle.encode("utf-16-be") in lowered_bytes:
            yield kind, "utf-16"


def scan_file(path: Path, identifiers: Identifiers, label: str | None = None) -> list[Leak]:
    needles = identifiers.needles()
    leaks: list[Leak] = []
    for member, how, content in _texts(path.read_bytes(), label or path.name):
        for kind, where in _found(content, needles):
            leaks.append(Leak(member, kind, how if where == "text" else where))
    return leaks


def files_holding(
    root: Path,
    identifiers: Identifiers | Iterable[str],
    allowed: Iterable[Path] = (),
    *,
    voxl_database: Path | None = None,
) -> tuple[int, list[Leak]]:
    """(files scanned, leaks) under ``root``, skipping the ``allowed`` folders and the VOXL
    database (``voxl_database``, default ``root/voxl.db``, with its -wal and -shm files)."""
    if not isinstance(identifiers, Identifiers):
        plain = Identifiers()
        plain.add("identifier", *identifiers)
        identifiers = plain
    database = voxl_database or root / "voxl.db"
    exempt = {
        database,
        Path(f"{database}-wal"),
        Path(f"{database}-shm"),
        Path(f"{database}-journal"),
    }
    allowed = list(allowed)
    scanned, leaks = 0, []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path in exempt or any(a in path.parents for a in allowed):
            continue
        scanned += 1
        leaks.extend(scan_file(path, identifiers, str(path.relative_to(root))))
    return scanned, leaks
