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

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

DEFAULT_TESTS = {
    "voxl_assets/upload/exactly_once.py": [
        "tests/test_exactly_once_records.py",
        "tests/test_upload_local.py",
    ],
    "voxl_assets/imaging/batches.py": ["tests/test_study_batches.py", "tests/test_sensor_cases.py"],
    "sensors/export_sensor.py": ["tests/test_sensor_cases.py"],
    "sensors/window_sensor.py": ["tests/test_sensor_cases.py"],
    "voxl_assets/vna/cache.py": ["tests/test_raw_cache.py", "tests/test_raw_cache_processes.py"],
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
    outcome: str = ""  # killed | survived | equivalent | timeout | invalid
    seconds: float = 0.0

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
            mutants.append(Mutant(module, function, node.lineno, numbered, mutated_source))
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


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> str:
    """``pytest -x`` on ``tests`` in a forked child whose imports come from ``copy_root``."""
    import os
    import signal

    pid = os.fork()
    if pid == 0:  # the child: forget this repository's modules, run pytest in the copy
        code = 3
        try:
            os.chdir(copy_root)
            sys.path[:] = [str(copy_root)] + [p for p in sys.path if p not in ("", str(REPO))]
            for name in [m for m in sys.modules if m.split(".")[0] in OWN_PACKAGES]:
                del sys.modules[name]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests]))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


OWN_PACKAGES = {"voxl_assets", "resources", "sensors", "io_managers", "tests", "benchmarks"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("modules", nargs="*", help="module paths (default: this phase's list)")
    parser.add_argument("--tests", nargs="+", help="test files for every module given")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help="run only these mutants (keys as printed)"
    )
    args = parser.parse_args(argv)
    modules = args.modules or list(DEFAULT_TESTS)
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
    try:
        for module in modules:
            tests = args.tests or DEFAULT_TESTS.get(module)
            if not tests:
                parser.error(f"no tests mapped to {module}: give --tests")
            mutants = mutants_of(module)
            if args.only:
                mutants = [m for m in mutants if m.key in args.only]
            if args.list:
                for mutant in mutants:
                    print(f"{mutant.key}  (line {mutant.line})")
                continue
            target = copy_root / module
            original = target.read_text()
            started = time.monotonic()
            baseline = run_tests(copy_root, tests, timeout=900)
            if baseline != "survived":
                print(f"{module}: the tests fail on the unmutated code; fix that first")
                return 1
            timeout = max(60.0, 3 * (time.monotonic() - started))
            for number, mutant in enumerate(mutants, 1):
                if mutant.key in equivalent:
                    mutant.outcome = "equivalent"
                else:
                    target.write_text(mutant.source)
                    began = time.monotonic()
                    mutant.outcome = run_tests(copy_root, tests, timeout)
                    mutant.seconds = round(time.monotonic() - began, 1)
                    target.write_text(original)
                print(
                    f"[{number}/{len(mutants)}] {mutant.outcome:10} {mutant.key} (line {mutant.line})",
                    flush=True,
                )
            counts = {
                outcome: sum(m.outcome == outcome for m in mutants)
                for outcome in ("killed", "timeout", "survived", "equivalent")
            }
            not_equivalent = len(mutants) - counts["equivalent"]
            killed = counts["killed"] + counts["timeout"]
            report[module] = {
                "mutants": len(mutants),
                **counts,
                "score": round(killed / not_equivalent, 3) if not_equivalent else 1.0,
                "survivors": [
                    asdict(m) | {"source": None} for m in mutants if m.outcome == "survived"
                ],
            }
            print(f"{module}: {counts} score {report[module]['score']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.list:  # merged with earlier runs' modules
        path = HERE / "report.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(merged | report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
