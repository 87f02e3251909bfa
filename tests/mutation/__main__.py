"""Mutation testing: change one thing in a module (a mutant), run the tests that guard it, and
count the mutants no test notices (survivors).

    uv run python -m tests.mutation                      # this phase's modules
    uv run python -m tests.mutation voxl_assets/deid/engine.py --tests tests/test_deid_engine.py

Why not mutmut: mutmut 3 does not mutate decorated functions (the sensors are ``@sensor``
functions) and runs the suite inside its own copy of a src-layout package; this project is a flat
Dagster code location whose tests start subprocesses. This tool copies the worktree to a temporary
folder, writes one mutant at a time into the copy and runs pytest there (``-x``, fail fast), with
the tests mapped to each module below (or ``--tests``). Operators: comparison and boolean
operators swapped, ``not`` dropped, conditions negated, ``+``/``-`` swapped, numbers +1,
True/False swapped, a returned value replaced by None, a call statement removed,
``break``/``continue`` swapped. Mutants reviewed as equivalent (no test can tell them apart from
the original) are listed, with the reason, in ``tests/mutation/equivalent.txt``; the report
counts them apart. Results go to ``tests/mutation/report.json``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# The in-process tests of the de-identification engine, its checks and the leak guard. Left out:
# tests/test_extract_identity.py and tests/test_participant_ids.py (about 160 s of CLI
# subprocesses and a whole pipeline run, which line coverage cannot see into).
DEID_TESTS = [
    "tests/test_deid_checks.py",
    "tests/test_deid_engine.py",
    "tests/test_deid_guarantees.py",
    "tests/test_deid_header_scan.py",
    "tests/test_deid_encoding.py",
    "tests/test_deid_output.py",
    "tests/test_deid_properties.py",
    "tests/test_hashing.py",
    "tests/test_identifier_rules.py",
    "tests/test_layout.py",
    "tests/test_leak_guard_free_text.py",
    "tests/test_leak_scan.py",
    "tests/test_export.py",
    "tests/test_privacy_broken_output.py",
    "tests/test_privacy_charsets.py",
    "tests/test_privacy_configuration.py",
    "tests/test_privacy_hidden_encodings.py",
    "tests/test_privacy_length.py",
    "tests/test_privacy_numbers.py",
    "tests/test_privacy_order.py",
    "tests/test_privacy_pixel_text.py",
    "tests/test_privacy_properties.py",
    "tests/test_privacy_scripts.py",
    "tests/test_privacy_separators.py",
    "tests/test_privacy_uids.py",
    "tests/test_privacy_vrs.py",
]
STUDY_TESTS = ["tests/test_anonymised_store.py", "tests/test_deid_report.py"]
# Smallest and most privacy-critical first: a run stopped early has done those.
DEID_MODULES = [
    "voxl_assets/deid/checks.py",
    "voxl_assets/export/leak_guard.py",
    "voxl_assets/deid/operations.py",
    "voxl_assets/deid/identifiers.py",
    "voxl_assets/deid/kept_values.py",
    "voxl_assets/deid/hashing.py",
    "voxl_assets/deid/values.py",
    "voxl_assets/deid/encoding.py",
    "voxl_assets/deid/embedded_text.py",
    "voxl_assets/deid/hidden_text.py",
    "voxl_assets/deid/store.py",
    "voxl_assets/deid/study.py",
    "voxl_assets/deid/output.py",
    "voxl_assets/deid/header_scan.py",
    "voxl_assets/deid/engine.py",
]

DEFAULT_TESTS = {
    "voxl_assets/upload/exactly_once.py": [
        "tests/test_exactly_once_records.py",
        "tests/test_upload_local.py",
    ],
    "voxl_assets/imaging/batches.py": ["tests/test_study_batches.py", "tests/test_sensor_cases.py"],
    "sensors/export_sensor.py": ["tests/test_sensor_cases.py"],
    "sensors/window_sensor.py": ["tests/test_sensor_cases.py"],
    "sensors/study_sensor.py": ["tests/test_sensor_cases.py", "tests/test_sensors_study.py"],
    "voxl_assets/vna/cache.py": [
        "tests/test_raw_cache.py",
        "tests/test_raw_cache_processes.py",
        "tests/test_sqlite_wal.py",
    ],
    **{module: DEID_TESTS for module in DEID_MODULES},
    # The anonymised store, the study step and the engine are run by the store's and the
    # report's tests too (the report's summaries, the store's tree replacement).
    "voxl_assets/deid/store.py": [*DEID_TESTS, *STUDY_TESTS],
    "voxl_assets/deid/study.py": [*DEID_TESTS, *STUDY_TESTS],
    "voxl_assets/deid/engine.py": [*DEID_TESTS, *STUDY_TESTS],
}

COMPARE_SWAPS: dict[type, type] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BINOP_SWAPS: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv}


@dataclass
class Mutant:
    module: str
    function: str
    line: int
    description: str
    source: str = ""
    outcome: str = ""  # killed | survived | equivalent | timeout | error
    seconds: float = 0.0
    end_line: int = 0
    tests_run: int = 0  # tests chosen for it by coverage (0: no test runs its lines)

    @property
    def key(self) -> str:
        return f"{self.module}::{self.function}::{self.description}"


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _functions(tree: ast.Module) -> dict[int, str]:
    """id(node) -> qualified name of the function that holds it ('<module>' outside any)."""
    owner: dict[int, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = child.name if name == "<module>" else f"{name}.{child.name}"
            owner[id(child)] = inner
            visit(child, inner)

    visit(tree, "<module>")
    return owner


def _candidates(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(description, replacement node) for each mutation of ``node`` itself."""
    mutated: Any
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap:
                mutated = copy.deepcopy(node)
                mutated.ops[index] = swap()
                yield f"{type(op).__name__}->{swap.__name__}#{index}", mutated
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        mutated = copy.deepcopy(node)
        mutated.op = other
        yield f"{type(node.op).__name__}->{type(other).__name__}", mutated
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not-dropped", copy.deepcopy(node.operand)
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        mutated = copy.deepcopy(node)
        mutated.op = BINOP_SWAPS[type(node.op)]()
        yield f"{type(node.op).__name__}->{type(mutated.op).__name__}", mutated
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
        mutated = copy.deepcopy(node)
        mutated.op = BINOP_SWAPS[type(node.op)]()
        yield f"aug-{type(node.op).__name__}->{type(mutated.op).__name__}", mutated
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            yield f"{node.value}->{not node.value}", ast.Constant(not node.value)
        elif isinstance(node.value, int):
            yield f"{node.value}->{node.value + 1}", ast.Constant(node.value + 1)
    elif isinstance(node, (ast.If, ast.While)):
        mutated = copy.deepcopy(node)
        mutated.test = ast.UnaryOp(ast.Not(), mutated.test)
        yield f"{type(node).__name__.lower()}-negated", mutated
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return-None", ast.Return(ast.Constant(None))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        yield "call-removed", ast.Pass()
    elif isinstance(node, ast.Break):
        yield "break->continue", ast.Continue()
    elif isinstance(node, ast.Continue):
        yield "continue->break", ast.Break()


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return ast.copy_location(self.replacement, node)
        return super().visit(node)


def _deepcopy_tree(tree: ast.Module, target: ast.AST) -> ast.Module:
    """A copy of ``tree`` in which ``target`` is still the same object, so it can be replaced."""
    memo = {id(target): target}
    return copy.deepcopy(tree, memo)


def mutants_of(module: str) -> list[Mutant]:
    source = (REPO / module).read_text()
    tree = ast.parse(source)
    owner = _functions(tree)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _is_docstring(node):
            skip.add(id(node))
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for annotation in [node.returns, *(a.annotation for a in node.args.args)]:
                if annotation is not None:
                    skip.update(id(n) for n in ast.walk(annotation))
        if isinstance(node, ast.AnnAssign):
            skip.update(id(n) for n in ast.walk(node.annotation))
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        for description, replacement in _candidates(node):
            mutated_tree = _Replace(node, replacement).visit(_deepcopy_tree(tree, node))
            function = owner.get(id(node), "<module>")
            base = f"{description}@{function}"
            seen[base] = seen.get(base, 0) + 1
            numbered = f"{description}#{seen[base]}" if seen[base] > 1 else description
            try:
                mutated_source = ast.unparse(ast.fix_missing_locations(mutated_tree))
            except (ValueError, TypeError):
                continue
            lines = node.test if isinstance(node, (ast.If, ast.While)) else node
            end = getattr(lines, "end_lineno", None) or node.lineno
            mutants.append(
                Mutant(module, function, node.lineno, numbered, mutated_source, end_line=end)
            )
    return mutants


def load_equivalent() -> dict[str, str]:
    path = HERE / "equivalent.txt"
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, reason = line.partition("  # ")
            found[key.strip()] = reason.strip()
    return found


PRELOADED = (
    "dagster",
    "sqlalchemy",
    "alembic",
    "pydicom",
    "pynetdicom",
    "numpy",
    "pandas",
    "pyarrow",
    "requests",
    "pydantic",
    "yaml",
    "pytest",
)


def preload() -> None:
    """Import the heavy third-party libraries once; each mutant's test run is a fork of this
    process, so it imports only VOXL's own modules (the mutated one among them) afresh."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)


class _LineRecorder:
    """A pytest plugin that records which lines of some files each test runs (``sys.settrace``,
    tracing only those files' frames), and how long each test takes."""

    def __init__(self, filenames: list[str]) -> None:
        self.filenames = set(filenames)
        self.current: str | None = None
        # file -> test -> lines; the test '' holds lines run outside any test (imports)
        self.lines: dict[str, dict[str, set[int]]] = {name: {"": set()} for name in filenames}
        self.durations: dict[str, float] = {}
        self.files: dict[str, str] = {}

    def _global(self, frame: Any, event: str, arg: object) -> Any:
        return self._local if frame.f_code.co_filename in self.filenames else None

    def _local(self, frame: Any, event: str, arg: object) -> Any:
        if event == "line":
            per_test = self.lines[frame.f_code.co_filename]
            per_test.setdefault(self.current or "", set()).add(frame.f_lineno)
        return self._local

    def start(self) -> None:
        import threading

        sys.settrace(self._global)
        threading.settrace(self._global)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Iterator[None]:
        self.current = item.nodeid
        self.files[item.nodeid] = str(item.path.relative_to(item.config.rootpath))
        began = time.perf_counter()
        yield
        self.durations[item.nodeid] = time.perf_counter() - began
        self.current = None

    def as_json(self) -> dict[str, object]:
        return {
            "lines": {
                name: {test: sorted(ran) for test, ran in per_test.items()}
                for name, per_test in self.lines.items()
            },
            "durations": self.durations,
            "files": self.files,
        }


class _Selector:
    """A pytest plugin that keeps only the chosen tests, in the order given (fastest first), so
    that ``-x`` stops at the quickest test that notices the mutant."""

    def __init__(self, chosen: list[str]) -> None:
        self.rank = {nodeid: index for index, nodeid in enumerate(chosen)}

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        kept = [item for item in items if item.nodeid in self.rank]
        dropped = [item for item in items if item.nodeid not in self.rank]
        kept.sort(key=lambda item: self.rank[item.nodeid])
        items[:] = kept
        if dropped:
            config.hook.pytest_deselected(items=dropped)


class _FirstFailure:
    """A pytest plugin that writes the node id of the first failing test to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self.path.exists():
            self.path.write_text(report.nodeid)


def run_tests(
    copy_root: Path,
    tests: list[str],
    timeout: float,
    *,
    chosen: list[str] | None = None,
    trace: tuple[list[str], Path] | None = None,
    failure: Path | None = None,
) -> str:
    """``pytest -x`` on ``tests`` in a forked child whose imports come from ``copy_root``: only
    the ``chosen`` node ids if given; with ``trace`` (files to trace, JSON to write), the lines
    of those files each test runs are recorded."""
    import os
    import signal

    pid = os.fork()
    if pid == 0:  # the child: forget this repository's modules, run pytest in the copy
        code = 3
        try:
            import gc

            gc.freeze()  # the preloaded libraries' objects: pytest's gc.collect() skips them
            os.chdir(copy_root)
            sys.path[:] = [str(copy_root)] + [p for p in sys.path if p not in ("", str(REPO))]
            for name in [m for m in sys.modules if m.split(".")[0] in OWN_PACKAGES]:
                del sys.modules[name]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            plugins: list[object] = []
            recorder = None
            if chosen is not None:
                plugins.append(_Selector(chosen))
            if failure is not None:
                plugins.append(_FirstFailure(failure))
            if trace is not None:
                recorder = _LineRecorder(trace[0])
                plugins.append(recorder)
                recorder.start()
            # hypothesis's pytest plugin only adds options and a summary; its tests run without
            options = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
            options += [] if trace else ["-x"]
            code = int(pytest.main([*options, *tests], plugins=plugins))
            if recorder is not None and trace is not None:
                sys.settrace(None)
                trace[1].write_text(json.dumps(recorder.as_json()))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                return "survived"
            # 4: usage error, 5: no test collected: nothing was tested, so nothing was noticed
            return "error" if code in (4, 5) else "killed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


@dataclass
class Coverage:
    """Which tests run which lines of a module, from one traced run of its tests."""

    by_test: dict[str, set[int]]
    outside: set[int]
    durations: dict[str, float]
    files: dict[str, str]

    @classmethod
    def of(cls, data: dict[str, Any], filename: str) -> Coverage:
        per_test = {test: set(ran) for test, ran in data["lines"][filename].items()}
        outside = per_test.pop("", set())
        return cls(per_test, outside, data["durations"], data["files"])

    def tests_for(self, first: int, last: int, killers: list[str]) -> list[str]:
        """The tests that run any line in ``first..last``: first those that killed the module's
        earlier mutants (most recent first), then the rest fastest first. Every test when the
        lines run outside tests (at import: module constants, defaults, decorators), where any
        test may see the change; [] when no test runs them."""
        lines = set(range(first, last + 1))
        chosen = [test for test, ran in self.by_test.items() if ran & lines]
        if not chosen and lines & self.outside:  # every test, also those that never run a line
            chosen = list(self.durations)
        rank = {test: index for index, test in enumerate(killers)}
        return sorted(
            chosen,
            key=lambda test: (rank.get(test, len(rank)), self.durations.get(test, 0.0)),
        )


def _forget_bytecode(path: Path) -> None:
    """A mutant written in the same second as the last one, with the same size, would otherwise
    run from the last one's .pyc."""
    for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        cached.unlink()


def traced_baselines(
    copy_root: Path, work: Path, plan: dict[str, list[str]], saved: Path | None = None
) -> dict[str, Coverage]:
    """One traced run per distinct list of tests, covering every module that list guards: the
    coverage of each module. With ``saved``, coverage is read from that file when it has the
    modules (a run over the same tests and sources), else written to it. Raises when a baseline
    fails."""
    if saved is not None and saved.exists():
        data = json.loads(saved.read_text())
        if all(module in data["lines"] for module in plan):
            print(f"coverage read from {saved}", flush=True)
            return {module: Coverage.of(data, module) for module in plan}
    groups: dict[tuple[str, ...], list[str]] = {}
    for module, tests in plan.items():
        groups.setdefault(tuple(tests), []).append(module)
    coverage: dict[str, Coverage] = {}
    merged: dict[str, Any] = {"lines": {}, "durations": {}, "files": {}}
    for number, (test_list, modules) in enumerate(groups.items()):
        trace_file = work / f"coverage-{number}.json"
        filenames = [str(copy_root / module) for module in modules]
        began = time.monotonic()
        outcome = run_tests(copy_root, list(test_list), 3600, trace=(filenames, trace_file))
        if outcome != "survived":
            raise SystemExit(f"{', '.join(modules)}: the tests fail on the unmutated code")
        data = json.loads(trace_file.read_text())
        took = time.monotonic() - began
        print(f"baseline of {', '.join(modules)}: {took:.0f} s", flush=True)
        for module, filename in zip(modules, filenames, strict=True):
            merged["lines"][module] = data["lines"][filename]
        merged["durations"] |= data["durations"]
        merged["files"] |= data["files"]
    for module in plan:
        coverage[module] = Coverage.of(merged, module)
    if saved is not None:
        saved.write_text(json.dumps(merged))
    return coverage


FIRST_STAGE = 25


def _run_stage(
    copy_root: Path, work: Path, coverage: Coverage, chosen: list[str]
) -> tuple[str, str | None]:
    """(outcome, the first failing test) of running ``chosen`` in the copy."""
    budget = sum(coverage.durations.get(test, 1.0) for test in chosen)
    files = sorted({coverage.files[test] for test in chosen})
    failure = work / "first-failure"
    failure.unlink(missing_ok=True)
    outcome = run_tests(
        copy_root, files, max(60.0, 20 + 3 * budget), chosen=chosen, failure=failure
    )
    return outcome, failure.read_text() if failure.exists() else None


def _previous_report() -> dict[str, dict[str, Any]]:
    path = HERE / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_report(report: dict[str, Any]) -> None:
    """Merged with earlier runs' modules, after each module so a stopped run keeps its results
    (only the module just done: another run may have written the others since)."""
    path = HERE / "report.json"
    path.write_text(json.dumps(_previous_report() | report, indent=2, sort_keys=True) + "\n")


def _recheck(previous: dict[str, Any], mutants: list[Mutant]) -> dict[str, Any]:
    """The module's last report with the re-checked mutants' new outcomes: a survivor now
    killed or reviewed as equivalent leaves the survivors and moves to its new count."""
    entry = dict(previous)
    survivors = {
        f"{s['module']}::{s['function']}::{s['description']}": s for s in entry["survivors"]
    }
    for mutant in mutants:
        old = survivors.get(mutant.key)
        if old is None or mutant.outcome in ("survived", "error"):
            continue
        entry[old["outcome"]] -= 1
        entry[mutant.outcome] = entry.get(mutant.outcome, 0) + 1
        del survivors[mutant.key]
    entry["survivors"] = list(survivors.values())
    not_equivalent = entry["mutants"] - entry["equivalent"]
    killed = entry["killed"] + entry.get("timeout", 0)
    entry["score"] = round(killed / not_equivalent, 3) if not_equivalent else 1.0
    return entry


OWN_PACKAGES = {"voxl_assets", "resources", "sensors", "io_managers", "tests", "benchmarks"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument(
        "modules",
        nargs="*",
        help="module paths, or deid for the de-identification modules (default: all mapped)",
    )
    parser.add_argument("--tests", nargs="+", help="test files for every module given")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help="run only these mutants (keys as printed)"
    )
    parser.add_argument(
        "--all-tests",
        action="store_true",
        help="run every mapped test for each mutant (default: only the tests that run its lines)",
    )
    parser.add_argument(
        "--coverage",
        type=Path,
        metavar="FILE",
        help="reuse the traced baseline saved in FILE (written there when absent): only while "
        "neither the tests nor the modules have changed",
    )
    args = parser.parse_args(argv)
    modules = [
        name
        for module in args.modules or list(DEFAULT_TESTS)
        for name in (DEID_MODULES if module == "deid" else [module])
    ]
    if not args.list:
        preload()
    equivalent = load_equivalent()
    report: dict[str, dict[str, object]] = {}
    work = Path(tempfile.mkdtemp(prefix="voxl-mutation-"))
    copy_root = work / "repo"
    shutil.copytree(
        REPO,
        copy_root,
        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", ".voxl", ".mypy_cache"),
    )
    plan: dict[str, list[str]] = {}
    for module in modules:
        tests = args.tests or DEFAULT_TESTS.get(module)
        if not tests:
            parser.error(f"no tests mapped to {module}: give --tests")
        plan[module] = tests
    coverage: dict[str, Coverage] = {}
    baseline_seconds: dict[str, float] = {}
    try:
        if args.list:
            pass
        elif args.all_tests:
            for module, tests in plan.items():
                began = time.monotonic()
                if run_tests(copy_root, tests, timeout=3600) != "survived":
                    raise SystemExit(f"{module}: the tests fail on the unmutated code")
                baseline_seconds[module] = time.monotonic() - began
        else:
            coverage = traced_baselines(copy_root, work, plan, args.coverage)
        for module, tests in plan.items():
            mutants = mutants_of(module)
            if args.only:
                mutants = [m for m in mutants if m.key in args.only]
            if args.list:
                for mutant in mutants:
                    print(f"{mutant.key}  (line {mutant.line})")
                continue
            target = copy_root / module
            original = target.read_text()
            module_coverage = coverage.get(module)
            whole = baseline_seconds.get(module, 0.0)
            killers: list[str] = []  # tests that killed this module's mutants, latest first
            for number, mutant in enumerate(mutants, 1):
                if mutant.key in equivalent:
                    mutant.outcome = "equivalent"
                else:
                    target.write_text(mutant.source)
                    _forget_bytecode(target)
                    began = time.monotonic()
                    if module_coverage is None:
                        mutant.tests_run = -1
                        mutant.outcome = run_tests(copy_root, tests, max(60.0, 3 * whole))
                    else:
                        chosen = module_coverage.tests_for(mutant.line, mutant.end_line, killers)
                        mutant.tests_run = len(chosen)
                        if not chosen:  # no test runs the changed lines: nothing can notice it
                            mutant.outcome = "survived"
                        else:
                            # The likeliest killers first, alone: collecting every test
                            # file a line is run by costs seconds per mutant.
                            for stage in (chosen[:FIRST_STAGE], chosen[FIRST_STAGE:]):
                                if not stage:
                                    continue
                                mutant.outcome, killer = _run_stage(
                                    copy_root, work, module_coverage, stage
                                )
                                if killer:
                                    killers = [killer, *(k for k in killers if k != killer)]
                                if mutant.outcome != "survived":
                                    break
                    mutant.seconds = round(time.monotonic() - began, 1)
                    target.write_text(original)
                    _forget_bytecode(target)
                print(
                    f"[{number}/{len(mutants)}] {mutant.outcome:10} {mutant.key} "
                    f"(line {mutant.line}, {mutant.tests_run} tests, {mutant.seconds} s)",
                    flush=True,
                )
            if args.only:  # a re-check: fold the outcomes into the module's last full run
                previous = _previous_report().get(module)
                if previous:
                    report[module] = _recheck(previous, mutants)
                    print(f"{module}: re-checked; score {report[module]['score']}", flush=True)
                    _save_report({module: report[module]})
                    continue
            counts = {
                outcome: sum(m.outcome == outcome for m in mutants)
                for outcome in ("killed", "timeout", "survived", "equivalent", "error")
            }
            not_equivalent = len(mutants) - counts["equivalent"]
            killed = counts["killed"] + counts["timeout"]
            report[module] = {
                "mutants": len(mutants),
                **counts,
                "score": round(killed / not_equivalent, 3) if not_equivalent else 1.0,
                "survivors": [
                    asdict(m) | {"source": None}
                    for m in mutants
                    if m.outcome in ("survived", "error")
                ],
            }
            print(f"{module}: {counts} score {report[module]['score']}", flush=True)
            _save_report({module: report[module]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
