"""The UI and `voxl status` at scale: how long the Dagster UI's study pages and `voxl status` take to
answer on a home that holds a large cohort (issue 17).

Run it on a home kept by ``benchmarks.orchestration --sides dagster --keep DIR`` (its SQLite Dagster
storage and VOXL database, every study materialised), optionally padded with more study partitions
(never materialised, as a cohort still queued) up to ``--partitions``. It starts
``dagster-webserver`` on the home and times, medians of ``--runs``:

- the asset page's partition counts (``assetNodeOrError { partitionStats }``) of ``raw_study``;
- the study partitions' status bar (``assetPartitionStatuses`` of ``anonymised_study``), with the
  size of its answer;
- the latest 25 materialisations of ``destination_upload`` (the asset page's event list);
- `voxl status` (a fresh process each time, as an operator runs it).

    uv run --extra dev --extra bench python -m benchmarks.ui_scale --home DIR [--partitions 100000]

The reference side is Dagster's own cheapest page: the webserver's ``/server_info``, answered
without touching storage, so the ratios show what the partition count costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from benchmarks._common import write_result
from tests.peers import free_port, wait_for_port

PARTITION_STATS = """
query {
  assetNodeOrError(assetKey: {path: ["raw_study"]}) {
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed numMaterializing } }
  }
}"""
PARTITION_STATUSES = """
query {
  assetNodeOrError(assetKey: {path: ["anonymised_study"]}) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
          unmaterializedPartitions materializingPartitions }
      }
    }
  }
}"""
LATEST_MATERIALISATIONS = """
query {
  assetOrError(assetKey: {path: ["destination_upload"]}) {
    ... on Asset { assetMaterializations(limit: 25) { partition timestamp runId } }
  }
}"""


def pad_partitions(total: int) -> tuple[int, int]:
    """Add synthetic study partitions until the studies set holds ``total``; (before, after)."""
    from dagster import DagsterInstance

    from voxl_assets.partitions import STUDIES

    with DagsterInstance.get() as instance:
        existing = len(instance.get_dynamic_partitions(STUDIES))
        missing = total - existing
        chunk = 10_000
        for start in range(0, max(0, missing), chunk):
            keys = [f"scale-pad-{i:06d}" for i in range(start, min(missing, start + chunk))]
            instance.add_dynamic_partitions(STUDIES, keys)
        return existing, len(instance.get_dynamic_partitions(STUDIES))


def timed_post(url: str, query: str) -> tuple[float, int, Any]:
    started = time.perf_counter()
    response = requests.post(url, json={"query": query}, timeout=600)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise SystemExit(f"GraphQL error: {body['errors']}")
    return seconds, len(response.content), body["data"]


def timed_status(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "voxl_assets.cli", "status"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


@contextmanager
def webserver_on(env: dict[str, str]) -> Iterator[str]:
    """``dagster-webserver`` on the home ``env`` names, its code location loaded; yields its
    base URL."""
    port = free_port()
    webserver = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent))
    if webserver is None:
        raise SystemExit("dagster-webserver is not installed in this environment")
    server = subprocess.Popen(
        [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, 120):
            raise SystemExit("dagster-webserver did not start")
        base = f"http://127.0.0.1:{port}"
        timed_post(f"{base}/graphql", PARTITION_STATS)  # the first query loads the code location
        yield base
    finally:
        server.terminate()
        server.wait(30)


UI_QUERIES = (
    ("partition_stats", PARTITION_STATS),
    ("partition_statuses", PARTITION_STATUSES),
    ("latest_25", LATEST_MATERIALISATIONS),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="a home kept by benchmarks.orchestration")
    parser.add_argument("--partitions", type=int, default=0, help="pad the studies up to this")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    home = Path(args.home).resolve()
    env = {
        **os.environ,
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_DAGSTER_LOGS_DIR": str(home / "dagster" / "logs"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    env.pop("VOXL_DATABASE_URL", None)  # the home's own SQLite VOXL database
    os.environ.update({k: env[k] for k in ("VOXL_HOME", "DAGSTER_HOME")})
    before, partitions = pad_partitions(args.partitions)
    result: dict[str, Any] = {
        "studies_materialised": before,
        "study_partitions": partitions,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with webserver_on(env) as base:
        graphql = f"{base}/graphql"
        timings: dict[str, list[float]] = {
            "server_info": [],
            "partition_stats": [],
            "partition_statuses": [],
            "latest_25": [],
        }
        sizes: dict[str, int] = {}
        for _ in range(args.runs):
            started = time.perf_counter()
            requests.get(f"{base}/server_info", timeout=60).raise_for_status()
            timings["server_info"].append(time.perf_counter() - started)
            for name, query in UI_QUERIES:
                seconds, size, data = timed_post(graphql, query)
                timings[name].append(seconds)
                sizes[name] = size
                if name == "partition_stats":
                    result["raw_study_counts"] = data["assetNodeOrError"]["partitionStats"]
    status = [timed_status(env) for _ in range(3)]
    for name, values in timings.items():
        result[name] = {
            "median_seconds": round(statistics.median(values), 3),
            "max_seconds": round(max(values), 3),
        }
        if name in sizes:
            result[name]["answer_kib"] = round(sizes[name] / 1024, 1)
    result["voxl_status"] = {
        "median_seconds": round(statistics.median(status), 2),
        "runs": [round(s, 2) for s in status],
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    print(f"written {write_result(f'ui_scale_{partitions}', result)}")


if __name__ == "__main__":
    main()
