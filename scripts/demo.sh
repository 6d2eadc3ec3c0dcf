#!/usr/bin/env bash
# The demo: installs what it needs, builds a small BIDS dataset from nibabel's images,
# publishes it to ./published/demo through Dagster, and verifies it byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bids-hub-dagster demo --to ./published/demo "$@"
