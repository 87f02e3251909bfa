"""Leak-guard benchmark: scan a generated public extract (parquet with free-text columns) against
100,000 private identifiers: seconds and peak memory (target, issue 6: 1 GB in under 60 s and
under 2 GB). The reference, side by side on a sample, is the obvious pandas approach: a regex
alternation of the identifiers matched with `str.contains` per column.

    .venv/bin/python -m benchmarks.leak_guard [--megabytes 1024] [--identifiers 100000] [--runs 1]
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._common import measure, median, write_result
from voxl_assets.export.leak_guard import identifier_matcher, scan_bundle

WORDS = [
    "patient",
    "seen",
    "today",
    "chest",
    "clear",
    "no",
    "acute",
    "change",
    "follow",
    "up",
    "advised",
    "heart",
    "size",
    "normal",
    "lungs",
    "effusion",
    "small",
    "left",
    "basal",
    "atelectasis",
    "stable",
    "compared",
    "prior",
    "study",
    "report",
    "reviewed",
]


def write_public(folder: Path, megabytes: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    written, part, rows = 0, 0, 50_000
    while written < megabytes * 1_000_000:
        notes = [
            " ".join(rng.choices(WORDS, k=rng.randint(20, 60))) + f" ref {rng.randint(1, 10**9)}"
            for _ in range(rows)
        ]
        table = pa.table(
            {
                "note_id": pa.array(range(part * rows, (part + 1) * rows), pa.int64()),
                "person_id": pa.array([rng.randint(1, 10**6) for _ in range(rows)], pa.int64()),
                "note_text": pa.array(notes),
                "note_title": pa.array([rng.choice(WORDS) for _ in range(rows)]),
            }
        )
        path = folder / f"NOTE-{part:04d}.parquet"
        pq.write_table(table, path, compression="none")
        written += path.stat().st_size
        part += 1
    return written


def identifiers(count: int) -> list[str]:
    return sorted(
        {f"acc{n:08d}" for n in range(count // 2)}
        | {f"{40_000_000 + n}" for n in range(count - count // 2)}
    )


def voxl_scan(folder: Path, count: int) -> None:
    report = scan_bundle(folder, identifier_matcher(identifiers(count)))
    assert report.files_scanned > 0


def pandas_scan(folder: Path, count: int) -> None:
    import pandas as pd

    pattern = re.compile(r"\\b(?:" + "|".join(identifiers(count)) + r")\\b", re.IGNORECASE)
    for path in sorted(folder.glob("*.parquet"))[:1]:
        frame = pd.read_parquet(path)
        for column in ("note_text", "note_title"):
            frame[column].str.contains(pattern).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--identifiers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxl-bench-leak-") as tmp:
        folder = Path(tmp) / "bundle"
        size = write_public(folder, args.megabytes)
        runs = [measure(voxl_scan, folder, args.identifiers) for _ in range(args.runs)]
        files = len(list(folder.glob("*.parquet")))
        reference = measure(pandas_scan, folder, args.identifiers)
    seconds = median([s for s, _ in runs])
    voxl_per_file = seconds / files
    summary: dict[str, Any] = {
        "bytes": size,
        "identifiers": args.identifiers,
        "voxl": {
            "median_seconds": round(seconds, 2),
            "peak_mib": round(max(p for _, p in runs), 1),
            "megabytes_per_second": round(size / 1e6 / seconds, 1),
        },
        "pandas_regex_one_file": {
            "seconds": round(reference[0], 2),
            "peak_mib": round(reference[1], 1),
        },
        "ratio_pandas_over_voxl_per_file": round(reference[0] / voxl_per_file, 1),
        "target": "1 GB < 60 s, < 2 GB",
    }
    print(
        f"VOXL leak guard: {size / 1e6:.0f} MB vs {args.identifiers} identifiers in {seconds:.1f} s "
        f"({summary['voxl']['megabytes_per_second']} MB/s), peak {summary['voxl']['peak_mib']} MiB"
    )
    print(
        f"pandas regex alternation, one file of {files}: {reference[0]:.1f} s "
        f"({summary['ratio_pandas_over_voxl_per_file']}x VOXL's time per file), peak {reference[1]:.0f} MiB"
    )
    print(f"written {write_result('leak_guard', summary)}")


if __name__ == "__main__":
    main()
