#!/usr/bin/env bash
# Every figure of the README's results table, from the shipped model (or MODEL=path).
# About 15 minutes on 2 cores, most of it the ETH/UCY protocol (5 folds of training).
# Outputs JSON under ${OUT:-runs/targets}; SKIP_PROTOCOL=1 leaves the protocol out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/targets}
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
mkdir -p "$OUT"
echo "== clean ETH/UCY val parts, per scene (never worse than CV?)"
for s in eth hotel univ zara1 zara2; do
    $PY -m training.evaluate --data "ethucy:val:$s" "${MODEL_ARGS[@]}" --json "$OUT/clean_$s.json" | tail -9
done
echo "== noisy streams: 2 cm noise, 20 ms jitter, ETH/UCY val parts"
$PY -m training.evaluate --data ethucy:val --noise 0.02 --jitter 20 "${MODEL_ARGS[@]}" --json "$OUT/noisy_ethucy.json" | tail -9
echo "== synthetic avatar motion, held-out users"
$PY -m training.evaluate --data synthetic:60:777:60 "${MODEL_ARGS[@]}" --json "$OUT/synthetic.json" --plots "$OUT/plots" | tail -12
echo "== engine step on CPU"
$PY -m server.bench --avatars 1000,10000 --threads 2 "${MODEL_ARGS[@]}" --json "$OUT/bench.json"
if [ -z "${SKIP_PROTOCOL:-}" ]; then
    echo "== standard ETH/UCY protocol (8 -> 12, leave one scene out)"
    $PY -m training.ethucy --json "$OUT/ethucy_protocol.json" | grep -v "^epoch"
fi
