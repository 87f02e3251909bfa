"""The demo's Dagster UI in a real browser (Debian chromium, headless): the VOXL assets are
there, a study partition is materialised, the resources pages show how the deployment is
configured and no secret, and screenshots are saved for people to look at."""

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


HASHING_KEY = "not-used-by-the-ui-0123456789"
VNA_HOST = "vna.hospital.example"  # set for the UI only: shown by name, never resolved there
RESOURCES_PAGE = "locations/voxl_assets.definitions%3Adefs/resources"


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("ui")
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
        env={**env, "VOXL_HASHING_KEY": HASHING_KEY, "VOXL_VNA_HOST": VNA_HOST},
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
    common = _browser_command(browser)
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


def _browser_command(browser: str, size: str = "1400,900") -> list[str]:
    # As root in a container: no sandbox, no GPU, /tmp instead of a small /dev/shm.
    return [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={size}",
        "--virtual-time-budget=20000",
    ]


def test_the_resources_pages_show_the_configuration_and_no_secret(
    demo_ui: tuple[str, dict[str, str]],
) -> None:
    browser = _chromium()
    url, env = demo_ui
    home = Path(env["VOXL_HOME"])
    common = _browser_command(browser, "1700,1250")
    pages = {}
    for name in ("vna", "stores", "hashing", "destinations", "voxl_db"):
        dom = subprocess.run(
            [*common, "--dump-dom", f"{url}/{RESOURCES_PAGE}/{name}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        pages[name] = dom.stdout
    # Set in the environment: shown by the variable's name; defaults: shown as values.
    assert "VOXL_VNA_HOST" in pages["vna"] and VNA_HOST not in pages["vna"]
    assert "c-get" in pages["vna"] and "VnaResource" in pages["vna"]
    assert str(home / "raw-cache") in pages["stores"]
    assert str(home / "anon-store") in pages["stores"]
    assert "ProjectDestinationsResource" in pages["destinations"]
    assert str(home) in pages["destinations"]
    assert f"sqlite:///{home / 'voxl.db'}" in pages["voxl_db"]
    # The secret: named, never shown.
    assert "VOXL_HASHING_KEY" in pages["hashing"]
    assert not [name for name, dom in pages.items() if HASHING_KEY in dom]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "dagster-ui-resources-vna.png"
    screenshot.unlink(missing_ok=True)
    page = f"{url}/{RESOURCES_PAGE}/vna"
    subprocess.run([*common, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
