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


def _child(fn: Callable[..., Any], args: tuple[Any, ...], queue: Any) -> None:
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((seconds, peak_kib / 1024))


def measure(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """(seconds, peak MiB) of ``fn(*args)`` in a fresh process, so peaks don't mix."""
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(fn, args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {process.exitcode}")
    seconds, peak = queue.get()
    return float(seconds), float(peak)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return path
