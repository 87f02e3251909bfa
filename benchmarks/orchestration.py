"""Orchestration benchmark: the cost of a study. N studies of one small instance each (64x64),
served by a local Orthanc, through the real Dagster path, side by side with the floor.

- ``dagster``: ``materialize_studies``, what ``voxl backfill --in-process`` runs: the study
  pipeline asset over contiguous partition ranges of ``--batch`` studies per run, against the
  Dagster instance (its storage SQLite or PostgreSQL), every stage materialised per partition.
- ``floor``: the same stage functions (``StudyStages`` through ``StudyBatch``, with the same
  workers and batches) in a plain loop without Dagster.

Each side gets its own VOXL home and database (a fresh PostgreSQL database for the PostgreSQL
backend, and another for Dagster's storage), the same extract registered
and its partitions added before the clock starts. Each timed side is a fresh process forked after
VOXL's and Dagster's modules were imported, as in a running worker. Reported: milliseconds per
study, the ratio, peak memory and CPU of each side, and Dagster's storage size per study.
Targets (issue 17): at most 30 ms per study on the Dagster path, at most 1.5x the floor.

    uv run --extra dev --extra bench python -m benchmarks.orchestration [--studies 1000] [--backends sqlite,postgres]
        [--batch 200] [--workers 4] [--processes 1]

``--processes N`` runs each side's batches in N processes at once (every N-th batch each), as the
daemon runs a backfill's runs side by side in production (``max_concurrent_runs``); give the
archive no more than it serves at once (Orthanc: 4 associations), e.g. ``--processes 2
--workers 2``. CPU is counted over all the processes; the peak is the largest one's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from benchmarks._common import measure, measure_with_cpu, write_result
from tests.peers.orthanc import ORTHANC, OrthancServer
from voxl_assets.demo.scenario import build_scenario

POSTGRES_ADMIN_URL = os.environ.get(
    "VOXL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# As deployments/production/dagster.yaml lays it out: dagster-postgres's run and schedule storage,
# VOXL's pooled subclass of its event log.
DAGSTER_POSTGRES_YAML = """run_storage:
  module: dagster_postgres.run_storage
  class: PostgresRunStorage
  config:
    postgres_url: {url}
event_log_storage:
  module: voxl_assets.dagster_pg_storage
  class: PooledPostgresEventLogStorage
  config:
    postgres_url: {url}
schedule_storage:
  module: dagster_postgres.schedule_storage
  class: PostgresScheduleStorage
  config:
    postgres_url: {url}
telemetry:
  enabled: false
"""


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"voxl_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_size(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
            return int(size or 0)
    finally:
        engine.dispose()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def side_environment(home: Path, orthanc: OrthancServer, urls: tuple[str, str] | None) -> None:
    """Point VOXL and Dagster at ``home`` and, for PostgreSQL, at the (VOXL, Dagster) databases
    (set before forking each side's processes)."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    if urls is None:
        from voxl_assets import settings

        shutil.copyfile(
            settings.REPO_ROOT / "deployments" / "local" / "dagster.yaml",
            dagster_home / "dagster.yaml",
        )
        os.environ.pop("VOXL_DATABASE_URL", None)
    else:
        voxl_url, dagster_url = urls
        # dagster-postgres speaks psycopg2 (as deployments/production/dagster.yaml says).
        psycopg2_url = dagster_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
        (dagster_home / "dagster.yaml").write_text(DAGSTER_POSTGRES_YAML.format(url=psycopg2_url))
        os.environ["VOXL_DATABASE_URL"] = voxl_url
    os.environ.update(
        {
            "VOXL_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "VOXL_DAGSTER_LOGS_DIR": str(dagster_home / "logs"),
            "VOXL_VNA_PORT": str(orthanc.dicom_port),
            "VOXL_VNA_AE_TITLE": orthanc.ae_title,
        }
    )


def prepare(extract_dir: Path) -> None:
    """Register the extract and add its study partitions (not timed)."""
    from dagster import DagsterInstance

    from voxl_assets.cohort.extract_reader import read_any_summary
    from voxl_assets.cohort.ingest import register_extract
    from voxl_assets.db import VoxlDatabase
    from voxl_assets.orchestration import materialize_cohort

    database = VoxlDatabase()
    summary = read_any_summary(extract_dir)
    key = register_extract(database, summary, summary.project_slug)
    with DagsterInstance.get() as instance:
        materialize_cohort(instance, key, "benchmark")


def study_keys() -> list[str]:
    from dagster import DagsterInstance

    from voxl_assets.partitions import STUDIES

    with DagsterInstance.get() as instance:
        return list(instance.get_dynamic_partitions(STUDIES))


def share_of_batches(keys: list[str], batch: int, process: int, processes: int) -> list[int]:
    """The start of each ``batch``-sized chunk of ``keys`` that process ``process`` of
    ``processes`` runs: every ``processes``-th, as a daemon's concurrent runs share a backfill."""
    return list(range(process * batch, len(keys), processes * batch))


def in_processes(processes: int, target: Any, *args: Any) -> None:
    """``target(process, processes, *args)`` in each of ``processes`` forked processes, as
    the daemon runs a backfill's runs side by side (``max_concurrent_runs``); one process runs
    it here. Each opens its own databases: nothing is opened before the fork."""
    if processes == 1:
        target(0, 1, *args)
        return
    context = mp.get_context("fork")
    children = [
        context.Process(target=target, args=(i, processes, *args)) for i in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    failed = [child.exitcode for child in children if child.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {processes} benchmark processes failed: {failed}")


def run_dagster(process: int, processes: int, batch: int) -> None:
    from dagster import DagsterInstance

    from voxl_assets.orchestration import materialize_studies
    from voxl_assets.partitions import STUDIES

    with DagsterInstance.get() as instance:
        keys = list(instance.get_dynamic_partitions(STUDIES))
        # Whole chunks, in order, so materialize_studies cuts the same runs again.
        share = [
            key
            for start in share_of_batches(keys, batch, process, processes)
            for key in keys[start : start + batch]
        ]
        materialize_studies(instance, share, "benchmark", batch=batch)


def run_floor(process: int, processes: int, batch: int, workers: int) -> None:
    """The stage functions the asset calls, in batches, without Dagster."""
    from dagster import build_resources

    from voxl_assets.definitions import deployment_resources
    from voxl_assets.imaging.batch_run import StudyBatch, select_requests
    from voxl_assets.imaging.pipeline import Stage
    from voxl_assets.imaging.stages import StudyStages

    keys = study_keys()
    with build_resources(deployment_resources()) as resources:
        database = resources.voxl_db.database
        for start in share_of_batches(keys, batch, process, processes):
            # One StudyStages per batch, as the asset makes one per run.
            stages = StudyStages(
                database=database,
                registry=resources.projects.load(),
                hashing=resources.hashing.backend(database),
                archives=resources.vna.archives(),
                raw_cache=resources.stores.raw_cache(),
                anonymised=resources.stores.anonymised(),
                destinations=resources.destinations.clients,
                retry_delay=resources.vna.retry_delay_seconds,
            )
            study_batch = StudyBatch.selecting(
                database,
                stages.functions(),
                selected={stage.value for stage in Stage},
                requests=select_requests(database, keys[start : start + batch], None),
            )
            for _outcome in study_batch.run(workers=workers):
                pass
            stages.archives.release_associations()  # as the asset does after its batch


def outcome_counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from voxl_assets.db import Study, VoxlDatabase

    database = VoxlDatabase()
    with database.session() as session:
        rows = session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
    database.engine.dispose()
    return {str(status): int(count) for status, count in rows}


def check_passes(counts: dict[str, int], studies: int) -> bool:
    """The scenario's first study is ultrasound (filtered by the project); every other one is
    delivered."""
    return counts.get("uploaded") == studies - 1 and counts.get("filtered") == 1


def failure_reasons() -> list[str]:
    """Why the studies that failed did (VOXL's reasons name no identifier)."""
    from sqlalchemy import select

    from voxl_assets.db import Study, VoxlDatabase

    database = VoxlDatabase()
    with database.session() as session:
        rows = session.execute(
            select(Study.id, Study.failure_reason).where(Study.status == "failed")
        ).all()
    database.engine.dispose()
    return [f"study {study_id}: {reason}" for study_id, reason in rows]


def check_counts(counts: dict[str, int], studies: int) -> None:
    if not check_passes(counts, studies):
        reasons = "\n".join(failure_reasons()[:10])
        raise SystemExit(f"benchmark side did not deliver every study: {counts}\n{reasons}")


def import_modules() -> None:
    """VOXL's and Dagster's modules, imported before the timed processes are forked (Dagster's
    storage modules too: an instance imports them when first made, 4 s on this machine, which is
    a process's start, not a study's cost)."""
    import dagster._core.storage.event_log.sqlite
    import dagster._core.storage.runs.sqlite
    import dagster._core.storage.schedules.sqlite  # noqa: F401
    import dagster_postgres  # noqa: F401

    import voxl_assets.dagster_pg_storage
    import voxl_assets.definitions
    import voxl_assets.orchestration  # noqa: F401
    from voxl_assets.imaging import batch_run, stages  # noqa: F401


@contextmanager
def ui_open_while(every: float) -> Iterator[dict[str, Any]]:
    """``dagster-webserver`` on the side's home while the block runs, asked every ``every``
    seconds what the UI's study pages ask (``benchmarks.ui_scale``'s queries) and ``voxl status``
    run, each timed; the dict is filled with the medians and maxima when the block ends."""
    import threading

    from benchmarks.ui_scale import UI_QUERIES, timed_post, timed_status, webserver_on

    env = {**os.environ}
    timings: dict[str, list[float]] = {name: [] for name, _query in UI_QUERIES}
    timings["voxl_status"] = []
    stop = threading.Event()
    summary: dict[str, Any] = {}
    with webserver_on(env) as base:

        def ask() -> None:
            while not stop.wait(every):
                for name, query in UI_QUERIES:
                    timings[name].append(timed_post(f"{base}/graphql", query)[0])
                timings["voxl_status"].append(timed_status(env))

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        try:
            yield summary
        finally:
            stop.set()
            asking.join()
    for name, values in timings.items():
        if values:
            summary[name] = {
                "answers": len(values),
                "median_seconds": round(statistics.median(values), 3),
                "max_seconds": round(max(values), 3),
            }


def run_side(
    name: str,
    root: Path,
    orthanc: OrthancServer,
    scenario: Any,
    args: argparse.Namespace,
    urls: tuple[str, str] | None,
) -> dict[str, Any]:
    home = root / name
    side_environment(home, orthanc, urls)
    measure(prepare, scenario.extract_dir)
    floor = name.endswith("floor")
    work = (run_floor, args.batch, args.workers) if floor else (run_dagster, args.batch)
    ui_open = ui_open_while(args.ui_every) if args.ui and not floor else nullcontext(None)
    with ui_open as ui:
        seconds, peak, cpu = measure_with_cpu(in_processes, args.processes, *work)
    counts = outcome_counts()
    if args.keep and urls is None and not check_passes(counts, args.studies):
        # Kept to look into (either side): `voxl status` names the reasons, the raw cache holds
        # what the archive sent.
        shutil.move(str(home), f"{args.keep}-{name}-failed")
    check_counts(counts, args.studies)
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "ms_per_study": round(1000 * seconds / args.studies, 1),
        "cpu_ms_per_study": round(1000 * cpu / args.studies, 1),
        "peak_mib": round(peak, 1),
    }
    if ui is not None:
        result["ui_during_the_run"] = ui
    if not name.endswith("floor"):
        storage = postgres_size(urls[1]) if urls else folder_bytes(home / "dagster")
        result["dagster_storage_bytes"] = storage
        result["dagster_storage_kib_per_study"] = round(storage / 1024 / args.studies, 1)
    if args.keep and not name.endswith("floor") and urls is None:
        shutil.move(str(home), args.keep)
    shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--batch", type=int, default=200, help="studies per Dagster run")
    parser.add_argument("--workers", type=int, default=4, help="VOXL_STUDY_WORKERS")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="runs side by side (each side), as the daemon's max_concurrent_runs; the archive"
        " serves processes x workers associations",
    )
    parser.add_argument(
        "--ui",
        action="store_true",
        help="the UI open on the Dagster side while it runs: dagster-webserver asked what the"
        " study pages ask, and voxl status run, every --ui-every seconds, each timed",
    )
    parser.add_argument("--ui-every", type=float, default=5.0)
    parser.add_argument("--dir", default=None, help="where to put the homes (default: /tmp)")
    parser.add_argument("--sides", default="floor,dagster", help="for profiling one side")
    parser.add_argument(
        "--keep", default=None, help="move the Dagster side's home here (SQLite), to time the UI"
    )
    args = parser.parse_args()
    if not Path(ORTHANC).exists():
        raise SystemExit("benchmark cannot run: Orthanc is not installed (apt-get install orthanc)")
    os.environ.update(
        {
            "VOXL_HASHING_KEY": "orchestration-benchmark-key-0123456789",
            "VOXL_VNA_QUERIES_PER_SECOND": "100000",
            "VOXL_STUDY_WORKERS": str(args.workers),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
    )
    import_modules()
    summary: dict[str, Any] = {
        "studies": args.studies,
        "instances_per_study": 1,
        "batch": args.batch,
        "workers": args.workers,
        "processes": args.processes,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="voxl-bench-orchestration-", dir=args.dir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        scenario = build_scenario(
            root / "input", studies=args.studies, missing=0, instances=1, rows_columns=64
        )
        orthanc = OrthancServer(root / "orthanc")
        orthanc.start()
        try:
            loaded = orthanc.upload_folder(scenario.archive_dir)
            print(
                f"{loaded} instances generated and loaded in {time.perf_counter() - started:.0f} s"
            )
            for backend in args.backends.split(","):
                for side in args.sides.split(","):
                    name = f"{backend}-{side}"
                    if backend == "sqlite":
                        summary[name] = run_side(name, root, orthanc, scenario, args, None)
                    else:
                        with postgres_database() as voxl, postgres_database() as dagster:
                            summary[name] = run_side(
                                name, root, orthanc, scenario, args, (voxl, dagster)
                            )
                    print(f"{name}: {summary[name]}", flush=True)
                if args.sides == "floor,dagster":
                    floor, dagster = summary[f"{backend}-floor"], summary[f"{backend}-dagster"]
                    summary[f"{backend}-ratio"] = round(
                        dagster["ms_per_study"] / floor["ms_per_study"], 2
                    )
        finally:
            orthanc.stop()
    summary["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    summary["target"] = "Dagster path <= 30 ms/study and <= 1.5x the floor"
    print(f"{'':18} {'ms/study':>9} {'CPU ms':>7} {'peak MiB':>9} {'storage KiB/study':>18}")
    for backend in args.backends.split(","):
        for side in args.sides.split(","):
            row = summary[f"{backend}-{side}"]
            print(
                f"{backend + ' ' + side:18} {row['ms_per_study']:9} {row['cpu_ms_per_study']:7} "
                f"{row['peak_mib']:9} {row.get('dagster_storage_kib_per_study', ''):>18}"
            )
        if f"{backend}-ratio" in summary:
            print(f"{backend + ' ratio':18} {summary[f'{backend}-ratio']:9}")
        ui = summary.get(f"{backend}-dagster", {}).get("ui_during_the_run")
        if ui:
            answers = ", ".join(
                f"{name} {row['median_seconds']} s (max {row['max_seconds']}, {row['answers']}x)"
                for name, row in ui.items()
            )
            print(f"{backend} UI during the run: {answers}")
    print(
        f"load average before {summary['load_average_before']}, after {summary['load_average_after']}"
    )
    print(f"written {write_result('orchestration', summary)}")


if __name__ == "__main__":
    main()
