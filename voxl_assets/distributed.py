"""Runs spread over several hosts: Dagster's Celery executor (dagster-celery) on RabbitMQ.

Chosen by configuration: ``VOXL_EXECUTOR=celery`` makes every run's steps Celery tasks, taken by
workers on any host (``celery -A voxl_assets.celery_worker worker -Q QUEUES``); unset, runs keep
Dagster's multiprocess executor on the machine that launches them. Queues route the work to the
hosts that can do it: imaging steps (retrieval from the archive, de-identification, upload) to
``voxl-imaging``, served by the workers that reach the archive; extract steps (cohort ingestion,
mapping table, EHR bundle) to ``voxl-extracts``, served by the host that holds the extracts.

A worker host that dies takes its running step with it, and Celery never tells the run (the task
was acknowledged when it started, so it is not redelivered either). The run therefore watches its
steps: a step whose worker stops answering Celery's ping for ``VOXL_CELERY_WORKER_LOST_SECONDS``
is failed as lost, the run fails, and the daemon's run retries (``run_retries`` in
``deployments/distributed/dagster.yaml``) start it again on the workers that are left: studies
already uploaded are skipped, the others done, none twice (``voxl_assets/upload/exactly_once.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

EXECUTOR_VARIABLE = "VOXL_EXECUTOR"
BROKER_VARIABLE = "VOXL_CELERY_BROKER_URL"
LOST_AFTER_VARIABLE = "VOXL_CELERY_WORKER_LOST_SECONDS"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
DEFAULT_LOST_AFTER_SECONDS = 60.0

QUEUE_TAG = "dagster-celery/queue"  # dagster-celery's step tag naming the queue
IMAGING_QUEUE = "voxl-imaging"
EXTRACTS_QUEUE = "voxl-extracts"

# Celery settings shared by the runs (which send) and the workers (which take): a task's state
# says STARTED and on which worker, so a run can tell a long step from a dead worker.
CELERY_SETTINGS: dict[str, Any] = {
    "task_track_started": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
    "worker_send_task_events": False,
}

log = logging.getLogger(__name__)


def imaging_tags() -> dict[str, str]:
    """Op tags of the imaging steps (they run where the archive can be reached)."""
    return {QUEUE_TAG: IMAGING_QUEUE}


def extracts_tags() -> dict[str, str]:
    """Op tags of the extract steps (they run on the host that holds the extracts)."""
    return {QUEUE_TAG: EXTRACTS_QUEUE}


def executor_name() -> str:
    """``celery`` or ``multiprocess`` (the default), from ``VOXL_EXECUTOR``.

    Raises:
        ValueError: ``VOXL_EXECUTOR`` names something else.
    """
    name = (os.environ.get(EXECUTOR_VARIABLE) or "multiprocess").strip().lower()
    if name not in ("celery", "multiprocess"):
        raise ValueError(f"{EXECUTOR_VARIABLE} must be celery or multiprocess (got {name!r})")
    return name


def broker_url() -> str:
    return os.environ.get(BROKER_VARIABLE) or DEFAULT_BROKER


def lost_after_seconds() -> float:
    value = os.environ.get(LOST_AFTER_VARIABLE)
    return float(value) if value else DEFAULT_LOST_AFTER_SECONDS


def executor_from_environment() -> Any:
    """The executor of every VOXL run: None (Dagster's default) unless ``VOXL_EXECUTOR=celery``."""
    if executor_name() != "celery":
        return None
    return voxl_celery_executor()


def voxl_celery_executor() -> Any:
    """dagster-celery's executor, watching its steps' workers (see the module's docstring)."""
    from dagster import executor
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

    class WatchedCeleryExecutor(CeleryExecutor):
        def __init__(self, *, lost_after: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.lost_after = lost_after

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            from dagster_celery.core_execution_loop import core_celery_execution_loop

            def submit(app: Any, *args: Any) -> WatchedResult:
                return WatchedResult(_submit_task(app, *args), app, self.lost_after)

            return core_celery_execution_loop(
                plan_context, execution_plan, step_execution_fn=submit
            )

    @executor(name="voxl_celery", config_schema=CELERY_CONFIG)
    def _voxl_celery(init_context: Any) -> WatchedCeleryExecutor:
        config = init_context.executor_config
        return WatchedCeleryExecutor(
            lost_after=lost_after_seconds(),
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            retries=RetryMode.from_config(config["retries"]),
        )

    return _voxl_celery.configured(
        {"broker": broker_url(), "backend": "rpc://", "config_source": dict(CELERY_SETTINGS)}
    )


class WorkerLost(Exception):
    """The Celery worker running a step stopped answering: the step is failed so the run fails
    and is retried by the daemon."""


class WatchedResult:
    """A step's Celery result that also notices when the worker running it has gone: while the
    task is STARTED, the worker named in its state is pinged every ``check_every`` seconds, and a
    worker silent for ``lost_after`` seconds makes the step ready, and failed."""

    def __init__(
        self,
        result: Any,
        app: Any,
        lost_after: float,
        *,
        check_every: float = 5.0,
        ping_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._result = result
        self._app = app
        self._lost_after = lost_after
        self._check_every = check_every
        self._ping_timeout = ping_timeout
        self._clock = clock
        self._checked = clock()
        self._silent_since: float | None = None
        self.lost: str | None = None

    @property
    def task_id(self) -> str:
        return str(self._result.task_id)

    def ready(self) -> bool:
        if self.lost is not None or self._result.ready():
            return True
        self._watch_worker()
        return self.lost is not None

    def get(self) -> Any:
        if self.lost is not None:
            raise WorkerLost(self.lost)
        return self._result.get()

    def revoke(self) -> None:
        self._result.revoke()

    def worker(self) -> str | None:
        """The worker running the task, from its STARTED state (None before it started)."""
        if self._result.state != "STARTED":
            return None
        info = self._result.info
        return str(info["hostname"]) if isinstance(info, dict) and info.get("hostname") else None

    def _watch_worker(self) -> None:
        now = self._clock()
        if now - self._checked < self._check_every:
            return
        self._checked = now
        worker = self.worker()
        if worker is None:
            self._silent_since = None
            return
        if self._app.control.ping(destination=[worker], timeout=self._ping_timeout):
            self._silent_since = None
            return
        if self._silent_since is None:
            self._silent_since = now
            log.warning("Celery worker %s did not answer a ping while running a step", worker)
        elif now - self._silent_since >= self._lost_after:
            self.lost = (
                f"Celery worker {worker} stopped answering for {now - self._silent_since:.0f} s "
                "while running this step: its host or process is treated as lost; the run fails "
                "and is retried on the workers left"
            )
