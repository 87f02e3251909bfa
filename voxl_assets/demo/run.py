"""`voxl demo`: the whole job on the embedded default, then the Dagster UI.

SQLite under VOXL_HOME, a demo VNA (pynetdicom) on loopback loaded with generated studies, a
generated OMOP ES extract, and the example project's local destination. The job runs through the
Dagster instance, so the UI shows its runs, partitions and metadata afterwards. The UI is served
as production serves it: ``dagster-webserver`` and ``dagster-daemon`` (whose sensors find nothing
left to do: the demo has done it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir

if TYPE_CHECKING:
    from voxl_assets.demo.scenario import Scenario
    from voxl_assets.terminal import CommandLog


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _hashing_key() -> None:
    """The demo's key, created once under VOXL_HOME/secrets (mode 0600). Production sets
    VOXL_HASHING_KEY from its secret store instead."""
    if os.environ.get("VOXL_HASHING_KEY"):
        return
    path = make_private_dir(settings.secrets_dir()) / "hashing-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    os.environ["VOXL_HASHING_KEY"] = path.read_text().strip()


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def describe_scenario(scenario: Scenario, project_modalities: Sequence[str]) -> list[str]:
    """What the generated data holds, and which studies are there to show how a study can end."""
    lines = [
        f"a generated OMOP ES extract of {len(scenario.rows)} imaging studies; the project keeps "
        f"{', '.join(project_modalities)}",
        "on purpose, to show how a study can end:",
    ]
    if scenario.missing:
        lines.append(
            f"  {_plural(len(scenario.missing), 'study is', 'studies are')} not on the demo "
            "VNA, to show failure reasons"
        )
    if scenario.filtered:
        lines.append(
            f"  {_plural(len(scenario.filtered), 'study is', 'studies are')} ultrasound (US), "
            "which the project filters out"
        )
    if scenario.by_mrn_accession:
        lines.append(
            f"  {_plural(len(scenario.by_mrn_accession), 'study is', 'studies are')} on the VNA "
            "under another study UID (emergency imaging), found by MRN + accession number"
        )
    return lines


def run_demo(
    *, studies: int = 24, serve_ui: bool = True, port: int = 3000, log: CommandLog | None = None
) -> int:
    from dagster import DagsterInstance

    from voxl_assets.cohort.extract_reader import read_any_summary
    from voxl_assets.cohort.ingest import register_extract
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.db import shared_database
    from voxl_assets.demo.scenario import build_scenario
    from voxl_assets.demo.vna import DemoVna
    from voxl_assets.orchestration import (
        RunFailed,
        materialize_cohort,
        materialize_export,
        materialize_studies,
    )
    from voxl_assets.partitions import STUDIES
    from voxl_assets.project_config import ProjectRegistry
    from voxl_assets.status import extract_statuses, render_table
    from voxl_assets.terminal import phase_progress, progress_over_studies

    home = make_private_dir(settings.voxl_home())
    ensure_dagster_home()
    _hashing_key()
    demo_root = home / "demo"
    if (demo_root / "archive").exists():
        import shutil

        shutil.rmtree(demo_root)
    scenario = build_scenario(demo_root, studies=studies, missing=max(1, studies // 12))
    vna_port = _free_port()
    os.environ.update(
        {
            "VOXL_VNA_HOST": "127.0.0.1",
            "VOXL_VNA_PORT": str(vna_port),
            "VOXL_VNA_AE_TITLE": "DEMOVNA",
        }
    )
    summary = read_any_summary(scenario.extract_dir)
    project = ProjectRegistry.load().get(summary.project_slug)
    modalities = list(project.project.modalities) if project else []

    on_vna = len(scenario.rows) - len(scenario.missing)
    print(f"VOXL demo in {home}")
    print(f"  a demo VNA (pynetdicom, C-FIND/C-GET) on 127.0.0.1:{vna_port} with {on_vna} studies")
    for line in describe_scenario(scenario, modalities):
        print(f"  {line}")
    with DemoVna(scenario.archive_dir, port=vna_port, ae_title="DEMOVNA"):
        database = shared_database()
        key = register_extract(database, summary, summary.project_slug)
        instance = DagsterInstance.get()
        try:
            started = time.monotonic()
            with phase_progress("1/3 cohort messages", log):
                materialize_cohort(instance, key, "demo")
            study_keys = [
                k
                for k in instance.get_dynamic_partitions(STUDIES)
                if k.startswith(summary.project_slug + "/")
            ]
            print(
                f"1/3 cohort messages: extract {key} registered, "
                f"{len(study_keys)} study partitions ({time.monotonic() - started:.1f} s)"
            )
            started = time.monotonic()
            with progress_over_studies(database, study_keys, "2/3 studies"):
                materialize_studies(instance, study_keys, "demo")
            by_state = extract_statuses(database, summary.project_slug)[0].by_state or {}
            ended = ", ".join(
                f"{by_state.get(s, 0)} {s}" for s in ("uploaded", "filtered", "failed")
            )
            print(
                f"2/3 studies: raw -> anonymised -> upload: {ended} "
                f"({time.monotonic() - started:.1f} s)"
            )
            started = time.monotonic()
            with phase_progress("3/3 export", log):
                materialize_export(instance, key, "demo")
            print(
                "3/3 export: mapping table, EHR bundle, leak guard, delivery "
                f"({time.monotonic() - started:.1f} s)"
            )
        except RunFailed as exc:
            print(f"voxl: error: {exc}", file=sys.stderr)
            return 1
        print()
        print(render_table(extract_statuses(database, summary.project_slug)))
        print()
        print(f"images, one zip per study   {home / 'delivered' / 'images'}")
        print(f"EHR bundle                  {home / 'exports'}")
        print(f"  delivered to              {home / 'delivered' / 'ehr'}")
        if not serve_ui:
            print("`voxl status` shows the table again; `voxl demo` without --no-ui serves the UI.")
            return 0
        return serve_dagster_ui(port, home / "logs")


def serve_dagster_ui(port: int, log_dir: Path) -> int:
    """The Dagster webserver and daemon, as production runs them, until Ctrl-C."""
    workspace = str(settings.REPO_ROOT / "workspace.yaml")
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {name: log_dir / f"{name}.log" for name in ("dagster-webserver", "dagster-daemon")}
    commands = {
        "dagster-webserver": [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            workspace,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        "dagster-daemon": [sys.executable, "-m", "dagster._daemon", "run", "-w", workspace],
    }
    processes: list[subprocess.Popen[bytes]] = []

    def stop(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too: the webserver and daemon stop with the demo

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for name, command in commands.items():
            with logs[name].open("ab") as output:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=settings.REPO_ROOT,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    )
                )
        print(f"starting the Dagster UI; its logs: {logs['dagster-webserver']}, ")
        print(f"  {logs['dagster-daemon']} (the daemon runs the sensors and queued runs)")
        if not _wait_for_port(port, processes[0], 120):
            print(
                f"voxl: error: the Dagster webserver did not start: see {logs['dagster-webserver']}",
                file=sys.stderr,
            )
            return 1
        print(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
        return processes[0].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.3)
    return False
