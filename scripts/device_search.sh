#!/bin/bash
# The RL Panning search of the shipped policy (ResNet-20, Fashion-MNIST, the paper budget of
# 50,000 agent steps, a pool of 10 scoring batches, seed 0) on the lent GPU machine, inside
# one call of the device tool. That machine has JAX but neither tensorflow-datasets nor rlax
# and no network, so the dataset travels as .devdata/fashion_mnist.npz
# (`python -m benchmarks.device_search pack .devdata/fashion_mnist.npz`) and rlax with its
# dependencies as wheels in .whl/ (docs/performance.md, "On a GPU", says how to fetch them).
#
# Usage there: scripts/device_search.sh OUT_DIR [BUDGET_S]
# SEARCH_ARGS="--critic-loss huber" (say) adds run.py flags: a search variant.
# The search stops (SIGTERM: checkpoint written, resumable with run.py --resume) BUDGET_S
# seconds after the script starts, less what packing the results takes; OUT_DIR receives
# search.log and gpu-search.tar.gz (the run folder: run.json, checkpoints or policy and
# results, device_run.json with the wall time and the machine).
set -u
OUT_DIR=${1:?usage: scripts/device_search.sh OUT_DIR [BUDGET_S]}
BUDGET=${2:-560}
START=$(date +%s)
PYTHON=${PYTHON:-python3}
RUN=runs/gpu-search
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
source scripts/device_env.sh
LEFT=$((BUDGET - ($(date +%s) - START) - 25))
echo "=== search, limit ${LEFT}s ($(date -u +%T))"
timeout -s TERM -k 20 "$LEFT" "$PYTHON" -m benchmarks.device_search run .devdata/fashion_mnist.npz -- \
  --model resnet20 --dataset fashion_mnist --ratio 0.95 --search --scoring pool --epochs 1 \
  --checkpoint-every 5000 --seed 0 --out "$RUN" ${SEARCH_ARGS:-} > "$OUT_DIR/search.log" 2>&1
echo "=== rc $? ($(date -u +%T))"
tail -c 2000 "$OUT_DIR/search.log" | tr '\r' '\n' | tail -n 8
tar -czf "$OUT_DIR/gpu-search.tar.gz" "$RUN"
ls -la "$OUT_DIR"
