"""The leak guard: no value from an extract's private files may appear in what leaves.

Identifiers are every value of the private files' columns, except join keys that the public files
carry on purpose (person_id, procedure_occurrence_id: OMOP ES's pseudonymous keys), and the MRNs,
accession numbers and study and series UIDs the VOXL database holds for the extract's studies
(all a CSV extract has: it comes without private files). They are
matched under the shared rules of ``voxl_assets/identifier_rules.py`` (the DICOM checks use the
same): folded for case, accents and separators, and looked for as substrings, so "MRN: 47000022.",
"mrn47000023", "pt_ACC123", "4700 0022" and "943 476 5919" are caught while "470000221" (another
number) is not.

The scan is one linear pass per record batch: the cells folded together (at C speed when they
are ASCII) and searched with an Aho-Corasick automaton of all identifiers at once; only candidate
cells are matched again under the rules, to confirm the match and name the row. Memory stays bounded by the batch size whatever the bundle's size.

A hit names the file, column and row: never the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import chain
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxl_assets.identifier_rules import (
    MARKER,
    IdentifierMatcher,
    Needle,
    date_needles,
    fold_many,
    value_needles,
)

BATCH_ROWS = 65_536
# Where a hit in a parquet file's column names or key-value metadata is reported.
SCHEMA_COLUMN = "(column names and metadata)"
MARKER_BYTE = MARKER.encode("ascii")


def identifier_matcher(values: Iterable[object]) -> IdentifierMatcher:
    """A matcher for identifying values of any kind (dates as dates, UIDs as UIDs)."""
    needles: list[Needle] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, datetime | date):
            needles += date_needles(value.strftime("%Y%m%d"))
        else:
            needles += value_needles(str(value))
    return IdentifierMatcher(needles)


def private_values(private_files: Iterable[Path], public_columns: set[str]) -> Iterator[object]:
    """Every value of the private files' columns but the join keys the public files carry."""
    for path in private_files:
        parquet = pq.ParquetFile(path)
        columns = [c for c in parquet.schema_arrow.names if c not in public_columns]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for column in batch.columns:
                yield from column.to_pylist()


def private_identifiers(
    private_files: Iterable[Path],
    public_columns: set[str],
    registered: Iterable[object] = (),
) -> IdentifierMatcher:
    """Every identifying value in the private files, plus ``registered`` ones (the identifiers
    the VOXL database holds for the extract's studies: a CSV extract has no private files),
    compiled into one matcher."""
    return identifier_matcher(chain(private_values(private_files, public_columns), registered))


@dataclass
class LeakHit:
    file: str
    column: str
    rows: list[int]

    def __str__(self) -> str:
        if not self.rows:  # a hit outside the table's cells (SCHEMA_COLUMN)
            return f"{self.file}: {self.column}"
        shown = ", ".join(str(r) for r in self.rows[:10])
        more = f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
        return f"{self.file}: column {self.column}: rows {shown}{more}"


@dataclass
class LeakReport:
    files_scanned: int = 0
    rows_scanned: int = 0
    hits: list[LeakHit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.hits

    def summary(self) -> str:
        if self.clean:
            return f"{self.files_scanned} files, {self.rows_scanned} rows scanned: no private value found"
        return f"{len(self.hits)} leaks: " + "; ".join(str(h) for h in self.hits[:5])


def _hit_rows(column: pa.Array, matcher: IdentifierMatcher) -> list[int]:
    """Rows of ``column`` holding an identifier: all cells folded in one pass (C speed when they
    are ASCII), one automaton pass over the result, and only candidate cells confirmed."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        cells = [cell or "" for cell in column.to_pylist()]
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        cells = [cell.decode("utf-8", "replace") if cell else "" for cell in column.to_pylist()]
    elif pa.types.is_nested(kind):  # lists, structs, maps: their values, as text
        cells = ["" if cell is None else str(cell) for cell in column.to_pylist()]
    else:
        cells = [cell or "" for cell in pc.cast(column, pa.string(), safe=False).to_pylist()]
    folded = fold_many(cells)
    candidates = sorted(
        start for _needle, start, _end in matcher.candidates_in_folded_bytes(folded)
    )
    rows: set[int] = set()
    row, position = 0, 0
    for start in candidates:  # cells are joined by MARKER: count them up to each candidate
        row += folded.count(MARKER_BYTE, position, start)
        position = start
        rows.add(row)
    return sorted(r for r in rows if matcher.find(cells[r]))


def _names_a_birth_date(column_name: str) -> bool:
    """A typed date column whose name says birth (birth_datetime, DOB, "Date of Birth"...).

    Other typed dates are event dates: with a cohort of any size every calendar day is someone's
    birthday, so comparing them with the extract's dates of birth would flag every row.
    """
    folded = "".join(c for c in column_name.casefold() if c.isalnum())
    return "birth" in folded or "dob" in folded


def _schema_texts(parquet: pq.ParquetFile) -> list[str]:
    """The text a parquet file carries besides its cells: column names and the key-value
    metadata of the file and of each field (pandas and other writers put free text there)."""
    texts = list(parquet.schema_arrow.names)
    metadata = [parquet.schema_arrow.metadata, parquet.metadata.metadata]
    metadata += [f.metadata for f in parquet.schema_arrow]
    for pairs in metadata:
        for key, value in (pairs or {}).items():
            texts += [key.decode("utf-8", "replace"), value.decode("utf-8", "replace")]
    return texts


def _scan_table_batches(
    batches: Iterator[pa.RecordBatch], name: str, matcher: IdentifierMatcher, report: LeakReport
) -> None:
    hits: dict[str, list[int]] = {}
    offset = 0
    for batch in batches:
        for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
            if pa.types.is_boolean(column.type):
                continue  # flags cannot hold an identifier
            if pa.types.is_temporal(column.type) and not _names_a_birth_date(column_name):
                continue  # an event date (see _names_a_birth_date)
            if pa.types.is_null(column.type):
                continue
            rows = _hit_rows(column, matcher)
            if rows:
                hits.setdefault(column_name, []).extend(r + offset for r in rows)
        offset += batch.num_rows
    report.rows_scanned += offset
    for column_name, rows in hits.items():
        report.hits.append(LeakHit(name, column_name, rows))


def scan_bundle(bundle_dir: Path, identifiers: IdentifierMatcher) -> LeakReport:
    """Scan every file under ``bundle_dir``: parquet cell by cell, text files line by line."""
    report = LeakReport()
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        report.files_scanned += 1
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            texts = pa.record_batch([pa.array(_schema_texts(parquet))], names=[SCHEMA_COLUMN])
            if _hit_rows(texts.column(0), identifiers):
                report.hits.append(LeakHit(name, SCHEMA_COLUMN, []))
            _scan_table_batches(
                parquet.iter_batches(batch_size=BATCH_ROWS), name, identifiers, report
            )
        else:
            with path.open("r", encoding="utf-8", errors="replace") as handle:

                def line_batches() -> Iterator[pa.RecordBatch]:
                    lines: list[str] = []
                    for line in handle:
                        lines.append(line)
                        if len(lines) == BATCH_ROWS:
                            yield pa.record_batch([pa.array(lines)], names=["line"])
                            lines = []
                    if lines:
                        yield pa.record_batch([pa.array(lines)], names=["line"])

                _scan_table_batches(line_batches(), name, identifiers, report)
    return report
