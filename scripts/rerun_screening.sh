#!/bin/sh
# Issue 34: rerun the screening-resnet20 cells that the older rule refused (and the new,
# shielded Panning and RL Panning cells), most telling first, seed by seed, then PuRL's grid. Resumable: run it
# again and it goes on where it stopped (finished cells are kept; benchmarks.compare).
#   nice -n 19 sh scripts/rerun_screening.sh [PYTHON] [OUT_ROOT]
# Then: python -m benchmarks.compare --preset NAME --report-only --readme README.md
set -e
PY=${1:-.venv/bin/python}
ROOT=${2:-benchmarks/results}
run() { "$PY" -m benchmarks.compare --out-root "$ROOT" "$@"; }
for seeds in 1 2 3 5; do
  # the collapse shield, with and without, where it can act
  run --preset screening-resnet20 --methods rlpanning panning --ratios 0.99 0.995 0.998 --seeds $seeds
  run --preset screening-resnet20-no-shield --methods rlpanning panning --ratios 0.99 0.995 0.998 --seeds $seeds
  # the baselines the older rule refused, and the rest of the grid
  run --preset screening-resnet20 --ratios 0.99 0.995 0.998 --seeds $seeds
  run --preset screening-resnet20 --seeds $seeds
  run --preset screening-resnet20-no-shield --seeds $seeds
done
run --preset screening-resnet20-synflow-only
# PuRL's grid predates PuRL's conformance change (issue 34, part 3)
run --preset purl-resnet20
