#!/usr/bin/env bash
# Create .venv and install avatar-stream with its dev extra.
# PyTorch: if no torch is importable in the venv, install the CPU wheel first
# (torch==2.13.0). A user with a GPU installs their own CUDA build of torch
# into .venv before running this script; it is then left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[dev]"
