#!/usr/bin/env bash
# The demo (README's first command): sets up the environment from uv.lock, then runs the whole job
# on the embedded default - SQLite under $VOXL_HOME (default ./.voxl), a demo VNA on loopback, a
# local destination - and serves the Dagster UI. Arguments go to `voxl demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
uv sync --frozen --quiet --compile-bytecode  # every Dagster process starts seconds sooner
exec uv run --frozen --no-sync voxl demo "$@"
