#!/usr/bin/env bash
# The test command (README): sets up the Python environment from uv.lock, then lint, types, tests.
# Integration tests need the real peers (Orthanc, sshd, Azurite, dcmtk, PostgreSQL); on a developer
# machine they skip with the reason when a peer is absent, in CI (CI=true) they fail instead.
# Extra arguments go to pytest, e.g. `bash deployments/test.sh -k cohort`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
# Bytecode compiled once, here: where PYTHONDONTWRITEBYTECODE is set (this CI's machines) every
# process would otherwise compile Dagster and its dependencies again (6.5 -> 2.2 s to import the
# definitions), and the suite starts many (CLI, run workers, peers).
uv sync --frozen --extra dev --quiet --compile-bytecode
uv run --frozen --no-sync python -m compileall -q voxl_assets resources sensors io_managers tests >/dev/null

uv run --frozen --no-sync ruff check .
uv run --frozen --no-sync ruff format --check .
uv run --frozen --no-sync mypy .
uv run --frozen --no-sync pytest "$@"
