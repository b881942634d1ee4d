#!/usr/bin/env bash
# Create .venv and install avatar-stream with its dev extra, pinned by requirements.lock
# (refresh it with scripts/lock.sh).
# PyTorch: if no torch is importable in the venv, install the locked CPU wheel first
# (torch==2.13.0). A user with a GPU installs their own CUDA build of torch into .venv
# before running this script; it is then left alone, and so are the packages it requires
# (the lock's pins for them are dropped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOCK="$PWD/requirements.lock"
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install -q -c "$LOCK" "$(grep -E '^torch==' "$LOCK")"
fi
# The constraints: the lock as it is, or without torch and its requirements when the torch
# in .venv is not the locked one (the user's own build).
CONSTRAINTS="$(.venv/bin/python - "$LOCK" <<'PY'
import re, sys, tempfile
from importlib.metadata import requires, version

lock = sys.argv[1]
lines = open(lock).read().splitlines()
locked = next(ln.split("==", 1)[1] for ln in lines if ln.startswith("torch=="))
if version("torch").split("+")[0] == locked:
    print(lock)
    raise SystemExit
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
drop = {"torch"} | {norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires("torch") or []}
keep = [ln for ln in lines if ln.startswith("#") or norm(ln.split("==")[0]) not in drop]
with tempfile.NamedTemporaryFile("w", suffix=".lock", delete=False) as f:
    f.write("\n".join(keep) + "\n")
print(f.name)
PY
)"
# PIP_CONSTRAINT reaches pip's isolated build environment too (setuptools, wheel)
PIP_CONSTRAINT="$CONSTRAINTS" .venv/bin/pip install -q -e ".[dev]"
