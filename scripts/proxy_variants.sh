#!/usr/bin/env bash
# Issue 35's search variants on the proxy environment (jpanning.proxy), 3 seeds each, each
# judged on the real ResNet-20 environment through its ranges widened there first.
#
#     scripts/proxy_variants.sh [OUT]            # default OUT: runs/proxy-variants
#     JOBS=2 scripts/proxy_variants.sh           # two searches side by side, one thread each
#                                                # (slower with the search's process settings:
#                                                # ~8 steps/s each against 22 for one alone)
#     VARIANTS="mse huber" SEEDS="0" STEPS=50000 scripts/proxy_variants.sh
#     EVAL=0 scripts/proxy_variants.sh           # the searches only
#     EVAL=proxy scripts/proxy_variants.sh       # judged on the proxy only
#
# Resumable: run it again after a stop. A search goes on from its newest checkpoint
# (OUT/<variant>-s<seed>/checkpoints, one every 2,000 steps); a finished one (policy.msgpack
# there) is skipped; its evaluation (benchmarks/results/policy_eval/proxy-<variant>-s<seed>)
# resumes from the episodes already written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/proxy-variants}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-1}
STEPS=${STEPS:-50000}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"mse huber floor1 huber-floor1 demo1000 gap select huber-floor1-demo1000 demo1000-select gamma0"}
EVAL_SEEDS=${EVAL_SEEDS:-"10 11 12"}  # kept apart from the search seeds
# 0: searches only (finished searches are skipped when run again); proxy: each policy judged on
# the proxy (minutes); 1: on the proxy, then on the real environment
EVAL=${EVAL:-1}

flags() {
  case "$1" in
    mse) echo "" ;;                                           # the authors' TD3
    huber) echo "--critic-loss huber" ;;
    floor1) echo "--target-reward-floor -1" ;;                # collapse penalty clipped in y
    huber-floor1) echo "--critic-loss huber --target-reward-floor -1" ;;
    demo1000) echo "--demo-steps 1000" ;;                     # half of warm-up demonstrated
    gap) echo "--observe-gap" ;;                              # the signed sparsity gap observed
    select) echo "--select-every 2000" ;;                     # checkpoint selection
    huber-floor1-demo1000) echo "--critic-loss huber --target-reward-floor -1 --demo-steps 1000" ;;
    demo1000-select) echo "--demo-steps 1000 --select-every 2000" ;;  # docs/policy.md
    gamma0) echo "--gamma 0" ;;                               # myopic critic: docs/policy.md
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

one() {  # one variant x seed: search (resumable), then judge on the real environment
  local variant=$1 seed=$2 dir="$OUT/$1-s$2"
  mkdir -p "$dir"
  if [ ! -f "$dir/policy.msgpack" ]; then
    # shellcheck disable=SC2046
    "$PY" -m benchmarks.proxy_search --out "$dir" --seed "$seed" --agent-steps "$STEPS" \
      $(flags "$variant") >>"$dir/search.log" 2>&1
  fi
  [ "$EVAL" != 0 ] || return 0
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.policy_eval --policy "$dir/policy.msgpack" --seeds $EVAL_SEEDS \
    --proxy proxy --name "onproxy-$variant-s$seed" >>"$dir/eval.log" 2>&1
  [ "$EVAL" = 1 ] || return 0
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.policy_eval --policy "$dir/policy.msgpack" --seeds $EVAL_SEEDS \
    --widen-episodes 5 --name "proxy-$variant-s$seed" >>"$dir/eval.log" 2>&1
}

export -f one flags
export OUT PY STEPS EVAL_SEEDS EVAL
if [ "$JOBS" -gt 1 ]; then
  # separate single-threaded processes (benchmarks/results/proxy/parallel_cpu.md)
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  export OMP_NUM_THREADS=1
fi
for variant in $VARIANTS; do for seed in $SEEDS; do echo "$variant $seed"; done; done |
  xargs -P "$JOBS" -L 1 bash -c 'one "$0" "$1"'
"$PY" -m benchmarks.policy_variants --searches "$OUT"
echo "done: $OUT; tables in benchmarks/results/policy_variants/"
