#!/usr/bin/env bash
# One VOXL Celery worker (README, "Scaling out"). Run it on each worker host, from the repository,
# with that host's environment: VOXL_HOME (its own raw cache and anonymised store),
# VOXL_DATABASE_URL, VOXL_DAGSTER_PG_* , VOXL_CELERY_BROKER_URL, VOXL_HASHING_KEY, the VNA's
# VOXL_VNA_* (and for C-MOVE this host's VOXL_AE_TITLE / VOXL_STORE_SCP_HOST / _PORT).
# Usage: deployments/distributed/worker.sh NAME QUEUES [CONCURRENCY]
#   archive-facing host:  worker.sh imaging-1 voxl-imaging
#   extracts host:        worker.sh extracts voxl-extracts,voxl-imaging
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?worker name}
queues=${2:?queues, comma-separated: voxl-imaging, voxl-extracts}
concurrency=${3:-2}
export VOXL_DEPLOYMENT=${VOXL_DEPLOYMENT:-production}
exec uv run --frozen --no-sync celery -A voxl_assets.celery_worker worker \
  -Q "$queues" -n "$name@%h" --concurrency "$concurrency" --loglevel INFO
