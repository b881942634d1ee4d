#!/usr/bin/env bash
# The run command: set up, then start the server with the shipped model on
# ws://127.0.0.1:8765/ plus 16 demo bots (real WebSocket clients, 100 ms added latency),
# print the browser viewer's URL and a live table of render errors; Ctrl-C stops.
# Extra arguments go to the demo, e.g. scripts/run.sh --bots 32 --port 9000 --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m client_demo --duration 0 "$@"
