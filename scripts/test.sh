#!/usr/bin/env bash
# The test command: installs what it needs, then runs the whole suite offline.
#   bash scripts/test.sh                 everything, slow end-to-end tests included
#   bash scripts/test.sh -m "not slow"   the fast inner loop (no subprocess, server or signal tests)
#   bash scripts/test.sh -m "not services"   without the cluster tests (PostgreSQL, Redis, Celery workers:
#                                        skipped with the reason when postgresql/redis-server are missing,
#                                        failed instead with BIDS_HUB_REQUIRE_SERVICES=1, as .ci/run sets)
# Tests run in parallel worker processes (pytest-xdist), one per core, at most 4: BIDS_HUB_TEST_WORKERS=N
# sets the number, and a later -n on the command line wins (-n 0: all in this process, e.g. for pdb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check bids_hub_dagster bids_hub_dagster_tests bench scripts
cores=$(nproc 2>/dev/null || echo 2)
workers=${BIDS_HUB_TEST_WORKERS:-$((cores < 4 ? cores : 4))}
# --dist loadgroup: tests marked xdist_group (the cluster tests, which share their servers) run in one worker
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
