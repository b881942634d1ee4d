#!/usr/bin/env bash
# The test command: set up, lint, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# the browser tests (tests/test_viewer.py) drive Debian's chromium; install it when we can
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "test.sh: could not install chromium; the browser tests will skip (or fail under CI)" >&2
fi
# the room-directory tests (tests/test_directory.py) start their own Debian redis-server on a
# free loopback port (never the system service); install it when we can
if [ ! -x /usr/bin/redis-server ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
        || echo "test.sh: could not install redis-server; the Redis tests will skip (or fail under CI)" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
