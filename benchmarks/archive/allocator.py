"""What ``jpanning.cpu.configure_allocator`` buys on a CPU: the same programs timed in child
processes with jpanning's malloc setting and with a baseline (glibc's default unless
``--baseline`` names another), the children alternating.

        python -m benchmarks.archive.allocator  # ResNet-20; train b128, scores b256
        python -m benchmarks.archive.allocator --model resnet20_panning --baseline "trim at 2 GiB"

XLA:CPU allocates each execution's temporary buffer anew; with glibc's default malloc a buffer
that large is mapped fresh from the kernel and unmapped when freed, so every execution
page-faults it back in. ``jpanning.cpu.configure()`` sets glibc's ``mallopt`` so freed memory
stays in the process (see :func:`jpanning.cpu.configure_allocator`). It cannot be undone inside
a process, so each setting runs in its own child: ``jpanning`` (what ``configure()`` does)
and a baseline (``--baseline``) set through glibc's environment variables, a user's choice
that jpanning leaves alone: ``glibc default`` (``MALLOC_ARENA_MAX`` set to glibc's own default
of 8 per core) or ``trim at 2 GiB`` (jpanning's setting before 2026-11-27: one arena, no mmap,
trim threshold 2**31 - 1, which still returns a free heap top above 2 GiB to the kernel, so
programs whose temporary buffers are bigger fault them in on every call). Everything else,
the XLA options included, is the same.

Programs: jpanning's training step (``--train-batch``, random 95%-sparse mask, as
``benchmarks.train_throughput``), SNIP, the fused Panning scores (SynFlow, SNIP, GraSP) and an
eval-mode forward pass (``--score-batch``), each compiled as jpanning compiles it; with torch
installed, PyTorch's training step and SNIP of the same network in the same child
(``benchmarks/reference/``). Per child: ``--warmup`` calls (the heap grows to its size), then
``--calls`` timed calls; per call, the minor page faults and system CPU time of the process.

Writes ``benchmarks/archive/results/allocator_<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results")
JPANNING = "jpanning"
DEFAULT = "glibc default"
# baseline arm -> (what it is, the glibc environment variables that set it)
BASELINES = {
    DEFAULT: (
        "glibc's default (`MALLOC_ARENA_MAX` set to its default, which jpanning leaves alone)",
        {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))},
    ),
    "trim at 2 GiB": (
        "jpanning's setting before 2026-11-27 (trim threshold 2**31 - 1) set through glibc's "
        "environment",
        {
            "MALLOC_ARENA_MAX": "1",
            "MALLOC_MMAP_MAX_": "0",
            "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
        },
    ),
}


def _arm_env(arm: str) -> dict:
    from jpanning import cpu

    env = {k: v for k, v in os.environ.items() if k not in cpu.MALLOC_ENV}
    return env | (BASELINES[arm][1] if arm in BASELINES else {})


def _programs(args) -> dict:
    """Name -> ``run()`` (one blocking call), compiled as jpanning compiles them."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.train_throughput import make_runner, random_masked_setup
    from jpanning import models, scores, train

    shape = (32, 32, 3)
    model, variables, masks, images, labels = random_masked_setup(
        args.model, shape, 0.95, args.train_batch
    )
    config = train.TrainConfig()
    runner = make_runner(model, variables, config, masks, images, labels, False)
    params, stats = variables["params"], variables["batch_stats"]
    apply_train = models.make_apply_fn(model, stats, train=True)
    apply_eval = models.make_apply_fn(model, stats, train=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(args.score_batch, *shape)).astype(np.float32)
    y = (np.arange(args.score_batch) % 10).astype(np.int32)
    batch = (jnp.asarray(x), jnp.asarray(y))
    compiled = {
        "snip": lambda p, b: scores.snip(apply_train, p, b),
        "fused": lambda p, b: scores.fused(apply_train, p, b, synflow_apply_fn=apply_eval),
        "eval forward": lambda p, b: apply_eval(p, b[0]),
    }
    run = {f"train step x {args.steps}": functools.partial(runner, args.steps)}
    for name, fn in compiled.items():
        c = jax.jit(fn).lower(params, batch).compile()
        run[name] = functools.partial(lambda c: jax.block_until_ready(c(params, batch)), c)
    try:
        import torch
    except ImportError:
        return run
    from benchmarks.cpu_conv import _torch_runner
    from benchmarks.reference import torch_models, torch_scorers

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t_train = _torch_runner(variables, masks, images, labels, config, threads, args.model)
    run[f"torch train step x {args.steps}"] = functools.partial(t_train, args.steps)
    tmodel = torch_models.from_flax(args.model, jax.device_get(params), 10)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y.astype(np.int64))
    run["torch snip"] = lambda: torch_scorers.snip(tmodel, xt, yt)
    return run


def child(args) -> dict:
    """One arm in this process: per program, seconds, minor faults and system seconds per
    timed call, and the resident set size at the end."""
    from jpanning import cpu

    run = _programs(args)
    out = {"malloc": cpu.allocator_setting(), "programs": {}}
    for name, fn in run.items():
        for _ in range(args.warmup):
            fn()
        seconds, faults, system = [], [], []
        for _ in range(args.calls):
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults.append(after.ru_minflt - before.ru_minflt)
            system.append(after.ru_stime - before.ru_stime)
        out["programs"][name] = {"seconds": seconds, "faults": faults, "system_s": system}
    with open("/proc/self/statm") as f:
        out["rss_mib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--score-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="children per arm, alternating")
    p.add_argument(
        "--baseline", default=DEFAULT, choices=list(BASELINES), help="the setting to compare"
    )
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--child", choices=[JPANNING, *BASELINES], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.child:
        from jpanning import cpu

        cpu.configure()  # as run.py; the baselines' MALLOC_* variables keep glibc's malloc theirs
        print(json.dumps(child(args)))
        return
    runs = {arm: [] for arm in (JPANNING, args.baseline)}
    for r in range(args.rounds):
        for arm in runs:
            cmd = [sys.executable, "-m", "benchmarks.archive.allocator", *argv, "--child", arm]
            out = subprocess.run(cmd, env=_arm_env(arm), capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {arm} done", flush=True)
    result = summarize(runs)
    if not result["malloc"][JPANNING].startswith("jpanning"):
        raise SystemExit(
            f"jpanning did not set its allocator here ({result['malloc'][JPANNING]}): it needs "
            "glibc, JAX on the CPU and JPANNING_CPU_FAST and MALLOC_* left unset"
        )
    write(args, argv, runs, result)


def summarize(runs: dict) -> dict:
    """Per program and arm (``jpanning`` and one baseline): medians over all timed calls of all
    children; the speed-up over the baseline."""
    (baseline,) = (arm for arm in runs if arm != JPANNING)
    names = list(runs[JPANNING][0]["programs"])
    med = {}
    for name in names:
        med[name] = {}
        for arm in runs:
            calls = [c["programs"][name] for c in runs[arm]]
            med[name][arm] = {
                key: statistics.median(v for c in calls for v in c[key])
                for key in ("seconds", "faults", "system_s")
            }
        med[name]["speedup"] = med[name][baseline]["seconds"] / med[name][JPANNING]["seconds"]
    return {
        "baseline": baseline,
        "median": med,
        "malloc": {arm: runs[arm][0]["malloc"] for arm in runs},
        "rss_mib": {arm: [c["rss_mib"] for c in runs[arm]] for arm in runs},
    }


def _torch_version() -> str:
    from importlib import metadata

    try:
        return f"torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        return "no torch"


def write(args, argv, runs, result) -> None:
    from jpanning import report

    env = report.environment()
    med = result["median"]
    data = {
        "benchmark": "allocator",
        "argv": argv,
        "settings": vars(args) | {"out": None, "child": None},
        **result,
        "children": runs,
        **env,
    }
    base = result["baseline"]
    rss = {arm: max(result["rss_mib"][arm]) for arm in runs}
    what, variables = BASELINES[base]
    what += ": " + ", ".join(f"{k}={v}" for k, v in variables.items())
    md = [
        f"# malloc setting on XLA:CPU: {args.model}, train batch {args.train_batch}, "
        f"score batch {args.score_batch}",
        "",
        f"Command: `python -m benchmarks.archive.allocator {shlex.join(argv)}`  ",
        report.machine_line(env, ("jax", "jaxlib", "flax"), extra=_torch_version()),
        "",
        f"{args.rounds} child processes per setting, alternating; in each, {args.warmup} "
        f"warm-up calls then {args.calls} timed ones. Medians over all timed calls. "
        f"`{JPANNING}`: {result['malloc'][JPANNING]} (what `jpanning.cpu.configure()` sets); "
        f"`{base}`: {what}. Faults: minor page faults of the process per call; system: kernel "
        "CPU seconds per call. PyTorch runs in the same children, so with the same setting.",
        "",
        f"| program | {base} s | {JPANNING} s | speed-up | faults ({base} → "
        f"{JPANNING}) | system s ({base} → {JPANNING}) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {m[base]['seconds']:.3f} | {m[JPANNING]['seconds']:.3f} | "
            f"{m['speedup']:.2f} | {m[base]['faults']:,.0f} → {m[JPANNING]['faults']:,.0f} "
            f"| {m[base]['system_s']:.3f} → {m[JPANNING]['system_s']:.3f} |"
            for n, m in med.items()
        ),
        "",
        f"Resident set size at the end of a child (the most over children): {base} "
        f"{rss[base]:,.0f} MiB, {JPANNING} {rss[JPANNING]:,.0f} MiB. With jpanning's "
        "setting the heap keeps its peak between executions instead of returning it.",
    ]
    report.write_result(args.out, f"allocator_{env['device']['platform']}", data, md)


if __name__ == "__main__":
    main()
