"""One convolution layer's forward pass and gradients inside a loop body against outside one.

        python -m benchmarks.archive.loop_body_conv  # 3x3, 16x16x32, batch 100, 2 batches

Each part (forward; input gradient; kernel gradient; both gradients of
``sum(tanh(conv(x, w)))``) runs over ``--batches`` batches either in one ``lax.map`` (a while
loop) or as the same calls unrolled in one program; medians of ``--repeats`` calls, for two
convolutions under jpanning's process setting: ``lax.conv_general_dilated``, whose backward
convolutions XLA:CPU leaves off its fast layout inside a loop body, and
``jpanning.cpu.conv_general_dilated`` (what the models call), whose custom derivatives keep
them on it. Writes ``benchmarks/archive/results/loop_body_conv_<device>.{json,md}``.
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
from jax import lax

from jpanning import cpu, report

RESULTS = os.path.join(os.path.dirname(__file__), "results")
DN = ("NHWC", "HWIO", "NHWC")


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--size", type=int, default=16, help="input height and width")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    rng = np.random.default_rng(0)
    shape = (args.batches, args.batch_size, args.size, args.size, args.channels)
    xs = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    w = jnp.asarray(0.1 * rng.normal(size=(3, 3, args.channels, args.channels)), jnp.float32)

    convs = {"lax": lax.conv_general_dilated, "jpanning": cpu.conv_general_dilated}
    rows = {}
    for impl, conv in convs.items():

        def loss(x, w, conv=conv):
            return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME", dimension_numbers=DN)))

        parts = {
            "forward": loss,
            "input gradient": jax.grad(loss, argnums=0),
            "kernel gradient": jax.grad(loss, argnums=1),
            "both gradients": jax.grad(loss, argnums=(0, 1)),
        }
        for name, f in parts.items():
            variants = {
                "unrolled": lambda xs, w, f=f: [f(xs[i], w) for i in range(args.batches)],
                "lax.map": lambda xs, w, f=f: lax.map(lambda x: f(x, w), xs),
            }
            row = rows.setdefault(f"{name}, {impl}", {})
            for label, g in variants.items():
                compiled = jax.jit(g).lower(xs, w).compile()
                jax.block_until_ready(compiled(xs, w))
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(xs, w))
                    times.append(time.perf_counter() - start)
                row[label] = 1e3 * statistics.median(times)
            row["lax.map / unrolled"] = row["lax.map"] / row["unrolled"]
            print(name, impl, row, flush=True)
    env = report.environment()
    tag = env["device"]["platform"]
    result = {"benchmark": "loop_body_conv", "settings": vars(args) | {"out": None}, **env}
    result |= {"argv": argv, "results_ms": rows}
    md = [
        f"# One 3x3 convolution in a loop body, {args.batches} batches of "
        f"{args.batch_size} x {args.size}x{args.size}x{args.channels}",
        "",
        f"Command: `{' '.join(['python -m benchmarks.archive.loop_body_conv', *argv])}`  ",
        report.machine_line(env),
        "",
        f"Medians of {args.repeats} calls, ms for all {args.batches} batches.",
        "",
        "| part, convolution | unrolled ms | lax.map ms | lax.map / unrolled |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['unrolled']:.1f} | {r['lax.map']:.1f} | {r['lax.map / unrolled']:.1f} |"
        )
    report.write_result(args.out, f"loop_body_conv_{tag}", result, md)


if __name__ == "__main__":
    main()
