#!/usr/bin/env bash
# The test command: installs what it needs, then runs the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check bids_hub_dagster bids_hub_dagster_tests bench scripts
exec .venv/bin/python -m pytest "$@"
