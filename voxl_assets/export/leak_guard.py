"""The leak guard: no value from an extract's private files may appear in what leaves.

Identifiers are every value of the private files' columns, except join keys that the public files
carry on purpose (person_id, procedure_occurrence_id: OMOP ES's pseudonymous keys). They are
matched under the shared rules of ``voxl_assets/identifier_rules.py`` (the DICOM checks use the
same): folded for case, accents and separators, and looked for as substrings, so "MRN: 47000022.",
"mrn47000023", "pt_ACC123", "4700 0022" and "943 476 5919" are caught while "470000221" (another
number) is not.

The scan is one linear pass per record batch: the cells' bytes folded at C speed (ASCII cells;
the rare others one by one) and searched with an Aho-Corasick automaton of all identifiers at
once; only candidate cells are decoded in Python, to confirm the match under the rules and name
the row. Memory stays bounded by the batch size whatever the bundle's size.

A hit names the file, column and row: never the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxl_assets.identifier_rules import (
    IdentifierMatcher,
    Needle,
    date_needles,
    fold,
    fold_ascii_bytes,
    value_needles,
)

BATCH_ROWS = 65_536
# 1 for the bytes that folding keeps (ASCII letters and digits), 0 for those it removes.
_KEPT = bytes(1 if chr(b).isalnum() and b < 128 else 0 for b in range(256))


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


def private_identifiers(
    private_files: Iterable[Path], public_columns: set[str]
) -> IdentifierMatcher:
    """Every identifying value in the private files, compiled into one matcher."""

    def values() -> Iterator[object]:
        for path in private_files:
            parquet = pq.ParquetFile(path)
            columns = [c for c in parquet.schema_arrow.names if c not in public_columns]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                for column in batch.columns:
                    yield from column.to_pylist()

    return identifier_matcher(values())


@dataclass
class LeakHit:
    file: str
    column: str
    rows: list[int]

    def __str__(self) -> str:
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


def _ascii_hit_rows(text: pa.Array, matcher: IdentifierMatcher) -> list[int]:
    """Rows of an all-ASCII string array holding an identifier: one fold and one automaton pass
    over the array's bytes; rows located and confirmed only for the candidates."""
    offsets_buffer, data_buffer = text.buffers()[1], text.buffers()[2]
    offset_type = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[
        text.offset : text.offset + len(text) + 1
    ]
    start, end = int(offsets[0]), int(offsets[-1])
    if data_buffer is None or end == start:
        return []
    raw = memoryview(data_buffer)[start:end].tobytes()
    candidates = matcher.candidates_in_folded_bytes(fold_ascii_bytes(raw))
    if not candidates:
        return []
    kept = np.frombuffer(raw.translate(_KEPT), dtype=np.uint8)
    row_starts = (offsets[:-1] - start).astype(np.int64)
    lengths = np.diff(offsets)
    counts = np.zeros(len(row_starts), dtype=np.int64)
    present = np.flatnonzero((lengths > 0) & (row_starts < len(kept)))
    if len(present):
        counts[present] = np.add.reduceat(kept, row_starts[present], dtype=np.int64)
    folded_ends = np.cumsum(counts)
    rows = sorted(
        {int(r) for r in np.searchsorted(folded_ends, [c[1] for c in candidates], side="right")}
    )
    return [r for r in rows if r < len(text) and matcher.find(text[r].as_py() or "")]


def _hit_rows(column: pa.Array, matcher: IdentifierMatcher) -> list[int]:
    """Rows of ``column`` holding an identifier under the matching rules."""
    text = (
        column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        else pc.cast(column, pa.string(), safe=False)
    )
    if text.null_count:
        text = pc.fill_null(text, "")
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    ascii_cells = pc.string_is_ascii(text)
    if pc.all(ascii_cells).as_py():
        return _ascii_hit_rows(text, matcher)
    ascii_index = pc.indices_nonzero(ascii_cells)
    rows = [
        int(ascii_index[r].as_py()) for r in _ascii_hit_rows(pc.take(text, ascii_index), matcher)
    ]
    for row in pc.indices_nonzero(pc.invert(ascii_cells)).to_pylist():
        cell = text[row].as_py() or ""
        if matcher.any_in_folded(fold(cell)) and matcher.find(cell):
            rows.append(row)
    return sorted(rows)


def _scan_table_batches(
    batches: Iterator[pa.RecordBatch], name: str, matcher: IdentifierMatcher, report: LeakReport
) -> None:
    hits: dict[str, list[int]] = {}
    offset = 0
    for batch in batches:
        for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
            if pa.types.is_boolean(column.type) or pa.types.is_temporal(column.type):
                continue  # flags and typed dates cannot hold an identifier's text
            if pa.types.is_nested(column.type) or pa.types.is_null(column.type):
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
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
            _scan_table_batches(batches, name, identifiers, report)
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
