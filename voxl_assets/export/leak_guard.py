"""The leak guard: no value from an extract's private files may appear in what leaves.

Identifiers are every value of the private files' columns, except join keys that the public files
carry on purpose (person_id, procedure_occurrence_id: OMOP ES's pseudonymous keys). Bundle values
are compared as whole tokens, lower-cased, with spacing removed: "943 476 5919" matches the NHS
number 9434765919 and "acc 123" matches ACC123, but "ACC1234" does not match ACC123. The scan is
vectorised with pyarrow (tokens, neighbouring-token joins, and set membership in C++), one record
batch at a time, so memory stays bounded whatever the bundle's size.

A hit names the file, column and row: never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TOKEN_PATTERN = r"[^0-9a-z.]+"  # split on everything but letters, digits and '.' (UIDs)
MAX_JOINED_TOKENS = 3  # "943 476 5919": three tokens make one NHS number
MIN_IDENTIFIER_LENGTH = 4  # shorter values (a sex code, a count) would hit everywhere
BATCH_ROWS = 65_536
MAX_WHOLE_CELL = 128  # longer cells hold an identifier only as tokens, which are checked anyway


def normalise(value: object) -> str:
    return re.sub(r"\s+", "", str(value).strip().lower())


def private_identifiers(private_files: Iterable[Path], public_columns: set[str]) -> pa.Array:
    """Every identifying value in the private files, normalised, as a pyarrow string array."""
    values: set[str] = set()
    for path in private_files:
        parquet = pq.ParquetFile(path)
        columns = [c for c in parquet.schema_arrow.names if c not in public_columns]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for column in batch.columns:
                text = (
                    pc.cast(column, pa.string(), safe=False)
                    if column.type != pa.string()
                    else column
                )
                for value in text.to_pylist():
                    if value is None:
                        continue
                    normalised = normalise(value)
                    if len(normalised) >= MIN_IDENTIFIER_LENGTH:
                        values.add(normalised)
    return pa.array(sorted(values), type=pa.string())


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


def _hit_rows(column: pa.Array, identifiers: pa.Array) -> list[int]:
    """Rows of ``column`` holding an identifier as a whole value or as 1-3 joined tokens."""
    text = pc.cast(column, pa.string(), safe=False) if column.type != pa.string() else column
    lowered = pc.utf8_lower(text)
    rows: set[int] = set()
    # Whole cells, spacing removed: only short cells can equal an identifier.
    short = pc.indices_nonzero(
        pc.fill_null(pc.less_equal(pc.utf8_length(lowered), MAX_WHOLE_CELL), False)
    )
    if len(short):
        cells = pc.take(lowered, short)
        whole = pc.is_in(pc.replace_substring_regex(cells, r"\s+", ""), value_set=identifiers)
        rows.update(pc.take(short, pc.indices_nonzero(pc.fill_null(whole, False))).to_pylist())
    tokens = pc.split_pattern_regex(lowered, TOKEN_PATTERN)
    flat = pc.list_flatten(tokens)
    if len(flat) == 0:
        return sorted(rows)
    parents = pc.list_parent_indices(tokens)
    for width in range(1, MAX_JOINED_TOKENS + 1):
        if len(flat) < width:
            break
        joined = flat.slice(0, len(flat) - width + 1)
        same_row = None
        for offset in range(1, width):
            joined = pc.binary_join_element_wise(
                joined, flat.slice(offset, len(flat) - width + 1), ""
            )
            same = pc.equal(
                parents.slice(0, len(flat) - width + 1),
                parents.slice(offset, len(flat) - width + 1),
            )
            same_row = same if same_row is None else pc.and_(same_row, same)
        found = pc.is_in(joined, value_set=identifiers)
        if same_row is not None:
            found = pc.and_(found, same_row)
        positions = pc.indices_nonzero(pc.fill_null(found, False))
        if len(positions):
            rows.update(pc.take(parents.slice(0, len(flat) - width + 1), positions).to_pylist())
    return sorted(rows)


def _scan_table_batches(
    batches: Iterator[pa.RecordBatch], name: str, identifiers: pa.Array, report: LeakReport
) -> None:
    hits: dict[str, list[int]] = {}
    offset = 0
    for batch in batches:
        for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
            if (
                pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)
                or pa.types.is_temporal(column.type)
            ):
                continue  # numbers with decimals, flags and dates cannot hold an identifier token
            rows = _hit_rows(column, identifiers)
            if rows:
                hits.setdefault(column_name, []).extend(r + offset for r in rows)
        offset += batch.num_rows
    report.rows_scanned += offset
    for column_name, rows in hits.items():
        report.hits.append(LeakHit(name, column_name, rows))


def scan_bundle(bundle_dir: Path, identifiers: pa.Array) -> LeakReport:
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
