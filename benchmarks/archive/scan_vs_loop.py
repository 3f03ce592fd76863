"""Iterative pruning rounds: one ``lax.scan`` over rounds against a host loop of jitted rounds.

        python -m benchmarks.archive.scan_vs_loop  # ResNet-20, SNIP rounds, batch 100

One round is a SNIP score of the masked network (train-mode BatchNorm, scoring batch of
``--batch-size`` CIFAR-shaped examples) and a global top-k, as in ``iter_snip``/``force``.
Both variants run the same ``--rounds`` rounds from the same masks; medians over
``--repeats``. XLA:CPU runs ``lax.conv_general_dilated``'s backward convolutions inside a
loop body off its fast path (``benchmarks/archive/loop_body_conv.py``); the models' convolution,
``jpanning.cpu.conv_general_dilated``, has custom derivatives that keep them on it, and this
benchmark checks that a scan over whole rounds costs no more than the host loop that
``jpanning.pruning.iterative_masks`` and ``jpanning.panning.panning`` use (for progress
reporting and early stops).
Writes ``benchmarks/archive/results/scan_vs_loop_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jpanning import cpu, masks as masks_lib, models, report, scores

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--input-shape", type=int, nargs=3, default=(32, 32, 3))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])

    model = models.create_model(args.model, 10)
    variables = models.init_variables(model, jax.random.key(0), tuple(args.input_shape))
    params = variables["params"]
    prunable = masks_lib.prunable_tree(params)
    apply_fn = models.make_apply_fn(model, variables["batch_stats"], train=True)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch_size, *args.input_shape)), jnp.float32)
    batch = (x, jnp.arange(args.batch_size) % 10)
    schedule = jnp.asarray(masks_lib.exponential_schedule(0.9, args.rounds))

    def one_round(params, masks, sparsity):
        s = scores.snip(apply_fn, params, batch, masks=masks)
        return masks_lib.global_topk(s, sparsity, prunable)

    round_jit = jax.jit(one_round)

    def loop():
        masks = masks_lib.ones_like(params)
        for s in schedule:
            masks = round_jit(params, masks, s)
        return jax.block_until_ready(masks)

    @jax.jit
    def scanned(params, schedule):
        step = lambda m, s: (one_round(params, m, s), None)
        return jax.lax.scan(step, masks_lib.ones_like(params), schedule)[0]

    def scan():
        return jax.block_until_ready(scanned(params, schedule))

    # The two compile to different convolution code, so scores differ in the last float bits
    # and the top-k may break near-ties differently; count how many mask entries disagree.
    differ = int(
        sum(jnp.sum(a != b) for a, b in zip(jax.tree.leaves(loop()), jax.tree.leaves(scan())))
    )
    total = int(sum(x.size for x in jax.tree.leaves(params)))
    times = {"host loop": [], "lax.scan": []}
    for _ in range(args.repeats):
        for name, fn in (("host loop", loop), ("lax.scan", scan)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    env = report.environment()
    tag = env["device"]["platform"]
    result = {
        "benchmark": "scan_vs_loop",
        "argv": argv,
        "settings": vars(args) | {"out": None},
        "seconds_per_round": times,
        "median_seconds_per_round": med,
        "scan/loop": med["lax.scan"] / med["host loop"],
        "mask_entries_differing": differ,
        "mask_entries": total,
        **env,
    }
    md = [
        f"# Pruning rounds: lax.scan vs host loop, {args.model}, SNIP + top-k, batch "
        f"{args.batch_size} x {tuple(args.input_shape)}",
        "",
        f"Command: `{' '.join(['python -m benchmarks.archive.scan_vs_loop', *argv])}`  ",
        report.machine_line(env),
        "",
        "| variant | median s per round |",
        "|---|---|",
        *(f"| {k} | {v:.3f} |" for k, v in med.items()),
        "",
        f"lax.scan / host loop: {result['scan/loop']:.2f} ({args.rounds} rounds, "
        f"{args.repeats} repeats; mask entries that differ between the two: {differ} of {total}).",
    ]
    if differ:
        md += [
            "",
            "The two programs round the convolutions differently; where that flips a weight at "
            "the top-k threshold, the next rounds rescore a different network and the flips "
            "multiply, so iterative masks are reproducible for one compiled program on one "
            "device, not across programs or devices.",
        ]
    report.write_result(args.out, f"scan_vs_loop_{tag}", result, md)


if __name__ == "__main__":
    main()
