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
uv sync --frozen --extra dev --quiet

uv run --frozen --no-sync ruff check .
uv run --frozen --no-sync ruff format --check .
uv run --frozen --no-sync mypy .
uv run --frozen --no-sync pytest "$@"
