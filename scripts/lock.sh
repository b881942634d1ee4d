#!/usr/bin/env bash
# Refresh requirements.lock, the pinned versions of the whole dependency set that
# scripts/setup.sh (and so the run and test commands) installs from.
#
#   scripts/lock.sh            resolve pyproject.toml's ranges afresh in a throw-away venv
#
# The lock is made on CPython 3.11 / Linux x86_64 with the CPU wheel of torch (torch==2.13.0).
# pyproject.toml keeps loose ranges for people who install the package into their own
# environment; only the two commands use the lock. Commit the new file after the test
# command passes with it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade "pip" "setuptools>=68" "wheel"
"$tmp/venv/bin/pip" install -q "torch==2.13.0"
"$tmp/venv/bin/pip" install -q ".[dev]"
{
    echo "# The pinned dependency set of avatar-stream (made by scripts/lock.sh; do not edit by hand)."
    echo "# Installed by scripts/setup.sh as a pip constraints file: pip install -c requirements.lock ..."
    echo "# Made with $("$tmp/venv/bin/python" -c 'import platform; print("CPython", platform.python_version(), platform.system(), platform.machine())') on $(date -u +%Y-%m-%d)."
    echo "# torch is the CPU wheel; a torch you installed yourself (a CUDA build) is kept, and"
    echo "# setup.sh then leaves torch and the packages it requires out of the constraints."
    "$tmp/venv/bin/pip" freeze --all --exclude-editable \
        | grep -v -i -E '^(avatar-stream|pip)( |==)' \
        | sed -E 's/^torch==([^+]*)\+cpu$/torch==\1/' \
        | LC_ALL=C sort -f
} >requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
