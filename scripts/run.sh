#!/usr/bin/env bash
# The run command: set up, then start the engine with the shipped model and the demo
# avatars (headless until the WebSocket server and browser viewer land). Extra
# arguments go to the demo, e.g. scripts/run.sh --bots 64 --duration 60.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m client_demo "$@"
