"""The distributed deployment's configuration: the Celery executor is chosen by VOXL_EXECUTOR (the
multiprocess default stays), steps carry their queue, the instance file switches on the queued
coordinator, run monitoring and run retries, and a run notices a step whose worker died."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from voxl_assets import settings
from voxl_assets.distributed import (
    EXTRACTS_QUEUE,
    IMAGING_QUEUE,
    QUEUE_TAG,
    WatchedResult,
    WorkerLost,
    executor_from_environment,
    executor_name,
)

DISTRIBUTED = settings.REPO_ROOT / "deployments" / "distributed"


def test_the_executor_is_chosen_by_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXL_EXECUTOR", raising=False)
    assert executor_name() == "multiprocess" and executor_from_environment() is None
    monkeypatch.setenv("VOXL_EXECUTOR", "celery")
    monkeypatch.setenv("VOXL_CELERY_BROKER_URL", "pyamqp://guest:guest@10.0.0.9:5672//")
    executor = executor_from_environment()
    assert executor.name == "voxl_celery"
    monkeypatch.setenv("VOXL_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="VOXL_EXECUTOR must be celery or multiprocess"):
        executor_name()


def test_steps_are_routed_to_the_hosts_that_can_do_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXL_EXECUTOR", "celery")
    from voxl_assets.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "voxl_celery"
    queues = {
        node.name: node.definition.tags.get(QUEUE_TAG) for node in job.graph.node_dict.values()
    }
    assert queues["study_pipeline"] == IMAGING_QUEUE
    assert queues["cohort_messages"] == EXTRACTS_QUEUE
    assert queues["mapping_table"] == queues["ehr_bundle"] == EXTRACTS_QUEUE


def test_the_distributed_instance_retries_runs_without_a_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOST", "PORT", "DB", "USER", "PASSWORD"):
        monkeypatch.setenv(f"VOXL_DAGSTER_PG_{name}", "5432" if name == "PORT" else "x")
    (tmp_path / "dagster.yaml").write_text((DISTRIBUTED / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # raises on anything Dagster rejects
    assert config["event_log_storage"]["class"] == "PooledPostgresEventLogStorage"
    assert config["run_storage"]["class"] == "PostgresRunStorage"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is True and config["run_retries"]["max_retries"] >= 1
    raw = yaml.safe_load((DISTRIBUTED / "dagster.yaml").read_text())
    # The password only ever from the environment, for each storage.
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert raw[storage]["config"]["postgres_db"]["password"] == {
            "env": "VOXL_DAGSTER_PG_PASSWORD"
        }


class _Result:
    def __init__(self, state: str, hostname: str = "imaging-2@host") -> None:
        self.state = state
        self.info: Any = {"hostname": hostname, "pid": 1} if state == "STARTED" else None
        self.task_id = "t1"

    def ready(self) -> bool:
        return self.state in ("SUCCESS", "FAILURE")

    def get(self) -> list[str]:
        return ["events"]


class _Control:
    def __init__(self) -> None:
        self.answering = True
        self.pinged: list[list[str]] = []

    def ping(self, destination: list[str], timeout: float) -> list[dict[str, Any]]:
        self.pinged.append(destination)
        return [{destination[0]: {"ok": "pong"}}] if self.answering else []


class _App:
    def __init__(self) -> None:
        self.control = _Control()


def test_a_step_whose_worker_stops_answering_fails_as_lost() -> None:
    now = [0.0]
    app = _App()
    result = _Result("STARTED")
    watched = WatchedResult(result, app, lost_after=20, check_every=5, clock=lambda: now[0])
    for _ in range(4):  # a long step on a live worker: never lost
        now[0] += 5
        assert not watched.ready()
    assert app.control.pinged[-1] == ["imaging-2@host"]
    app.control.answering = False
    now[0] += 5
    assert not watched.ready()  # silent once: not yet lost
    now[0] += 19
    assert not watched.ready()
    now[0] += 5
    assert watched.ready() and watched.lost and "imaging-2@host" in watched.lost
    with pytest.raises(WorkerLost, match="stopped answering"):
        watched.get()


def test_a_queued_or_finished_step_is_not_pinged() -> None:
    now = [0.0]
    app = _App()
    queued = WatchedResult(_Result("PENDING"), app, lost_after=1, clock=lambda: now[0])
    now[0] += 100
    assert not queued.ready() and app.control.pinged == []
    done = WatchedResult(_Result("SUCCESS"), app, lost_after=1, clock=lambda: now[0])
    assert done.ready() and done.get() == ["events"]
