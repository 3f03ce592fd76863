"""Which programs gained from ``jpanning.cpu.first_order_options`` on XLA:CPU: each of
jpanning's programs compiled twice, with the process setting and with those options, timed
alternately in one process. The library gave these options to its first-order programs
until 2026-12 (issue 28); :data:`FIRST_ORDER_TYPES` keeps them here.

        python -m benchmarks.archive.cpu_options  # ResNet-20, batch 128

The options add YNNPACK's elementwise fusions (:data:`FIRST_ORDER_TYPES`) to the
process setting (:data:`jpanning.cpu.PROCESS_TYPES`). jpanning gives them to its programs
with first derivatives only (training and evaluation steps, SNIP, the masked network's loss
and ‖g‖², the Panning environment's pool-mode step) and not to those with second derivatives
(GraSP's Hessian-vector product, GradNorm's gradient of ‖g‖², the recompute-dense step); this
benchmark is the measurement behind that split. Programs, on ``--model`` with a random
``--sparsity`` mask and one random batch of ``--batch-size`` CIFAR-shaped examples:
``eval forward`` (eval-mode BatchNorm), ``synflow`` (masked, all-ones input), ``snip``,
``masked loss and ‖g‖²``, ``grad_norm`` (GradNorm score), ``grasp``, and one Panning
environment step at round 50 of 100 in pool mode, recomputing the dense maps, and vmapped
over 4 environments in pool mode (each with its own mask).

Writes ``benchmarks/archive/results/cpu_options_<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.env_step import mid_episode
from benchmarks.timing import time_all
from benchmarks.train_throughput import random_masked_setup
from jpanning import cpu, env as env_lib, masks as masks_lib, models, report, scores

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PROCESS = "process setting"
FIRST_ORDER = "first_order_options"
SECOND_ORDER = ("grad_norm", "grasp", "env step (recompute dense)")
FIRST_ORDER_TYPES = ("INDIVIDUAL_DOT", "REDUCE", "ELTWISE")  # jpanning.cpu's, until 2026-12


def programs(model_name: str, batch_size: int, sparsity: float) -> dict:
    """Per program: ``(fn, args)`` for ``jax.jit(fn).lower(*args)``; weights, masks and data
    are arguments, never constants baked into the program."""
    shape = (32, 32, 3)
    model, variables, masks, _, _ = random_masked_setup(model_name, shape, sparsity, 8)
    params, stats = variables["params"], variables["batch_stats"]
    prunable = masks_lib.prunable_tree(params)
    train_fn = models.make_apply_fn(model, stats, train=True)
    eval_fn = models.make_apply_fn(model, stats, train=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch_size, *shape)).astype(np.float32)
    y = (np.arange(batch_size) % 10).astype(np.int32)
    batch = (jnp.asarray(x), jnp.asarray(y))
    env = env_lib.PanningEnv(train_fn, eval_fn, prunable, shape)
    pool = env.make_params(params, x[None], y[None])
    fresh = env.make_params(
        params, x, y, scoring="fresh", samples_per_class=max(batch_size // 10, 1)
    )
    envs = 4
    step_args, batched_args = mid_episode(env, pool, envs)
    return {
        "eval forward": (lambda p, b: eval_fn(p, b[0]), (params, batch)),
        "synflow": (
            lambda p, m, b: scores.synflow(eval_fn, p, b, masks=m, prunable=prunable),
            (params, masks, batch),
        ),
        "snip": (lambda p, b: scores.snip(train_fn, p, b), (params, batch)),
        "masked loss and ‖g‖²": (
            lambda p, m, b: scores.loss_and_grad_norm(train_fn, p, b, m, prunable=prunable),
            (params, masks, batch),
        ),
        "grad_norm": (lambda p, b: scores.grad_norm(train_fn, p, b), (params, batch)),
        "grasp": (lambda p, b: scores.grasp(train_fn, p, b, prunable=prunable), (params, batch)),
        "env step (pool)": (env.step, (*step_args, pool)),
        "env step (recompute dense)": (env.step, (*step_args, fresh)),
        f"env step x {envs} (vmap, pool)": (
            jax.vmap(env.step, in_axes=(0, 0, 0, None)),
            (*batched_args, pool),
        ),
    }


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if cpu.user_choice() or not cpu._jaxlib_measured() or jax.default_backend() != "cpu":
        raise SystemExit(
            "cpu_options compares XLA:CPU settings: it needs a CPU backend, a measured jaxlib "
            f"{cpu.MEASURED_JAXLIBS} and the setting left on (JPANNING_CPU_FAST unset)"
        )
    first_order = cpu.options(FIRST_ORDER_TYPES)
    variants = {PROCESS: None, FIRST_ORDER: first_order}
    run = {}
    for name, (fn, fn_args) in programs(args.model, args.batch_size, args.sparsity).items():
        for variant, options in variants.items():
            # a new function per variant, so jit's trace cache cannot hand one to the other
            g = functools.partial(lambda f, *a: f(*a), fn)
            compiled = jax.jit(g, compiler_options=options).lower(*fn_args).compile()
            run[(name, variant)] = functools.partial(
                lambda c, a: jax.block_until_ready(c(*a)), compiled, fn_args
            )
        print(name, "compiled", flush=True)
    times = time_all(run, args.repeats)
    names = list(dict.fromkeys(name for name, _ in run))
    med = {name: {v: statistics.median(times[(name, v)]) for v in variants} for name in names}
    speedup = {name: med[name][PROCESS] / med[name][FIRST_ORDER] for name in names}
    env = report.environment()
    result = {
        "benchmark": "cpu_options",
        "argv": argv,
        "settings": vars(args) | {"out": None},
        "options": {PROCESS: cpu.fusion_types(cpu.PROCESS_TYPES), FIRST_ORDER: first_order},
        "convolution": cpu.convolution_library(),
        "seconds": {f"{n} / {v}": t for (n, v), t in times.items()},
        "median_seconds": med,
        "speedup": speedup,
        "second_order": list(SECOND_ORDER),
        **env,
    }
    md = [
        f"# XLA:CPU options per program: {args.model}, batch {args.batch_size} x (32, 32, 3)",
        "",
        f"Command: `{' '.join(['python -m benchmarks.archive.cpu_options', *argv])}`  ",
        report.machine_line(env, ("jax", "jaxlib", "flax")),
        "",
        f"Medians of {args.repeats} alternating calls, seconds. `{PROCESS}`: "
        f"`{cpu.YNN_OPTION}` = {', '.join(cpu.PROCESS_TYPES)} "
        "(what `jpanning.cpu.configure()` sets); "
        f"`{FIRST_ORDER}`: {', '.join(FIRST_ORDER_TYPES)}, given per compilation to "
        "jpanning's programs with first derivatives only, where XLA computes the "
        f"convolutions. Convolutions here: {cpu.convolution_library()} (`JPANNING_CPU_CONV`). "
        "Speed-up above 1: the options help.",
        "",
        f"| program | derivatives | {PROCESS} | {FIRST_ORDER} | speed-up |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {'second' if n in SECOND_ORDER else 'first or none'} | "
            f"{med[n][PROCESS]:.4f} | {med[n][FIRST_ORDER]:.4f} | {speedup[n]:.2f} |"
            for n in names
        ),
    ]
    report.write_result(args.out, f"cpu_options_{env['device']['platform']}", result, md)


if __name__ == "__main__":
    main()
