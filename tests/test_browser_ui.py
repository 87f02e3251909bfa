"""The demo's Dagster UI in a real browser (Debian chromium, headless): the VOXL assets are
there, a study partition is materialised, and a screenshot is saved for people to look at."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.peers import free_port, peer_missing, wait_for_port
from voxl_assets import settings

SCREENSHOTS = settings.REPO_ROOT / "benchmarks" / "results"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    peer_missing("chromium not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


@pytest.fixture
def demo_ui(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        **os.environ,
        "VOXL_HOME": str(tmp_path / "voxl"),
        "DAGSTER_HOME": str(tmp_path / "voxl" / "dagster"),
    }
    env.pop("VOXL_DATABASE_URL", None)
    demo = subprocess.run(
        [sys.executable, "-m", "voxl_assets.cli", "demo", "--no-ui", "--studies", "6"],
        env=env,
        cwd=settings.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "uploaded" in demo.stdout
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            str(settings.REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**env, "VOXL_HASHING_KEY": "not-used-by-the-ui-0123456789"},
        cwd=settings.REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "webserver.log").open("wb"),
    )
    try:
        assert wait_for_port(port, 90), (tmp_path / "webserver.log").read_text()[-2000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the code location loads after the port opens
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield url, env
    finally:
        server.terminate()
        server.wait(20)


def test_ui_shows_the_assets_and_a_materialised_partition(
    demo_ui: tuple[str, dict[str, str]],
) -> None:
    browser = _chromium()
    url, _ = demo_ui
    query = """{ assetOrError(assetKey: {path: ["raw_study"]}) {
        ... on Asset { assetMaterializations(limit: 5) { partition } } } }"""
    answer = requests.post(f"{url}/graphql", json={"query": query}, timeout=30).json()
    partitions = [m["partition"] for m in answer["data"]["assetOrError"]["assetMaterializations"]]
    assert partitions and all(p.startswith("test-extract-uclh-omop-cdm/") for p in partitions)
    nux = requests.post(f"{url}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30).json()
    assert nux["data"]["shouldShowNux"] is False  # no onboarding modal over the page

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "dagster-ui-raw-study.png"
    screenshot.unlink(missing_ok=True)
    common = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        "--virtual-time-budget=20000",
    ]
    page = f"{url}/assets/raw_study?view=partitions"
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert "raw_study" in dom.stdout
    subprocess.run([*common, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    catalog = subprocess.run(
        [*common, "--dump-dom", f"{url}/assets"], capture_output=True, text=True, timeout=120
    )
    for asset in ("cohort_messages", "anonymised_study", "destination_upload", "ehr_bundle"):
        assert asset in catalog.stdout, asset
