"""Ingest benchmark: a generated 100,000-study OMOP ES extract into SQLite and PostgreSQL.

Measures `voxl populate`'s work (read + validate + persist in one transaction) in a fresh process
per run: seconds and peak memory, median of several runs. The reference, run side by side on the
same files, is the plain floor: pandas reads the three parquet files and `to_sql` bulk-inserts the
joined rows into an unindexed table. Target (issue 2): under 60 s and under 1 GB.

    .venv/bin/python -m benchmarks.ingest [--studies 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from benchmarks._common import measure, median, write_result
from voxl_assets.cohort.extract_reader import read_extract
from voxl_assets.cohort.ingest import persist_cohort, register_extract
from voxl_assets.db import VoxlDatabase
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def voxl_ingest(extract: Path, url: str) -> None:
    database = VoxlDatabase(url)
    cohort = read_extract(extract)
    slug = cohort.summary.project_slug
    register_extract(database, cohort.summary, slug)
    counts = persist_cohort(database, cohort, slug)
    assert counts.new_studies == cohort.imaging_studies
    database.dispose()


def reference_ingest(extract: Path, url: str) -> None:
    import pandas as pd

    procedures = pd.read_parquet(extract / "public/omop/PROCEDURE_OCCURRENCE.parquet")
    persons = pd.read_parquet(extract / "private/PERSON_LINKS.parquet")
    links = pd.read_parquet(extract / "private/PROCEDURE_OCCURRENCE_LINKS.parquet")
    joined = procedures.merge(links, on="procedure_occurrence_id").merge(persons, on="person_id")
    engine = create_engine(url)
    joined.to_sql("reference_rows", engine, index=False, chunksize=5000, method="multi")
    engine.dispose()


def _fresh_url(kind: str, workdir: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}", None
    name = f"voxl_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def _drop(name: str | None) -> None:
    if name:
        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, object] = {"studies": args.studies, "runs": args.runs}
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        extract = write_omop_extract(
            workdir / "extract", synthetic_extract_rows(args.studies, seed=5)
        )
        for kind in ("sqlite", "postgresql"):
            for label, fn in (("voxl", voxl_ingest), ("reference", reference_ingest)):
                seconds, peaks = [], []
                for _ in range(args.runs):
                    url, dbname = _fresh_url(kind, workdir)
                    try:
                        s, p = measure(fn, extract, url)
                    finally:
                        _drop(dbname)
                    seconds.append(s)
                    peaks.append(p)
                medians[f"{kind}_{label}"] = median(seconds)
                result[f"{kind}_{label}_seconds_median"] = round(median(seconds), 2)
                result[f"{kind}_{label}_peak_mib_max"] = round(max(peaks), 1)
                print(
                    f"{kind:10s} {label:9s} median {median(seconds):6.2f} s  peak {max(peaks):7.1f} MiB  runs {[round(x, 2) for x in seconds]}"
                )
            ratio = medians[f"{kind}_voxl"] / medians[f"{kind}_reference"]
            result[f"{kind}_time_ratio_voxl_over_reference"] = round(ratio, 2)
            print(
                f"{kind:10s} VOXL takes {ratio:.2f}x the reference's time (target: < 60 s, < 1024 MiB)"
            )
    print(f"written {write_result('ingest', result)}")


if __name__ == "__main__":
    main()
