#!/bin/bash
# Benchmark grids (python -m benchmarks.compare --preset NAME) on the lent GPU machine, inside
# one call of the device tool: WORKERS processes share the GPU, each running its share of the
# cells (--shard K/N), grid after grid, until BUDGET_S seconds after the script starts. The
# dataset travels as .devdata/fashion_mnist.npz and rlax with its dependencies as wheels in
# .whl/ (as for scripts/device_search.sh). A worker stopped by the budget leaves its current
# cell resumable. The finished and stopped cells come back as OUT_DIR/cells.tgz.part-* (the
# grids' cells/ folders without model.npz and locks), every worker's output as
# OUT_DIR/workers.log. Unpack them into benchmarks/results/ here (cells already there are kept):
#   cat OUT_DIR/cells.tgz.part-* | tar -xzf - -C benchmarks/results --skip-old-files
# and the grids finish where they stopped with the same python -m benchmarks.compare command.
#
# Usage there: scripts/device_compare.sh OUT_DIR BUDGET_S WORKERS PRESET [PRESET ...]
# COMPARE_ARGS="--seeds 5" (say) adds flags to every worker's benchmarks.compare command.
set -u
OUT_DIR=${1:?usage: scripts/device_compare.sh OUT_DIR BUDGET_S WORKERS PRESET...}
BUDGET=${2:?budget in seconds}
WORKERS=${3:?number of workers}
shift 3
START=$(date +%s)
PYTHON=${PYTHON:-python3}
ROOT=/tmp/compare
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JPANNING_COMPILATION_CACHE=/tmp/xla-cache
mkdir -p "$OUT_DIR" "$ROOT"
source scripts/device_env.sh
# results already made elsewhere are reused (the cells travel in the working tree)
for PRESET in "$@"; do
  [ -d "benchmarks/results/$PRESET/cells" ] && mkdir -p "$ROOT/$PRESET" &&
    cp -r "benchmarks/results/$PRESET/cells" "$ROOT/$PRESET/"
done
END=$((START + BUDGET - 40))  # time left to pack the results
worker() {
  local k=$1
  for PRESET in "${@:2}"; do
    local left=$((END - $(date +%s)))
    [ "$left" -le 10 ] && break
    timeout -s TERM -k 15 "$left" "$PYTHON" -m benchmarks.compare --preset "$PRESET" \
      --data-file .devdata/fashion_mnist.npz --out-root "$ROOT" --shard "$k/$WORKERS" \
      ${COMPARE_ARGS:-}
    echo "=== worker $k: $PRESET rc $? ($(date -u +%T))"
  done
}
for ((k = 0; k < WORKERS; k++)); do
  worker "$k" "$@" > "/tmp/worker$k.log" 2>&1 &
done
wait
echo "=== all workers done after $(($(date +%s) - START)) s"
for ((k = 0; k < WORKERS; k++)); do echo "##### worker $k"; cat "/tmp/worker$k.log"; done \
  > "$OUT_DIR/workers.log"
grep -h "^\[\|rc " /tmp/worker*.log | tail -n 40
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null
tar -C "$ROOT" --exclude=model.npz --exclude=.lock -cf - . | gzip -1 |
  split -b 12m - "$OUT_DIR/cells.tgz.part-"
ls -la "$OUT_DIR"
