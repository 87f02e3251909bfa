"""Shared benchmark plumbing: run a function in a child process, measure seconds and peak RSS;
resolve the reference tools on the system."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
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


# --- reference tools ---------------------------------------------------------------------------
# Benchmarks compare VOXL with system programs (dcmtk's movescu and storescp, curl, lftp, OpenSSH's
# sftp, GNU time). Under `uv run`, the Python environment's bin comes first on PATH, and pynetdicom
# installs console scripts of the same names there (storescp, movescu, ...): a bare name would
# start pynetdicom's instead of dcmtk's. Reference tools are therefore resolved on PATH without any
# Python environment's bin, falling back to the standard system directories.

SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class MissingTool(RuntimeError):
    """A reference tool is not installed outside the Python environment."""


def _is_python_environment_bin(directory: Path) -> bool:
    resolved = directory.resolve()
    own = {Path(sys.prefix).resolve() / "bin", Path(sys.executable).parent.resolve()}
    return resolved in own or (resolved.parent / "pyvenv.cfg").exists()


def system_search_path() -> str:
    """PATH without any Python environment's bin, then the standard system directories."""
    entries = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    kept = [d for d in entries if not _is_python_environment_bin(Path(d))]
    return os.pathsep.join([*kept, *(d for d in SYSTEM_DIRS if d not in kept)])


def resolve_tools(tools: Mapping[str, str]) -> dict[str, str]:
    """``{program: how to install it}`` -> ``{program: absolute path}`` of the system's programs.

    Raises ``MissingTool`` naming every missing program and how to install it."""
    search = system_search_path()
    found = {name: shutil.which(name, path=search) for name in tools}
    missing = [f"{name} ({tools[name]})" for name, path in found.items() if path is None]
    if missing:
        raise MissingTool(
            "reference tools not installed outside the Python environment: " + ", ".join(missing)
        )
    return {name: str(path) for name, path in found.items()}


def resolve_tools_or_exit(tools: Mapping[str, str]) -> dict[str, str]:
    """``resolve_tools`` for a benchmark's ``main``: a missing tool ends it with the message."""
    try:
        return resolve_tools(tools)
    except MissingTool as exc:
        raise SystemExit(f"benchmark cannot run: {exc}") from None
