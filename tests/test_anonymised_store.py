"""The anonymised store keeps a study only until it is delivered (or for the configured
retention after), and stays within its size bound: delivered studies leave first, then the
oldest undelivered ones (an upload anonymises those again)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from dagster import build_resources

from resources.imaging import StoresResource
from tests.helpers.races import folders_deleted_by_another_once_listed
from voxl_assets.deid.store import AnonymisedStore


def _write(store: AnonymisedStore, study_id: int, size: int = 1000, project: str = "p") -> None:
    with store.writing(project, study_id) as staging:
        (staging / "series").mkdir()
        (staging / "series" / "1.dcm").write_bytes(b"x" * size)


def _held(store: AnonymisedStore) -> list[int]:
    on_disk = sorted(int(p.name) for p in store.root.glob("*/*") if p.is_dir())
    assert on_disk == [study_id for _project, study_id in store.studies()]
    return on_disk


def test_a_delivered_study_leaves_at_once_by_default(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon")
    _write(store, 1)
    _write(store, 2)
    assert store.files("p", 1) and store.used_bytes() == 2000
    store.delivered("p", 1)
    assert store.files("p", 1) is None
    assert _held(store) == [2]
    assert store.used_bytes() == 1000
    store.delivered("p", 2)
    assert _held(store) == []


def test_a_delivered_study_is_kept_for_the_retention_then_removed(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon", retention_hours=2)
    _write(store, 1)
    _write(store, 2)
    now = time.time()
    store.delivered("p", 1, now=now)
    assert _held(store) == [1, 2]
    assert store.expire(now=now + 3600) == 0
    assert store.expire(now=now + 2 * 3600 + 1) == 1
    assert _held(store) == [2]
    # A later delivery removes what has passed its retention meanwhile.
    _write(store, 3)
    store.delivered("p", 2, now=now)
    store.delivered("p", 3, now=now + 3 * 3600)
    assert _held(store) == [3]


def test_the_bound_evicts_delivered_studies_first_then_the_oldest(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon", max_bytes=3000, retention_hours=24)
    for study_id in (1, 2, 3):
        _write(store, study_id)
    store.delivered("p", 2)
    _write(store, 4)  # needs room: the delivered study goes, not the older undelivered one
    assert _held(store) == [1, 3, 4]
    _write(store, 5)  # nothing delivered left: the oldest undelivered goes
    assert _held(store) == [3, 4, 5]
    assert store.used_bytes() <= 3000
    _write(store, 6, size=5000)  # larger than the bound: written alone, it leaves once delivered
    assert _held(store) == [6]


def test_rewriting_a_study_replaces_it_and_makes_it_undelivered(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon", retention_hours=1)
    _write(store, 1)
    store.delivered("p", 1)
    _write(store, 1, size=10)
    assert store.used_bytes() == 10
    assert store.expire(now=time.time() + 7200) == 0  # undelivered again: kept


def test_folders_from_before_the_index_are_adopted_and_bounded(tmp_path: Path) -> None:
    root = tmp_path / "anon"
    for study_id in (7, 8):
        folder = root / "p" / str(study_id) / "series"
        folder.mkdir(parents=True)
        (folder / "1.dcm").write_bytes(b"x" * 1000)
    os.utime(root / "p" / "7", (1, 1))  # the older one
    store = AnonymisedStore(root, max_bytes=2500)
    assert _held(store) == [7, 8] and store.used_bytes() == 2000
    _write(store, 9)
    assert _held(store) == [8, 9]
    # A folder removed behind the store's back is forgotten by the next process.
    (root / "p" / "8" / "series" / "1.dcm").unlink()
    (root / "p" / "8" / "series").rmdir()
    (root / "p" / "8").rmdir()
    assert _held(AnonymisedStore(root)) == [9]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon")
    with pytest.raises(RuntimeError), store.writing("p", 1) as staging:
        (staging / "half.dcm").write_bytes(b"x")
        raise RuntimeError("the engine stopped")
    assert _held(store) == [] and store.used_bytes() == 0


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size bound"):
        AnonymisedStore(tmp_path / "a", max_bytes=0)
    with pytest.raises(ValueError, match="retention"):
        AnonymisedStore(tmp_path / "b", retention_hours=-1)


def test_the_resource_passes_retention_and_bound(tmp_path: Path) -> None:
    resource = StoresResource(
        raw_cache_dir=str(tmp_path / "raw"),
        anonymised_dir=str(tmp_path / "anon"),
        export_dir=str(tmp_path / "exports"),
        anonymised_max_bytes=12345,
        anonymised_retention_hours=6,
    )
    with build_resources({"stores": resource}) as resources:
        store = resources.stores.anonymised()
    assert (store.max_bytes, store.retention_hours) == (12345, 6)
    assert (
        StoresResource(
            raw_cache_dir="r", anonymised_dir="a", export_dir="e"
        ).anonymised_retention_hours
        == 0
    )


def test_a_removed_study_leaves_the_disk_and_the_index(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon")
    _write(store, 1)
    _write(store, 2)
    store.remove("p", 1)
    assert store.files("p", 1) is None and _held(store) == [2]
    assert store.used_bytes() == 1000
    assert list((store.root / ".trash").iterdir()) == []  # deleted, not only moved aside
    store.remove("p", 7)  # never written: nothing to do
    assert _held(store) == [2]


def test_staging_left_by_a_killed_run_is_cleaned(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon")
    assert store.clean_staging() == 0  # no staging folder yet
    for name in ("p-1-aaaaaaaa", "p-2-bbbbbbbb"):
        (store.root / ".staging" / name / "series").mkdir(parents=True)
        (store.root / ".staging" / name / "series" / "1.dcm").write_bytes(b"x")
    assert store.clean_staging() == 2
    assert list((store.root / ".staging").iterdir()) == []
    assert store.clean_staging() == 0


def test_the_default_bound_is_the_documented_50_gib(tmp_path: Path) -> None:
    """README: VOXL_ANON_STORE_MAX_BYTES defaults to 50 GiB."""
    assert AnonymisedStore(tmp_path / "anon").max_bytes == 50 * 1024**3
    resource = StoresResource(raw_cache_dir="r", anonymised_dir="a", export_dir="e")
    assert resource.anonymised_max_bytes == 50 * 1024**3


def test_a_store_of_one_byte_and_a_root_whose_parents_are_missing(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "not" / "made" / "yet", max_bytes=1)
    assert store.root.is_dir() and store.max_bytes == 1
    _write(store, 1, size=10)  # larger than the bound: written alone
    _write(store, 2, size=10)
    assert _held(store) == [2]


def test_trash_left_by_a_killed_process_is_emptied_at_start_up(tmp_path: Path) -> None:
    root = tmp_path / "anon"
    left = root / ".trash" / "p-1-deadbeef" / "series"
    left.mkdir(parents=True)
    (left / "1.dcm").write_bytes(b"x" * 100)
    AnonymisedStore(root)
    assert list((root / ".trash").iterdir()) == []


def _write_failing(
    store: AnonymisedStore,
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    error: Exception,
) -> None:
    """Write study 2 while ``owner.name`` raises ``error``, which must reach the caller."""

    def broken(*_args: object) -> None:
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, broken)
        with pytest.raises(type(error), match=str(error)):
            _write(store, 2)


def test_a_failed_rename_into_place_keeps_the_index_true_to_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename into place fails after the eviction was done: the evicted study's row leaves
    with its folder (the index never counts a study it no longer holds), the failed study is not
    recorded, the index's connection is left with no transaction open, the staging folder is
    removed and the next write works."""
    import voxl_assets.deid.store as store_module

    store = AnonymisedStore(tmp_path / "anon", max_bytes=1500)
    _write(store, 1)

    _write_failing(store, monkeypatch, store_module, "replace_tree", OSError("disk full"))
    assert list((store.root / ".staging").iterdir()) == []
    assert _held(store) == [] and store.used_bytes() == 0
    _write(store, 3, size=500)
    _write(store, 4, size=500)
    assert _held(store) == [3, 4] and store.used_bytes() == 1000
    assert _held(AnonymisedStore(store.root, max_bytes=1500)) == [3, 4]


def test_a_failure_inside_the_index_transaction_rolls_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving an evicted study aside fails: nothing the transaction did stays (the study is
    still indexed and on disk), its connection is left with no transaction open and the next
    write works."""
    store = AnonymisedStore(tmp_path / "anon", max_bytes=1500)
    _write(store, 1)

    _write_failing(store, monkeypatch, store, "_discard", PermissionError("read-only trash"))
    assert _held(store) == [1] and store.used_bytes() == 1000
    _write(store, 3, size=500)
    assert _held(store) == [1, 3]


def test_rewriting_the_oldest_study_still_evicts_the_others(tmp_path: Path) -> None:
    """The study being rewritten is skipped by the eviction, not the end of it."""
    store = AnonymisedStore(tmp_path / "anon", max_bytes=3000)
    for study_id in (1, 2, 3):
        _write(store, study_id)
    _write(store, 1, size=2500)  # the oldest, first in eviction order: 2 and 3 must go
    assert _held(store) == [1] and store.used_bytes() == 2500


def test_only_numbered_study_folders_are_adopted(tmp_path: Path) -> None:
    """Other entries of a project folder (a stray file, a folder not named by a study id, a
    file named like one) are skipped, and do not stop the adoption of the studies after them
    (many of each, so that some come first whatever order the file system lists them in)."""
    project = tmp_path / "anon" / "p"
    project.mkdir(parents=True)
    for number in range(1, 21):
        (project / str(number)).mkdir()
        (project / str(number) / "1.dcm").write_bytes(b"x" * 10)
        (project / f"notes-{number}").mkdir()
        (project / f"stray-{number}.txt").write_bytes(b"x")
        (project / str(100 + number)).write_bytes(b"x")  # a file, not a study folder
    store = AnonymisedStore(tmp_path / "anon")
    assert store.studies() == [("p", number) for number in range(1, 21)]
    assert store.used_bytes() == 200


def test_a_retention_of_one_hour_keeps_a_delivered_study_for_that_hour(tmp_path: Path) -> None:
    store = AnonymisedStore(tmp_path / "anon", retention_hours=1)
    _write(store, 1)
    now = time.time()
    store.delivered("p", 1, now=now)
    assert _held(store) == [1]
    assert store.expire(now=now + 3599) == 0
    assert store.expire(now=now + 3600) == 1 and _held(store) == []


def test_two_processes_emptying_the_same_folders_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes may empty the same trash or clean the same staging folder at once; the
    one that finds a folder already deleted by the other goes on. Staged here: each folder is
    deleted by the "other process" between being listed and being removed."""
    store = AnonymisedStore(tmp_path / "anon")
    for name in (".trash", ".staging"):
        for folder in ("p-1-aaaaaaaa", "p-2-bbbbbbbb"):
            (store.root / name / folder / "series").mkdir(parents=True)
            (store.root / name / folder / "series" / "1.dcm").write_bytes(b"x")
    folders_deleted_by_another_once_listed(monkeypatch)
    _write(store, 1)  # empties the trash after the write
    assert store.clean_staging() == 2
    monkeypatch.undo()
    assert list((store.root / ".staging").iterdir()) == []
    assert list((store.root / ".trash").iterdir()) == []
