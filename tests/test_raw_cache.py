"""The raw cache: atomic writes, LRU eviction that spares pinned studies, restarts."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.races import folders_deleted_by_another_once_listed
from voxl_assets.vna.cache import CacheFull, RawCache, cache_key


def _write(cache: RawCache, key: str, size: int) -> None:
    with cache.writing(key) as staging:
        (staging / "000001.dcm").write_bytes(b"x" * size)


def test_a_committed_study_is_found_and_survives_a_restart(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    _write(cache, "a", 100)
    found = cache.lookup("a")
    assert found is not None and found.instances == 1 and found.bytes == 100
    again = RawCache(tmp_path, max_bytes=10_000)
    assert again.lookup("a") is not None and again.used_bytes() == 100


def test_a_failed_write_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    with pytest.raises(ConnectionError), cache.writing("a") as staging:
        (staging / "000001.dcm").write_bytes(b"partial")
        raise ConnectionError("VNA went away")
    assert cache.lookup("a") is None
    assert not any((tmp_path / ".staging").iterdir())


def test_a_killed_run_is_cleaned_up_on_restart(tmp_path: Path) -> None:
    RawCache(tmp_path, max_bytes=10_000)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    leftover = tmp_path / ".staging" / f"a-{dead.stdout.strip()}-1-deadbeef"
    leftover.mkdir()
    (leftover / "000001.dcm").write_bytes(b"half")
    legacy = tmp_path / ".staging" / "b-deadbeef"  # named before staging folders had owners
    legacy.mkdir()
    (tmp_path / ".staging" / "d-12345").mkdir()  # an old name that starts like a pid
    (tmp_path / "studies" / "orphan").mkdir()  # a folder without an index row
    running = RawCache(tmp_path, max_bytes=10_000)
    with running.writing("c") as in_flight:  # a live process's retrieval is left alone
        restarted = RawCache(tmp_path, max_bytes=10_000)
        assert in_flight.is_dir()
        (in_flight / "000001.dcm").write_bytes(b"x")
    assert restarted.lookup("c") is not None
    assert restarted.lookup("a") is None and not (tmp_path / "studies" / "orphan").exists()
    assert not leftover.exists() and not legacy.exists()
    assert not any((tmp_path / ".staging").iterdir())
    (tmp_path / ".staging" / "e-deadbeef").mkdir()  # left while this process runs
    assert restarted.clean_staging(only_dead=True) == 1
    assert restarted.clean_staging() == 0


def test_least_recently_used_unpinned_studies_are_evicted_first(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=300)
    for key in ("a", "b", "c"):
        _write(cache, key, 100)
        time.sleep(0.01)
    assert cache.lookup("a") is not None  # a is now the most recently used
    with cache.pin("b"):
        _write(cache, "d", 100)  # must evict one: b is pinned, c is the oldest unpinned
    assert cache.keys_by_age()[-1] == "d"
    assert {k for k in "abcd" if cache.lookup(k) is not None} == {"a", "b", "d"}
    assert cache.used_bytes() == 300
    # The evicted study is gone from the disk too (it is identifiable), not only from the index.
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["a", "b", "d"]
    assert not any((tmp_path / ".trash").iterdir())


def test_a_study_larger_than_the_cache_is_refused_clearly(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=50)
    with pytest.raises(CacheFull, match="larger than the whole raw cache"):
        _write(cache, "big", 100)
    assert cache.lookup("big") is None and cache.used_bytes() == 0
    assert not any((tmp_path / ".staging").iterdir())


def test_cache_keys_do_not_reveal_identifiers() -> None:
    key = cache_key(study_uid="1.2.840.99999.1")
    assert "99999" not in key and len(key) == 40
    assert cache_key(mrn="40001", accession_number="ACC1") != cache_key(
        mrn="40001", accession_number="ACC2"
    )


def test_a_cached_study_lists_its_instance_files(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    with cache.writing("a") as staging:
        for name in ("b.dcm", "a.dcm"):
            (staging / name).write_bytes(b"x")
    found = cache.lookup("a")
    assert found is not None and found.complete
    assert found.file_names() == {"a.dcm", "b.dcm"}
    assert [p.name for p in found.files()] == ["a.dcm", "b.dcm"]


def test_folders_a_crash_left_in_the_trash_are_deleted_on_restart(tmp_path: Path) -> None:
    RawCache(tmp_path, max_bytes=10_000)
    left = tmp_path / ".trash" / "evicted-1234abcd"
    left.mkdir()
    (left / "000001.dcm").write_bytes(b"identifiable")
    RawCache(tmp_path, max_bytes=10_000)
    assert not any((tmp_path / ".trash").iterdir())


def test_a_study_the_size_of_the_cache_evicts_everything_else_and_fits(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=200)
    _write(cache, "a", 100)
    _write(cache, "b", 100)
    _write(cache, "whole", 200)
    assert cache.keys_by_age() == ["whole"] and cache.used_bytes() == 200


def test_a_partial_entry_is_only_returned_when_asked_for(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    with (
        pytest.raises(ConnectionError),
        cache.writing("a", keep_partial_on=(ConnectionError,)) as s,
    ):
        (s / "1.dcm").write_bytes(b"x")
        raise ConnectionError("cut off")
    assert cache.lookup("a") is None
    partial = cache.lookup("a", partial=True)
    assert partial is not None and not partial.complete and partial.file_names() == {"1.dcm"}
    with cache.writing("a", keep_existing=True) as staging:  # the top-up starts from what arrived
        assert {p.name for p in staging.iterdir()} == {"1.dcm"}
        (staging / "2.dcm").write_bytes(b"y")
    topped = cache.lookup("a")
    assert topped is not None and topped.complete and topped.file_names() == {"1.dcm", "2.dcm"}


def test_a_fresh_write_replaces_the_cached_study(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    _write(cache, "a", 10)
    with cache.writing("a") as staging:
        assert not any(staging.iterdir())  # starts empty unless asked to keep the existing files
        (staging / "other.dcm").write_bytes(b"z")
    found = cache.lookup("a")
    assert found is not None and found.file_names() == {"other.dcm"} and found.instances == 1


def test_cleaning_all_staging_removes_live_retrievals_too(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    with pytest.raises(FileNotFoundError), cache.writing("a") as staging:
        assert cache.clean_staging() == 1  # only when no retrieval runs: this one is lost
        (staging / "1.dcm").write_bytes(b"x")


def test_a_study_whose_folder_vanished_is_a_miss(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    _write(cache, "a", 10)
    shutil.rmtree(tmp_path / "studies" / "a")  # removed behind the cache's back
    assert cache.lookup("a") is None and cache.lookup("a", partial=True) is None
    restarted = RawCache(tmp_path, max_bytes=10_000)  # its row is dropped: no bytes held
    assert restarted.used_bytes() == 0 and restarted.keys_by_age() == []


def test_an_interrupted_transfer_that_brought_nothing_leaves_nothing(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=10_000)
    with pytest.raises(ConnectionError), cache.writing("a", keep_partial_on=(ConnectionError,)):
        raise ConnectionError("refused before the first instance")
    assert cache.lookup("a", partial=True) is None
    assert not any((tmp_path / ".staging").iterdir())


def test_a_study_that_cannot_make_room_leaves_no_staging(tmp_path: Path) -> None:
    cache = RawCache(tmp_path, max_bytes=200)
    _write(cache, "held", 150)
    with cache.pin("held"), pytest.raises(CacheFull, match="held by running work"):
        _write(cache, "new", 100)
    assert not any((tmp_path / ".staging").iterdir())
    assert cache.keys_by_age() == ["held"]


def test_two_processes_emptying_the_same_folders_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting at once both empty the trash and clean dead retrievals' staging;
    the one that finds a folder already deleted by the other goes on. Staged here: each folder
    is deleted by the "other process" between being listed and being removed."""
    RawCache(tmp_path, max_bytes=10_000)
    for folder in (tmp_path / ".trash" / "evicted-1234abcd", tmp_path / ".staging" / "a-b-c"):
        folder.mkdir()
        (folder / "000001.dcm").write_bytes(b"identifiable")
    folders_deleted_by_another_once_listed(monkeypatch)
    cache = RawCache(tmp_path, max_bytes=10_000)
    assert cache.clean_staging() == 0
    monkeypatch.undo()
    assert not any((tmp_path / ".trash").iterdir())
    assert not any((tmp_path / ".staging").iterdir())


def test_an_index_connection_is_kept_per_thread_and_process_and_set_up_for_wal(
    tmp_path: Path,
) -> None:
    """One connection per thread, reused (one per lookup cost more than the lookup); a forked
    child opens its own rather than sharing its parent's; WAL with synchronous=NORMAL."""
    import os
    import threading

    from voxl_assets.vna.cache import index_connection

    connections = threading.local()
    first = index_connection(connections, tmp_path / "index.sqlite")
    assert index_connection(connections, tmp_path / "index.sqlite") is first
    assert first.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert first.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got its parent's connection, then leave
        try:
            renewed = index_connection(connections, tmp_path / "index.sqlite") is not first
            os.write(write, b"renewed" if renewed else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.waitpid(pid, 0)
    assert answer == b"renewed"


def test_a_process_start_is_read_from_its_proc_stat() -> None:
    """The start (clock ticks since boot) of a process started now is about now's uptime: the
    field read is the start time, not a neighbour (the virtual memory size)."""
    import os

    from voxl_assets.vna.cache import process_start

    child = subprocess.Popen(["sleep", "5"])
    try:
        started = process_start(child.pid)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        assert abs(int(started) / ticks_per_second - uptime) < 5
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) == ""  # gone


def test_eviction_reads_the_oldest_a_batch_at_a_time_passing_over_pinned_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of two: the three oldest are pinned (one batch and a half passed over), the next
    three are evicted, oldest first, until the new study fits; the newer ones stay."""
    from voxl_assets.vna import cache as cache_module

    monkeypatch.setattr(cache_module, "EVICTION_BATCH", 2)
    cache = RawCache(tmp_path, max_bytes=1000)
    keys = [f"s{n}" for n in range(10)]
    for key in keys:
        _write(cache, key, 100)
        time.sleep(0.002)  # distinct last-used times: the order is by age
    with cache.pin("s0", "s1", "s2"):
        _write(cache, "new", 300)
    assert cache.keys_by_age() == ["s0", "s1", "s2", "s6", "s7", "s8", "s9", "new"]
    assert cache.used_bytes() == 1000
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == sorted(cache.keys_by_age())
    with cache.pin(*cache.keys_by_age()), pytest.raises(CacheFull):
        _write(cache, "too-much", 100)  # every study pinned: nothing can go
