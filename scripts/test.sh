#!/usr/bin/env bash
# The test command: installs what it needs, then runs the whole suite offline.
#   bash scripts/test.sh                 everything, slow end-to-end tests included
#   bash scripts/test.sh -m "not slow"   the fast inner loop (no subprocess, server or signal tests)
# Tests run in parallel worker processes (pytest-xdist), one per core, at most 4: BIDS_HUB_TEST_WORKERS=N
# sets the number, and a later -n on the command line wins (-n 0: all in this process, e.g. for pdb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check bids_hub_dagster bids_hub_dagster_tests bench scripts
cores=$(nproc 2>/dev/null || echo 2)
workers=${BIDS_HUB_TEST_WORKERS:-$((cores < 4 ? cores : 4))}
exec .venv/bin/python -m pytest -n "$workers" "$@"
