"""The VNA query rate is global: one token bucket per archive in the VOXL database, taken under a
row lock on PostgreSQL by every process (and host), read by the process-local bucket on SQLite;
an operator changes it while workers run (`voxl archives rate`), and `voxl status` shows it."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from pathlib import Path

import pytest

from resources.imaging import VnaResource
from tests.helpers.rate_worker import take_tokens
from voxl_assets.cli import main
from voxl_assets.db import VoxlDatabase
from voxl_assets.vna.client import DimseVna, StudyQuery, VnaSettings, VnaUnavailable
from voxl_assets.vna.rate import (
    LOCAL_REFRESH_SECONDS,
    LocalTokenBucket,
    SharedTokenBucket,
    archive_rates,
    register_archive_rate,
    set_archive_rate,
)

RATE = 8.0  # queries per second, shared by both processes
TOKENS_EACH = 8


def _most_in_any_second(stamps: list[float]) -> int:
    ordered = sorted(stamps)
    return max(
        sum(1 for later in ordered[i:] if later - start < 1.0) for i, start in enumerate(ordered)
    )


@pytest.mark.integration
def test_two_processes_sharing_one_bucket_stay_under_the_rate(postgres_url: str) -> None:
    VoxlDatabase(postgres_url).dispose()  # migrated once, before the workers race
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        stamps = [manager.list(), manager.list()]
        start = context.Barrier(2)
        workers = [
            context.Process(
                target=take_tokens, args=(postgres_url, RATE, TOKENS_EACH, stamps[i], start)
            )
            for i in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
        first, second = list(stamps[0]), list(stamps[1])
    assert len(first) == len(second) == TOKENS_EACH  # both processes were served
    together = sorted(first + second)
    # One token at most in the bucket: grants (on the database's clock) are 1/RATE apart, so
    # any second holds RATE of them, +1 where a second starts on a grant.
    assert _most_in_any_second(together) <= RATE + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(together)]
    assert min(gaps) >= 1 / RATE - 1e-3
    # The two took turns (slots go out in the order the row lock is taken): neither process
    # starved while the other ran at the full rate.
    owners = [0 if stamp in first else 1 for stamp in together]
    longest_streak = max(len(list(run)) for _, run in itertools.groupby(owners))
    assert longest_streak <= 2, owners


@pytest.mark.integration
def test_the_shared_rate_changes_while_a_worker_waits(postgres_url: str) -> None:
    database = VoxlDatabase(postgres_url)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    bucket = SharedTokenBucket(database, "vna", 100.0, sleep=sleep)
    set_archive_rate(database, "vna", 0.5)  # the operator slows the archive down
    bucket.acquire()
    bucket.acquire()
    assert max(waits) > 1.0  # at 0.5 per second, the second query waited ~2 s
    waits.clear()
    set_archive_rate(database, "vna", 20.0)
    for _ in range(3):
        bucket.acquire()
    assert waits and max(waits) <= 1 / 20 + 1e-6  # the new rate holds at once
    register_archive_rate(database, "vna", 3.0)  # a worker restarting with its configuration
    (rate,) = archive_rates(database)
    assert (rate.configured_qps, rate.override_qps, rate.effective_qps) == (3.0, 20.0, 20.0)
    set_archive_rate(database, "vna", None)
    assert archive_rates(database)[0].effective_qps == 3.0
    database.dispose()


def test_sqlite_keeps_the_process_bucket_at_the_recorded_rate(tmp_path: Path) -> None:
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    now = [0.0]
    bucket = LocalTokenBucket(database, "pacs", 4.0, clock=lambda: now[0])
    assert bucket.rate == 4.0
    set_archive_rate(database, "pacs", 0.5)
    bucket.acquire()
    assert bucket.rate == 4.0  # read again only every LOCAL_REFRESH_SECONDS
    now[0] += LOCAL_REFRESH_SECONDS
    bucket.acquire()
    assert bucket.rate == 0.5
    assert [r.describe() for r in archive_rates(database)] == [
        "archive pacs: 0.5 queries/s (set by `voxl archives rate`; configured 4)"
    ]
    with pytest.raises(ValueError, match="positive"):
        set_archive_rate(database, "pacs", 0)
    with pytest.raises(ValueError, match="nothing to clear"):
        set_archive_rate(database, "other", None)
    database.dispose()


def test_the_vna_resource_gives_each_archive_the_database_bucket(tmp_path: Path) -> None:
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    archives = VnaResource(queries_per_second=2.5, port=1).archives(database)
    (archive,) = list(archives)
    assert isinstance(archive.client._bucket, LocalTokenBucket)  # type: ignore[attr-defined]
    assert archive_rates(database)[0].effective_qps == 2.5
    database.dispose()


class _Counting:
    def __init__(self) -> None:
        self.taken = 0

    def acquire(self) -> float:
        self.taken += 1
        return 0.0


def test_every_association_takes_a_token_of_the_given_limiter() -> None:
    from tests.peers import free_port

    limiter = _Counting()
    closed = VnaSettings(port=free_port(), acse_timeout=2, network_timeout=2)
    with pytest.raises(VnaUnavailable):
        DimseVna(closed, limiter).find_study(StudyQuery("1.2.3", "", ""))
    assert limiter.taken == 1


@pytest.fixture
def voxl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    monkeypatch.delenv("VOXL_ARCHIVES_FILE", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home


def test_voxl_archives_rate_and_status(voxl_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["archives", "rate", "vna", "2.5"]) == 0
    assert "archive vna: 2.5 queries/s" in capsys.readouterr().out
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "query rates (global to every worker)" in out and "archive vna: 2.5 queries/s" in out
    assert main(["archives", "rate", "no-such-archive", "1"]) == 2
    assert "unknown archive 'no-such-archive'; known: vna" in capsys.readouterr().err
    assert main(["archives", "rate", "vna", "-1"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["archives", "rate", "vna"]) == 2
    assert main(["archives", "rate", "vna", "--clear"]) == 0
    assert "archive vna: 2.5 queries/s (configured)" in capsys.readouterr().out
