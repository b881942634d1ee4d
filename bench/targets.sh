#!/usr/bin/env bash
# Every figure of the README's results: the shipped model (or MODEL=path) on every held-out real
# set (per recording and pooled, beside the same model trained without neighbours and the seed's
# LSTM when their checkpoints are there), synthetic held-out users, and the engine step.
# Train the comparison models first (README, "Training and evaluation"):
#   python -m training.train --preset shipped --neighbours 0 --out runs/nonb.pt --name avatar-gru-nonb
#   python -m training.seed_lstm --out runs/seed_lstm.pt
# About 3 minutes on 2 cores. Outputs JSON and the printed tables under ${OUT:-runs/targets}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/targets}
ARGS=()
[ -n "${MODEL:-}" ] && ARGS+=(--model "$MODEL")
[ -f runs/nonb.pt ] && ARGS+=(--also nonb=runs/nonb.pt)
[ -f runs/seed_lstm.pt ] && ARGS+=(--also seed_lstm=runs/seed_lstm.pt)
mkdir -p "$OUT"
echo "== held-out real recordings at their native rates (20 Hz send, 100 ms latency, 2 % loss)"
$PY -m training.evaluate --suite real --per-recording "${ARGS[@]}" --json "$OUT/real.json" | tee "$OUT/real.txt"
echo "== synthetic avatar motion, held-out users"
$PY -m training.evaluate --suite synthetic "${ARGS[@]}" --json "$OUT/synthetic.json" | tee "$OUT/synthetic.txt"
echo "== engine step on CPU, 2 threads"
$PY bench/engine.py --avatars 1000,10000 --threads 2 ${MODEL:+--model "$MODEL"} --json "$OUT/bench.json"
