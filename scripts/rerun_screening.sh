#!/bin/sh
# Issue 34: the screening table under the connectivity rule, on one machine. Methods are
# compared only within one machine (CPU and GPU runs of one seed differ), so a CPU rerun goes
# to its own results root (benchmarks/results/cpu/<preset>/) and reruns every method, the
# baselines included, seed by seed: first 0.99-0.998 (where the old rule refused masks), the
# collapse shield with and without, then 0.95, the ablation and PuRL's grid.
# Resumable: run it again and it goes on where it stopped (finished cells are kept).
#   nice -n 19 sh scripts/rerun_screening.sh [PYTHON] [OUT_ROOT]
# Then: python -m benchmarks.compare --out-root OUT_ROOT --preset NAME --report-only
set -e
PY=${1:-.venv/bin/python}
ROOT=${2:-benchmarks/results/cpu}
run() { "$PY" -m benchmarks.compare --out-root "$ROOT" "$@"; }
for seeds in 1 2 3 5; do
  run --preset screening-resnet20 --ratios 0.99 0.995 0.998 --seeds $seeds
  run --preset screening-resnet20-no-shield --ratios 0.99 0.995 0.998 --seeds $seeds
  run --preset screening-resnet20 --seeds $seeds
  run --preset screening-resnet20-no-shield --seeds $seeds
done
run --preset screening-resnet20-synflow-only
# PuRL's grid predates PuRL's conformance change (issue 34, part 3)
run --preset purl-resnet20
