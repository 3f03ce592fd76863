#!/bin/bash
# The GPU benchmark run of docs/performance.md's "On a GPU" section: td3, env_step,
# train_throughput and scorers, PyTorch on the same GPU, each under a time limit so that one
# slow part does not cost the others. Usage: scripts/gpu_benchmarks.sh [OUT_DIR] (default
# benchmarks/results).
# Limits in seconds: T_TD3, T_ENV, T_TRAIN, T_SCORE. Full float32 instead of TF32:
# JAX_DEFAULT_MATMUL_PRECISION=highest (PyTorch follows).
OUT_DIR=${1:-benchmarks/results}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
mkdir -p "$OUT_DIR"
bench() {  # limit, then the module and its arguments
  local limit=$1; shift
  echo "=== $* ($(date -u +%T), limit ${limit}s)"
  timeout "$limit" "$PYTHON" -m "$@" --out "$OUT_DIR"
  echo "=== rc $? ($(date -u +%T))"
}
bench "${T_TD3:-140}" benchmarks.td3
bench "${T_ENV:-150}" benchmarks.env_step --batched resnet20 resnet20_panning
bench "${T_TRAIN:-60}" benchmarks.train_throughput
bench "${T_SCORE:-90}" benchmarks.scorers
