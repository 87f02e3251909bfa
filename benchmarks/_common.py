"""Shared benchmark plumbing: run a function in a child process, measure seconds and peak RSS."""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_seconds() -> float:
    """User + system CPU of this process and of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _child(fn: Callable[..., Any], args: tuple[Any, ...], queue: Any) -> None:
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    # A child process doing the work (VOXL's ssh) counts too: the larger of the two peaks.
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    queue.put((seconds, peak_kib / 1024, cpu))


def measure_with_cpu(fn: Callable[..., Any], *args: Any) -> tuple[float, float, float]:
    """(seconds, peak MiB, CPU seconds incl. child processes) of ``fn(*args)`` in a fresh
    process, so peaks don't mix."""
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(fn, args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {process.exitcode}")
    seconds, peak, cpu = queue.get()
    return float(seconds), float(peak), float(cpu)


def measure(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """(seconds, peak MiB) of ``fn(*args)`` in a fresh process, so peaks don't mix."""
    seconds, peak, _ = measure_with_cpu(fn, *args)
    return seconds, peak


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return path
