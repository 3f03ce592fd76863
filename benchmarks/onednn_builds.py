"""Two builds of ``jpanning/_onednn_conv.so`` side by side (say oneDNN 2.6 from Debian and 3.2
from PyPI, ``scripts/build_onednn.sh``): the same programs timed in child processes that
alternate between the builds, so that a shared machine's load falls on both alike.

        ONEDNN=debian OUT=/tmp/onednn2.so sh scripts/build_onednn.sh .venv/bin/python
        ONEDNN=pip OUT=/tmp/onednn3.so sh scripts/build_onednn.sh .venv/bin/python
        python -m benchmarks.onednn_builds /tmp/onednn2.so /tmp/onednn3.so

Programs, all on jpanning's CPU setting: ResNet-20's training step (batch ``--train-batch``,
random 95%-sparse mask, as ``benchmarks.train_throughput``), SNIP and the eval forward pass
(``--score-batch``), and each oneDNN primitive alone (forward, input gradient, kernel gradient;
:func:`jpanning.onednn.primitives`) on one 3x3 SAME convolution of each ResNet-20 stage and
the two stride-2 ones between them (batch ``--train-batch``). Each child points
:data:`jpanning.onednn.LIBRARY` at its build before first use; per program ``--warmup`` calls,
then ``--calls`` timed ones; medians over all timed calls of all children of a build.

Writes ``benchmarks/results/onednn_builds_<platform>.{json,md}`` (``--out`` for the folder).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

from benchmarks import timing

RESULTS = os.path.join(os.path.dirname(__file__), "results")
# (input HxW, input channels, output channels, stride) on CIFAR's 32x32, 3x3 SAME.
LAYERS = ((32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2), (8, 64, 64, 1))


def _programs(args) -> dict:
    """Name -> ``run()`` (one blocking call)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.train_throughput import make_runner, random_masked_setup
    from jpanning import models, onednn, scores, train

    shape = (32, 32, 3)
    model, variables, masks, images, labels = random_masked_setup(
        "resnet20", shape, 0.95, args.train_batch
    )
    runner = make_runner(model, variables, train.TrainConfig(), masks, images, labels, False)
    params, stats = variables["params"], variables["batch_stats"]
    apply_train = models.make_apply_fn(model, stats, train=True)
    apply_eval = models.make_apply_fn(model, stats, train=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(args.score_batch, *shape)).astype(np.float32)
    batch = (jnp.asarray(x), jnp.asarray(np.arange(args.score_batch) % 10, jnp.int32))
    run = {f"train step x {args.steps}": functools.partial(runner, args.steps)}
    for name, fn in {
        "SNIP scores": lambda p, b: scores.snip(apply_train, p, b),
        "eval forward": lambda p, b: apply_eval(p, b[0]),
    }.items():
        c = jax.jit(fn).lower(params, batch).compile()
        run[name] = timing.blocking(functools.partial(c, params, batch))
    forward, input_grad, kernel_grad = onednn.primitives()
    n = args.train_batch
    for hw, c, o, s in LAYERS:
        oh = hw // s
        pad = (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1)  # SAME
        kw = {"strides": (s, s), "padding": pad}
        xs = jnp.asarray(rng.normal(size=(n, hw, hw, c)), jnp.float32)
        ws = jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(n, oh, oh, o)), jnp.float32)
        label = f"{hw}x{hw}x{c} -> {o}, stride {s}"
        for kind, fn, operands in (
            ("forward", jax.jit(functools.partial(forward, **kw)), (xs, ws)),
            (
                "input grad",
                jax.jit(functools.partial(input_grad, input_hw=(hw, hw), **kw)),
                (dy, ws),
            ),
            (
                "kernel grad",
                jax.jit(functools.partial(kernel_grad, kernel_hw=(3, 3), **kw)),
                (xs, dy),
            ),
        ):
            run[f"{label}: {kind}"] = timing.blocking(functools.partial(fn, *operands))
    return run


def child(args) -> dict:
    """One build in this process: its oneDNN version and, per program, seconds per call."""
    from jpanning import onednn

    onednn.LIBRARY = os.path.abspath(args.child)
    if not onednn.available():
        raise SystemExit(f"{args.child}: {onednn.unavailable_reason()}")
    out = {"onednn": onednn.version(), "programs": {}}
    for name, fn in _programs(args).items():
        out["programs"][name] = timing.time_calls(fn, args.calls, warmup=args.warmup)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs=2, help="two _onednn_conv.so files: baseline, then the other")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--score-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="children per build, alternating")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = {build: [] for build in args.builds}
    for r in range(args.rounds):
        order = args.builds if r % 2 == 0 else args.builds[::-1]  # ABBA
        for build in order:
            cmd = [sys.executable, "-m", "benchmarks.onednn_builds", *argv, "--child", build]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[build].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {build} done", flush=True)
    write(args, argv, runs)


def write(args, argv, runs) -> None:
    from jpanning import report

    env = report.environment()
    base, other = args.builds
    version = {b: runs[b][0]["onednn"] for b in runs}
    names = list(runs[base][0]["programs"])
    med = {
        name: timing.medians({b: [s for c in runs[b] for s in c["programs"][name]] for b in runs})
        for name in names
    }
    data = {
        "benchmark": "onednn_builds",
        "argv": argv,
        "settings": vars(args) | {"out": None, "child": None},
        "onednn": version,
        "median_s": med,
        "children": runs,
        **env,
    }
    a, b = (f"oneDNN {version[x]}" for x in (base, other))
    md = [
        f"# Two oneDNN builds of jpanning's CPU convolution: {a} and {b}",
        "",
        *timing.header(timing.command("onednn_builds", argv), env, ("jax", "jaxlib", "flax")),
        "",
        (
            f"{args.rounds} child processes per build, alternating (ABBA); in each, "
            f"{args.warmup} warm-up calls then {args.calls} timed ones per program. Medians "
            f"over all timed calls (ms). `{a}`: `{base}`; `{b}`: `{other}`. Speed-up: {a} time "
            f"/ {b} time (above 1: {b} is faster). ResNet-20 with a random 95%-sparse mask; "
            f"layers 3x3 SAME, batch {args.train_batch}."
        ),
        "",
        f"| program | {a} ms | {b} ms | speed-up |",
        "|---|---|---|---|",
        *(
            f"| {n} | {1e3 * m[base]:.2f} | {1e3 * m[other]:.2f} | {m[base] / m[other]:.2f} |"
            for n, m in med.items()
        ),
    ]
    report.write_result(args.out, f"onednn_builds_{env['device']['platform']}", data, md)


if __name__ == "__main__":
    main()
