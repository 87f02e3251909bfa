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
