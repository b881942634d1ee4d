#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU, using that machine's own CUDA build of
# PyTorch (python3 there holds it; nothing is installed): the CUDA-marked tests, the engine
# bench at 1k/10k/100k avatars on the GPU and on 2 CPU threads, and the leave-one-family-out
# models trained on the GPU (one process per family) and scored (bench/lofo.py).
#
#   OUT=runs/gpu EPOCHS=8 bash bench/gpu.sh      # everything lands in $OUT (and $OUT/all.tar.gz)
#
# The engine and training code import only torch, numpy, scipy and tqdm, which a CUDA
# PyTorch image has; the tests need pytest. Budget: about 8 minutes on one H200 machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
EPOCHS="${EPOCHS:-8}"
FAMILIES="${FAMILIES:-juelich soccer sdd ethucy synthetic}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TRAIN_ARGS="${TRAIN_ARGS:-}"  # extra python -m training.train flags (a quick dry run)
mkdir -p "$OUT/lofo"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0), flush=True)" \
    | tee "$OUT/env.txt"
nproc | tee -a "$OUT/env.txt"
# the held-out models first (the long part), in the background, one process per family
pids=()
for f in $FAMILIES; do
    # shellcheck disable=SC2086
    "$PY" bench/lofo.py --families "$f" --epochs "$EPOCHS" --threads 1 --device "$DEVICE" \
        --out "$OUT/lofo" --json "$OUT/lofo/$f.json" --markdown "$OUT/lofo/$f.md" \
        ${TRAIN_ARGS:+-- $TRAIN_ARGS} >"$OUT/lofo/$f.log" 2>&1 &
    pids+=($!)
done
"$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_blend.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
"$PY" bench/engine.py --avatars 1000,10000,100000 --device "$DEVICE" --ticks 40 --json "$OUT/engine_cuda.json" 2>&1 | tee "$OUT/engine_cuda.txt"
"$PY" bench/engine.py --avatars 1000,10000 --device cpu --threads 2 --ticks 40 --json "$OUT/engine_cpu.json" 2>&1 | tee "$OUT/engine_cpu.txt"
for p in "${pids[@]}"; do wait "$p"; done
for f in $FAMILIES; do tail -25 "$OUT/lofo/$f.log"; done
tar -czf "$OUT/all.tar.gz" -C "$OUT" env.txt tests.txt engine_cuda.json engine_cuda.txt engine_cpu.json engine_cpu.txt lofo
ls -la "$OUT" "$OUT/lofo"
