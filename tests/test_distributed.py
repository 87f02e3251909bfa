"""Must-show of the distributed deployment: the real ``dagster-daemon``, two Celery workers as
separate hosts (separate processes, each with its own VOXL_HOME, raw cache and anonymised store),
the machine's RabbitMQ and PostgreSQL (fresh databases), Orthanc as the VNA and as the images
destination, FTPS for the EHR bundle.

An extract dropped into the watched folder flows with no further command: the extract sensor
queues the cohort run, the study sensor queues study batches, both workers process studies, the
export sensor exports. One worker is killed mid-batch: its run notices the lost worker, fails, and
the daemon's run retries finish its studies on the other worker. Every study ends uploaded exactly
once (each SOP instance counted as the destination receives it; a resend after a kill between
delivery and record is flagged), no study is lost, no ``.part`` is left, and the archive's own
count of queries stays under the global rate although both workers query it.

Select it with ``-m distributed``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.peers import free_port, wait_for_port
from tests.peers.ftps import FtpServer
from tests.peers.orthanc import OrthancServer, start_orthanc
from tests.peers.postgres import fresh_postgres_database
from voxl_assets import settings
from voxl_assets.demo.scenario import build_scenario

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]

RATE = 1.0  # the archive's global query rate, shared by both workers: low enough to bind
STUDIES = 24
INSTANCES = 2
BATCH = 12  # two study runs: one per worker
LOST_AFTER = 10  # seconds a worker may stay silent before its step is failed as lost
T = TypeVar("T")
BIN = Path(sys.executable).parent


def _enter(stack: ExitStack, fixture: Iterator[T]) -> T:
    """A peer's generator as a context: its cleanup runs when the generator is closed."""
    stack.callback(getattr(fixture, "close"))  # noqa: B009 (an Iterator type has no close)
    return next(fixture)


def _project_dir(tmp_path: Path, dicomweb_url: str, ftps: FtpServer) -> Path:
    projects = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", projects / "tag-operations"
    )
    definition: dict[str, Any] = {
        "project": {
            "slug": "test-extract-uclh-omop-cdm",
            "name": "Test Extract - UCLH OMOP CDM",
            "modalities": ["CT", "MR", "DX"],
        },
        "tag_operations": {"base": ["base.yaml", "ct.yaml", "mr.yaml", "dx-cr.yaml"]},
        "destinations": {
            "images": {"kind": "dicomweb", "url": dicomweb_url, "batch_size": 20},
            "ehr": {
                "kind": "ftps",
                "host": ftps.host,
                "port": ftps.port,
                "username_env": "DIST_FTPS_USER",
                "password_env": "DIST_FTPS_PASSWORD",
                "ca_bundle": str(ftps.certificate),
                "remote_root": "/",
            },
        },
    }
    (projects / "test-extract-uclh-omop-cdm.yaml").write_text(yaml.safe_dump(definition))
    return projects


def _dagster_home(root: Path) -> Path:
    """The distributed instance file, with the monitor polling fast enough for a test."""
    config = yaml.safe_load(
        (settings.REPO_ROOT / "deployments" / "distributed" / "dagster.yaml").read_text()
    )
    config["run_monitoring"]["poll_interval_seconds"] = 5
    config["concurrency"]["runs"]["max_concurrent_runs"] = 3  # 2 cores: few run orchestrators
    root.mkdir(parents=True)
    (root / "dagster.yaml").write_text(yaml.safe_dump(config))
    return root


def _workspace(root: Path, port: int) -> Path:
    """The daemon reaches VOXL's code through a code server of its own (a user-code deployment),
    not one it starts and may restart."""
    workspace = root / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "voxl"}}
                ]
            }
        )
    )
    return workspace


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=settings.REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a host going down takes all of it
    )


def _own_network(
    stack: ExitStack, logs: Path, loopback_ports: list[int], open_ports: list[int]
) -> tuple[str, str] | None:
    """A network namespace for a worker host: its own loopback and address (a veth pair). Its
    loopback forwards ``loopback_ports`` (peers listening on the machine's loopback only:
    PostgreSQL, RabbitMQ) through a forwarder on the machine's veth address, and ``open_ports``
    (peers listening on every address: the destination) to that address directly; the VNA is
    reached by that address. None where namespaces cannot be made (not root)."""
    name = f"voxl-{uuid.uuid4().hex[:8]}"
    octet = random.randint(1, 250)
    host_ip, own_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    outside, inside = f"vxh{name[5:11]}", f"vxn{name[5:11]}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError):
        return None
    stack.callback(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
    ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    stack.callback(subprocess.run, ["ip", "link", "del", outside], capture_output=True)
    ip("link", "set", inside, "netns", name)
    ip("addr", "add", f"{host_ip}/30", "dev", outside)
    ip("link", "set", outside, "up")
    for args in (
        ("addr", "add", f"{own_ip}/30", "dev", inside),
        ("link", "set", inside, "up"),
        ("link", "set", "lo", "up"),
    ):
        ip("netns", "exec", name, "ip", *args)
    forward = [sys.executable, "-m", "tests.peers.tcp_forward"]
    host_side = _start(
        [*forward, *(f"{host_ip}:{p}=127.0.0.1:{p}" for p in loopback_ports)],
        dict(os.environ),
        logs / "forward-host.log",
    )
    stack.callback(_stop, host_side)
    for port in loopback_ports:
        assert wait_for_port(port, 30, host_ip), (logs / "forward-host.log").read_text()
    own_side = _start(
        [
            *("ip", "netns", "exec", name, *forward),
            *(f"127.0.0.1:{p}={host_ip}:{p}" for p in [*loopback_ports, *open_ports]),
        ],
        dict(os.environ),
        logs / "forward-own.log",
    )
    stack.callback(_stop, own_side)
    deadline = time.monotonic() + 30
    while "forwarding" not in (logs / "forward-own.log").read_text():
        assert time.monotonic() < deadline and own_side.poll() is None
        time.sleep(0.1)
    return name, host_ip


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _cached_studies(home: Path) -> int:
    studies = home / "raw-cache" / "studies"
    return sum(1 for p in studies.iterdir() if p.is_dir()) if studies.is_dir() else 0


def _cache_times(home: Path) -> list[float]:
    """When each study a worker cached was last written (its folder's modification time)."""
    studies = home / "raw-cache" / "studies"
    return [p.stat().st_mtime for p in studies.iterdir() if p.is_dir()] if studies.is_dir() else []


def _most_in_any_window(seconds: list[int], window: int) -> int:
    counts = Counter(seconds)
    if not counts:
        return 0
    return max(
        sum(counts.get(start + offset, 0) for offset in range(window))
        for start in range(min(counts), max(counts) + 1)
    )


def test_two_worker_hosts_the_daemon_and_a_killed_worker(
    tmp_path: Path,
    postgres_url: str,
    rabbitmq_broker: str,
    ftps_server: FtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ExitStack() as stack:
        dagster_url = make_url(_enter(stack, fresh_postgres_database()))
        vna: OrthancServer = _enter(stack, start_orthanc(count_queries=True))
        destination: OrthancServer = _enter(
            stack, start_orthanc(ae_title="DEST", count_deliveries=True)
        )
        scenario = build_scenario(
            tmp_path / "input", studies=STUDIES, missing=0, instances=INSTANCES, rows_columns=32
        )
        vna.upload_folder(scenario.archive_dir)
        uploaded = scenario.expected_uploaded
        assert len(uploaded) == STUDIES - len(scenario.filtered)
        watched = tmp_path / "watched"
        watched.mkdir()
        dagster_pg = {
            "VOXL_DAGSTER_PG_HOST": str(dagster_url.host),
            "VOXL_DAGSTER_PG_PORT": str(dagster_url.port or 5432),
            "VOXL_DAGSTER_PG_DB": str(dagster_url.database),
            "VOXL_DAGSTER_PG_USER": str(dagster_url.username),
            "VOXL_DAGSTER_PG_PASSWORD": dagster_url.password or "",
        }
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VOXL_", "DAGSTER_"))},
            **dagster_pg,
            "VOXL_DEPLOYMENT": "production",
            "VOXL_DATABASE_URL": postgres_url,
            "VOXL_PROJECTS_DIR": str(_project_dir(tmp_path, destination.dicomweb_url, ftps_server)),
            "VOXL_EXTRACTS_DIR": str(watched),
            "VOXL_EXTRACT_QUIET_SECONDS": "0",
            "VOXL_HASHING_KEY": "distributed-must-show-key-0123456789",
            "VOXL_VNA_PORT": str(vna.dicom_port),
            "VOXL_VNA_AE_TITLE": vna.ae_title,
            "VOXL_VNA_QUERIES_PER_SECOND": str(RATE),
            "VOXL_STUDY_BATCH_SIZE": str(BATCH),
            "VOXL_STUDY_WORKERS": "2",
            "VOXL_EXTRACT_SENSOR_INTERVAL": "3",
            "VOXL_STUDY_SENSOR_INTERVAL": "3",
            "VOXL_EXPORT_SENSOR_INTERVAL": "3",
            "VOXL_WINDOW_SENSOR_INTERVAL": "300",
            "VOXL_EXECUTOR": "celery",
            "VOXL_CELERY_BROKER_URL": rabbitmq_broker,
            "VOXL_CELERY_WORKER_LOST_SECONDS": str(LOST_AFTER),
            "DIST_FTPS_USER": ftps_server.username,
            "DIST_FTPS_PASSWORD": ftps_server.password,
            "PYTHONUNBUFFERED": "1",
        }
        homes = {name: tmp_path / name for name in ("daemon", "worker-a", "worker-b")}
        dagster_home = _dagster_home(tmp_path / "dagster-home")
        logs = tmp_path / "logs"
        logs.mkdir()

        def env(name: str) -> dict[str, str]:
            return {**base, "VOXL_HOME": str(homes[name]), "DAGSTER_HOME": str(dagster_home)}

        code_port = free_port()
        code_server = _start(
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-m",
                "voxl_assets.definitions",
                "-a",
                "defs",
                "-h",
                "127.0.0.1",
                "-p",
                str(code_port),
            ],
            env("daemon"),
            logs / "code-server.log",
        )
        stack.callback(_stop, code_server)
        assert wait_for_port(code_port, 180), (logs / "code-server.log").read_text()[-3000:]
        daemon = _start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(_workspace(tmp_path, code_port))],
            env("daemon"),
            logs / "daemon.log",
        )
        stack.callback(_stop, daemon)
        # Worker B is a host of its own: its own network namespace where the machine allows it.
        network = _own_network(stack, logs, [5432, 5672], [destination.http_port])
        workers = {}
        for name, queues in (
            ("worker-a", "voxl-imaging,voxl-extracts"),  # the extracts host reaches the VNA too
            ("worker-b", "voxl-imaging"),
        ):
            worker_env = env(name)
            prefix: list[str] = []
            if name == "worker-b" and network is not None:
                prefix = ["ip", "netns", "exec", network[0]]
                worker_env["VOXL_VNA_HOST"] = network[1]  # the VNA by its address
            workers[name] = _start(
                [
                    *prefix,
                    str(BIN / "celery"),
                    "-A",
                    "voxl_assets.celery_worker",
                    "worker",
                    "-Q",
                    queues,
                    "-n",
                    f"{name}@%h",
                    "--concurrency",
                    "1",
                    "--without-mingle",
                    "--without-gossip",
                    "--loglevel",
                    "INFO",
                ],
                worker_env,
                logs / f"{name}.log",
            )
            stack.callback(_stop, workers[name])

        # The drop: the extract appears in the watched folder at once (renamed in), nothing else.
        staged = tmp_path / "staged"
        shutil.copytree(scenario.extract_dir, staged)
        staged.rename(watched / scenario.extract_dir.name)

        voxl_db = create_engine(postgres_url)
        stack.callback(voxl_db.dispose)

        def statuses() -> Counter[str]:
            with voxl_db.connect() as connection:
                try:
                    rows = connection.execute(
                        text("SELECT status, count(*) FROM studies GROUP BY status")
                    ).all()
                except Exception:  # the schema is not there before the first run
                    return Counter()
            return Counter({str(status): int(count) for status, count in rows})

        linker = (
            ftps_server.root
            / "test-extract-uclh-omop-cdm"
            / "2026-11-01T12-00-00"
            / "IMAGE_LINKER.parquet"
        )
        killed_with: dict[str, int] = {}
        killed_at, busy_b = 0.0, list[float]()
        deadline = time.monotonic() + 900  # a loaded 2-core machine; typically far less
        while time.monotonic() < deadline:
            for name, process in workers.items():
                if name not in killed_with:
                    assert process.poll() is None, (logs / f"{name}.log").read_text()[-3000:]
            assert daemon.poll() is None, (logs / "daemon.log").read_text()[-3000:]
            cached_b = _cached_studies(homes["worker-b"])
            if (
                not killed_with
                and _cached_studies(homes["worker-a"]) >= 1
                and cached_b >= 3  # both workers have been busy a while
                and cached_b % BATCH != 0  # worker B is inside a batch
                and statuses()["uploaded"] < len(uploaded) - 2
            ):
                os.killpg(workers["worker-b"].pid, signal.SIGKILL)  # the host goes down
                workers["worker-b"].wait(10)
                killed_with = {"worker-b": cached_b}
                killed_at = time.time()
                busy_b = _cache_times(homes["worker-b"])
            if statuses()["uploaded"] == len(uploaded) and linker.exists():
                break
            time.sleep(0.2)
        states = statuses()
        assert killed_with, f"worker B was never caught mid-batch; studies: {dict(states)}"
        assert states == Counter({"uploaded": len(uploaded), "filtered": len(scenario.filtered)}), (
            logs / "daemon.log"
        ).read_text()[-3000:]
        assert linker.exists()

        # Both hosts processed studies (each retrieved into its own raw cache).
        cached = {name: _cached_studies(homes[name]) for name in ("worker-a", "worker-b")}
        assert cached["worker-a"] >= 1 and cached["worker-b"] >= 1, cached

        # Recovered by run retries, without a person: a run failed on the lost worker and a
        # retry of it succeeded.
        for name, value in dagster_pg.items():
            monkeypatch.setenv(name, value)
        from dagster import DagsterInstance, DagsterRunStatus

        instance = stack.enter_context(DagsterInstance.from_config(str(dagster_home)))
        runs = instance.get_runs()
        failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
        lost = [
            r
            for r in failed
            # the step's error, carried by the run's failure event
            if any("stopped answering" in repr(e) for e in instance.all_logs(r.run_id))
        ]
        retries = [r for r in runs if r.tags.get("dagster/parent_run_id")]
        assert lost, [(r.run_id, r.status) for r in runs]
        assert {r.tags["dagster/parent_run_id"] for r in retries} >= {r.run_id for r in lost}
        assert all(
            r.status == DagsterRunStatus.SUCCESS
            for r in retries
            if not any(c.tags.get("dagster/parent_run_id") == r.run_id for c in runs)
        )
        # Studies and export ran on the workers, none on the daemon's host.
        assert _cached_studies(homes["daemon"]) == 0

        # Every study uploaded exactly once: one export record each, the destination holds each
        # instance once, and an instance received twice only for a study whose upload was cut off
        # by the kill and flagged as a resend.
        with voxl_db.connect() as connection:
            exports = connection.execute(
                text("SELECT count(*), count(DISTINCT study_id) FROM study_exports")
            ).one()
            resent = connection.execute(
                text("SELECT count(DISTINCT study_id) FROM upload_attempts WHERE resend")
            ).scalar_one()
        assert len(destination.study_uids()) == len(uploaded)
        assert destination.instance_count() == len(uploaded) * INSTANCES
        deliveries = destination.deliveries()
        twice = [uid for uid, count in deliveries.items() if count > 1]
        assert len(deliveries) == len(uploaded) * INSTANCES
        assert max(deliveries.values()) <= 2 and len(twice) <= resent * INSTANCES
        assert exports[1] == exports[0] == len(uploaded)  # one record per study
        linked = pd.read_parquet(linker)
        assert sorted(linked["procedure_occurrence_id"]) == sorted(uploaded)
        assert set(linked["pseudo_study_uid"]) == destination.study_uids()

        # No partial file at the destinations nor on the surviving host.
        for root in (ftps_server.root, homes["worker-a"], homes["daemon"]):
            assert list(root.rglob("*.part")) == [], root

        # The archive's own count: C-FINDs per window stay under the global rate, although both
        # workers queried it (+1: a window may start between two grants) ...
        seconds = vna.query_seconds()
        assert len(seconds) >= len(uploaded)
        assert _most_in_any_window(seconds, 5) <= 5 * RATE + 1, Counter(seconds)
        span = max(seconds) - min(seconds) + 1
        # ... in particular while both workers were busy: from the later of their first cached
        # studies to the earlier of A's last one and B's kill.
        busy_a = _cache_times(homes["worker-a"])
        both_from = max(min(busy_a), min(busy_b))
        both_to = min(max(busy_a), killed_at)
        assert both_to > both_from, (busy_a, busy_b, killed_at)
        during = [t for t in seconds if int(both_from) <= t <= int(both_to)]
        assert len(during) <= RATE * (int(both_to) - int(both_from) + 1) + 1
        print(
            f"\nqueries seen by the VNA: {len(seconds)} in {span} s, {len(during)} in the "
            f"{both_to - both_from:.0f} s both workers were busy "
            f"(max {_most_in_any_window(seconds, 1)} in one second, "
            f"{_most_in_any_window(seconds, 5)} in five; global rate {RATE:g}/s); "
            f"cached studies {cached}; killed worker-b after {killed_with['worker-b']}; "
            f"runs {len(runs)}, lost {len(lost)}, retries {len(retries)}; "
            f"resent studies {resent}, instances received twice {len(twice)}; "
            f".part left on the killed host: {len(list(homes['worker-b'].rglob('*.part')))}; "
            f"worker B in {'its own network namespace' if network else 'the machine namespace'}"
        )
