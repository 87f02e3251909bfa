"""`voxl demo`: the whole job on the embedded default, then the Dagster UI.

SQLite under VOXL_HOME, a demo VNA (pynetdicom) on loopback loaded with generated studies, a
generated OMOP ES extract, and the example project's local destination. The job runs through the
Dagster instance, so the UI shows its runs, partitions and metadata afterwards.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir


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


def run_demo(*, studies: int = 24, serve_ui: bool = True, port: int = 3000) -> int:
    from dagster import DagsterInstance

    from voxl_assets.cohort.extract_reader import read_any_summary
    from voxl_assets.cohort.ingest import register_extract
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.demo.scenario import build_scenario
    from voxl_assets.demo.vna import DemoVna
    from voxl_assets.partitions import STUDIES
    from voxl_assets.status import extract_statuses, render_table

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
    from resources.voxl_database import VoxlDatabaseResource
    from voxl_assets.orchestration import (
        materialize_cohort,
        materialize_export,
        materialize_studies,
    )

    with DemoVna(scenario.archive_dir, port=vna_port, ae_title="DEMOVNA"):
        print(f"VOXL demo in {home}: demo VNA on 127.0.0.1:{vna_port}, {studies} generated studies")
        database = VoxlDatabaseResource().database
        summary = read_any_summary(scenario.extract_dir)
        key = register_extract(database, summary, summary.project_slug)
        instance = DagsterInstance.get()
        materialize_cohort(instance, key, "demo")
        study_keys = [
            k
            for k in instance.get_dynamic_partitions(STUDIES)
            if k.startswith(summary.project_slug + "/")
        ]
        materialize_studies(instance, study_keys, "demo")
        materialize_export(instance, key, "demo")
        print(render_table(extract_statuses(database, summary.project_slug)))
        print(f"images delivered to   {home / 'delivered' / 'images'}")
        print(
            f"EHR bundle written to {home / 'exports'} and delivered to {home / 'delivered' / 'ehr'}"
        )
        if not serve_ui:
            return 0
        print(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(settings.REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        try:
            return subprocess.call(command, cwd=settings.REPO_ROOT)
        except KeyboardInterrupt:
            return 0
