"""The raw cache shared by several processes, as Dagster runs share it: a study one process reads
is not evicted by another; a process starting up does not forget a study another has just moved
into place; a process that died holds nothing. Each test runs a second, real Python process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.projects import write_project
from voxl_assets import settings
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.deid.hashing import LocalHashing, SaltStore
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.imaging import stages as stages_module
from voxl_assets.imaging.pipeline import StageOutcome, StageResult
from voxl_assets.imaging.stages import StudyStages
from voxl_assets.project_config import ProjectRegistry
from voxl_assets.study_state import StudyRequest
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna import cache as cache_module
from voxl_assets.vna.archives import ArchiveSet
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.raw import request_cache_keys

SLUG = "cache-test"


def _other_process(script: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``script`` in a new Python process (the repository importable), stdout captured."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=settings.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _write_bytes_study(cache_root: Path, max_bytes: int, key: str, size: int) -> str:
    """In another process: commit a ``size``-byte study; prints 'stored' or 'full'."""
    script = f"""
        from pathlib import Path
        from voxl_assets.vna.cache import CacheFull, RawCache
        cache = RawCache(Path({str(cache_root)!r}), {max_bytes})
        try:
            with cache.writing({key!r}) as staging:
                (staging / "big.bin").write_bytes(b"x" * {size})
            print("stored")
        except CacheFull:
            print("full")
    """
    process = _other_process(script)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.strip()


class NeverAsked:
    """An archive that must not be contacted: the study is a cache hit."""

    def find_study(self, query: Any) -> Any:
        raise AssertionError("the archive was asked for a cached study")

    def close(self) -> None:
        pass


def test_a_study_read_by_one_process_is_not_evicted_by_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_dir = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations",
        registry_dir / "tag-operations",
    )
    write_project(registry_dir, SLUG, name="Cache Test", modalities=("CT",))
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    spec = StudySpec(patient_id="MRN-CACHE", accession_number="ACC-CACHE", series=[SeriesSpec(3)])
    with database.session() as session:
        session.add(
            Study(
                id=1, project=SLUG, mrn=spec.patient_id, study_uid=spec.study_uid, status="queued"
            )
        )
    request = StudyRequest(
        1, SLUG, spec.patient_id, "", spec.study_uid, "", None, StudyStatus.RETRIEVED, None
    )
    cache_root = tmp_path / "cache"
    files = write_study(spec, tmp_path / "source")
    study_bytes = sum(p.stat().st_size for p in files)
    max_bytes = study_bytes + study_bytes // 2  # room for this study, not for one more of its size
    cache = RawCache(cache_root, max_bytes)
    with cache.writing(request_cache_keys(request)[0]) as staging:
        for path in files:
            (staging / path.name).write_bytes(path.read_bytes())
    stages = StudyStages(
        database=database,
        registry=ProjectRegistry.load(registry_dir),
        hashing=LocalHashing("cache-test-key-0123456789abcdef", SaltStore(database)),
        archives=ArchiveSet.single(NeverAsked()),  # type: ignore[arg-type]
        raw_cache=cache,
        anonymised=AnonymisedStore(tmp_path / "anon"),
    )

    # While this process de-identifies the study, another run (process) needs the room.
    real_anonymise = stages_module.anonymise_study
    other: list[str] = []

    def anonymise_while_another_process_stores(*args: Any, **kwargs: Any) -> Any:
        other.append(_write_bytes_study(cache_root, max_bytes, "other-run", study_bytes))
        return real_anonymise(*args, **kwargs)

    monkeypatch.setattr(stages_module, "anonymise_study", anonymise_while_another_process_stores)
    outcome = stages.anonymise(request, {})
    assert isinstance(outcome, StageOutcome)
    assert other == ["full"], "the other process evicted a study this one was reading"
    assert outcome.result is StageResult.DONE, outcome.reason
    assert outcome.metadata["instances_out"] == 3
    assert len(stages.anonymised.files(SLUG, 1) or []) == 3
    # Once the read is over, the other process may evict it.
    assert _write_bytes_study(cache_root, max_bytes, "other-run", study_bytes) == "stored"
    assert cache.lookup(request_cache_keys(request)[0]) is None


def test_a_process_starting_up_keeps_a_study_another_is_moving_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = RawCache(tmp_path, 10**6)
    starter = _other_process(
        f"""
        from pathlib import Path
        from voxl_assets.vna.cache import RawCache
        print("starting", flush=True)
        RawCache(Path({str(tmp_path)!r}), 10**6)
        print("started", flush=True)
        """
    )
    real_replace = os.replace
    started: list[bool] = []

    def replace_then_let_the_other_start(source: Any, target: Any) -> None:
        real_replace(source, target)
        if Path(source).parent.name == ".staging" and not started:
            # The study is in place; a process starts up now (it may wait for the index).
            assert starter.stdout is not None
            assert starter.stdout.readline().strip() == "starting"
            deadline = time.monotonic() + 1.5
            while starter.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            started.append(True)

    monkeypatch.setattr(cache_module.os, "replace", replace_then_let_the_other_start)
    with cache.writing("moved") as staging:
        (staging / "000001.dcm").write_bytes(b"instance")
    monkeypatch.setattr(cache_module.os, "replace", real_replace)
    out, err = starter.communicate(timeout=60)
    assert starter.returncode == 0 and "started" in out, err
    found = cache.lookup("moved")
    assert found is not None and [p.name for p in found.files()] == ["000001.dcm"]


def test_a_pin_holds_across_processes_until_its_process_ends_or_dies(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, 300)
    for key in ("a", "b"):
        with cache.writing(key) as staging:
            (staging / "000001.dcm").write_bytes(b"x" * 100)
    pinner = _other_process(
        f"""
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as usual, whatever the runner set
        from voxl_assets.vna.cache import RawCache
        cache = RawCache(Path({str(tmp_path)!r}), 300)
        with cache.pin("a", "b"):
            print("pinned", flush=True)
            sys.stdin.readline()
        """,
        stdin=subprocess.PIPE,
    )
    assert pinner.stdout is not None and pinner.stdin is not None
    assert pinner.stdout.readline().strip() == "pinned"
    assert cache.pinned_keys() == {"a", "b"}
    with (
        pytest.raises(cache_module.CacheFull, match="held by running work"),
        cache.writing("c") as staging,
    ):
        (staging / "000001.dcm").write_bytes(b"x" * 200)
    assert cache.lookup("a") is not None and cache.lookup("b") is not None
    assert pinner.poll() is None  # asking whether it lives must not harm it
    pinner.send_signal(signal.SIGKILL)  # dies holding its pins
    pinner.wait()
    assert cache.pinned_keys() == set()
    with cache.writing("c") as staging:
        (staging / "000001.dcm").write_bytes(b"x" * 200)
    assert cache.lookup("c") is not None and cache.used_bytes() <= 300


def test_pins_of_this_process_are_released_on_exit_and_on_error(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, 10**6)
    with cache.pin("a"), cache.pin("a", "b"):
        assert cache.pinned_keys() == {"a", "b"}
    assert cache.pinned_keys() == set()
    with pytest.raises(RuntimeError), cache.pin("a"):
        raise RuntimeError("the read failed")
    assert cache.pinned_keys() == set()


def test_a_dead_process_or_a_reused_pid_holds_nothing() -> None:
    own = os.getpid()
    assert cache_module.process_alive(own, cache_module.process_start(own))
    assert not cache_module.process_alive(own, "0")  # this pid, another start: a reused pid
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = cache_module.process_start(child.pid)
        assert started and cache_module.process_alive(child.pid, started)
        assert not cache_module.process_alive(child.pid, "0")  # its pid, another start
    finally:
        child.kill()
        child.wait()
    assert not cache_module.process_alive(child.pid, started)
