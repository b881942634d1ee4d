#!/usr/bin/env bash
# The run command: set up, then serve the shipped model on ws://127.0.0.1:8765/ until
# Ctrl-C. Extra arguments go to the server, e.g. scripts/run.sh --port 9000 --tick-hz 30.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m server "$@"
