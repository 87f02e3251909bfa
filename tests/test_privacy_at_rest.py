"""Privacy class 10, at rest: VOXL's home, caches, stores and databases are 0700 (folders) and
0600 (files) whatever the umask it was started with. A real demo run through the `voxl` command
is checked path by path; the explicit modes are checked without the entry points too, so a process
that skipped them (an operator's own dagster-webserver, a script) still exposes nothing."""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir, make_private_file, restrict_umask

REPO = settings.REPO_ROOT


def _exposed(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that is not a 0700 folder or a 0600 file."""
    exposed = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_ISLNK(mode):
            exposed.append(f"{path} (symbolic link)")
        elif stat.S_IMODE(mode) != expected:
            exposed.append(f"{path} {stat.S_IMODE(mode):04o}")
    return exposed


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXL_", "DAGSTER_"))}
    env["VOXL_HOME"] = str(home)
    return env


@pytest.fixture
def umask_of(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test's own code under a given umask (restored afterwards)."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.slow
def test_a_demo_run_leaves_nothing_another_account_can_read(tmp_path: Path) -> None:
    """The demo under the usual umask and under none at all, run side by side (each is mostly
    Dagster start-up, so together they take little longer than one)."""
    umasks = {"usual": 0o022, "none": 0o000}
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "voxl_assets.cli", "demo", "--no-ui", "--studies", "3"],
            cwd=REPO,
            env=_environment(tmp_path / name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=functools.partial(os.umask, umask),  # the umask it is started with
        )
        for name, umask in umasks.items()
    }
    for name, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
        home = tmp_path / name
        # What the run must have written, so the check below is not vacuous.
        for made in [
            "voxl.db",
            "secrets/hashing-key",
            "raw-cache/index.sqlite",
            "raw-cache/studies",
            "anon-store",
            "exports/test-extract-uclh-omop-cdm",
            "delivered/images/test-extract-uclh-omop-cdm",
            "delivered/ehr/test-extract-uclh-omop-cdm",
            "dagster/dagster.yaml",
            "dagster/history/runs.db",
            "dagster/logs",
        ]:
            assert (home / made).exists(), (name, made)
        assert len(list(home.rglob("*.dcm"))) > 0 and len(list(home.rglob("*.zip"))) > 0
        assert _exposed(home) == [], name


def test_the_code_location_restricts_the_umask_of_every_dagster_process() -> None:
    """Code servers, run workers and Celery step workers all load the definitions module before
    they write anything (reloaded here, as a fresh process would load it)."""
    import importlib

    import voxl_assets.definitions

    previous = os.umask(0o002)
    try:
        importlib.reload(voxl_assets.definitions)
        assert os.umask(0o002) == 0o077
    finally:
        os.umask(previous)


@given(umask=st.integers(0, 0o777))
def test_restrict_umask_only_ever_adds_group_and_other_bits(umask: int) -> None:
    previous = os.umask(umask)
    try:
        assert restrict_umask() == umask
        assert os.umask(umask) == umask | 0o077
    finally:
        os.umask(previous)


# --- explicit modes, without the entry points ------------------------------------------------


@pytest.mark.parametrize("umask_of", [0o022, 0o000], indirect=True, ids=["umask-022", "umask-000"])
def test_voxl_creates_its_roots_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_of: int
) -> None:
    from resources.imaging import StoresResource
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.db import VoxlDatabase
    from voxl_assets.demo.run import _hashing_key
    from voxl_assets.project_config import LocalDirectoryDestination
    from voxl_assets.upload.factory import make_file_uploader

    home = tmp_path / "a" / "voxl-home"
    for name in list(os.environ):
        if name.startswith(("VOXL_", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VOXL_HOME", str(home))
    dagster_home = ensure_dagster_home()
    database = VoxlDatabase()  # migrated: written, its write-ahead log open
    stores = StoresResource(
        raw_cache_dir=str(tmp_path / "b" / "cache"),  # outside the home
        anonymised_dir=str(home / "anon-store"),
        export_dir=str(home / "exports"),
    )
    stores.raw_cache()
    stores.anonymised()
    stores.exports()
    make_file_uploader(LocalDirectoryDestination(kind="local", path="delivered/ehr"))
    _hashing_key()
    private_dirs = [
        home,
        dagster_home,
        dagster_home / "logs",
        tmp_path / "b",
        tmp_path / "b" / "cache",
        home / "anon-store",
        home / "exports",
        home / "delivered",
        home / "delivered" / "ehr",
        home / "secrets",
    ]
    private_files = [
        home / "voxl.db",
        home / "voxl.db-wal",  # SQLite gives its journals the database file's mode
        home / "secrets" / "hashing-key",
        dagster_home / "dagster.yaml",
    ]
    assert [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in private_dirs] == [
        f"{p} 0700" for p in private_dirs
    ]
    assert [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in private_files] == [
        f"{p} 0600" for p in private_files
    ]
    database.dispose()


def test_an_older_home_is_closed_on_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VOXL_HOME and voxl.db made world-readable by an older VOXL are tightened when VOXL
    opens them; a folder owned by another account is left to its owner."""
    from voxl_assets.db import VoxlDatabase

    home = tmp_path / "voxl-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    database_file = home / "voxl.db"
    database_file.touch()
    os.chmod(database_file, 0o644)
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    VoxlDatabase().dispose()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(database_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "umask_of", [0o022, 0o000, 0o777], indirect=True, ids=["umask-022", "umask-000", "umask-777"]
)
def test_make_private_dir_and_file_ignore_the_umask(tmp_path: Path, umask_of: int) -> None:
    deep = make_private_dir(tmp_path / "x" / "y" / "z")
    for folder in (tmp_path / "x", tmp_path / "x" / "y", deep):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    secret = make_private_file(deep / "f")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    secret.write_text("kept")
    make_private_file(secret)  # an existing file keeps its content
    assert secret.read_text() == "kept"
