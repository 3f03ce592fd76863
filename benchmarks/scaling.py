"""Training throughput with the batch split over 1, 2 and 4 devices, measured in one run.

        python -m benchmarks.scaling --model resnet20 --batch-size 128 --devices 1 2 4

Each variant runs jpanning's masked train step (jpanning.train.make_train_step, a 95%-sparse
random mask) with the global batch split over the first N devices of a
:func:`jpanning.parallel.make_mesh` mesh and the state replicated, as ``run.py --devices N``
trains; "no mesh" is the plain single-device path ``run.py`` takes on one device. Timed windows
alternate between the variants so that machine noise hits all alike.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``, set here before
JAX starts): they share the same cores, so the figures show what XLA:CPU makes of several
smaller batches run side by side, not accelerator scaling. On a machine with several
accelerators the same command measures the real scaling.
Writes ``benchmarks/results/scaling_<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-shape", type=int, nargs=3, default=(32, 32, 3))
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per variant")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    flag = f"--xla_force_host_platform_device_count={max(args.devices)}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    from jpanning import cpu

    cpu.configure()  # the CPU tuning run.py has, before JAX starts

    import jax  # after XLA_FLAGS: the CPU platform reads it once, at start-up

    from benchmarks import timing
    from benchmarks.train_throughput import make_runner, random_masked_setup
    from jpanning import parallel, report, train

    model, variables, masks, images, labels = random_masked_setup(
        args.model, args.input_shape, args.sparsity, args.batch_size
    )
    config = train.TrainConfig()

    def runner(mesh):
        parallel.check_divisible(args.batch_size, mesh, "--batch-size")
        # the host-to-device split of each batch is part of every real step
        return make_runner(
            model, variables, config, masks, images, labels, False, mesh=mesh,
            put_every_step=True,
        )  # fmt: skip

    runners = {"no mesh": runner(None)}
    for n in args.devices:
        runners[f"{n} device{'s' if n > 1 else ''}"] = runner(parallel.make_mesh(n))
    ips, med, _ = timing.alternating_windows(runners, args.steps, args.repeats, args.batch_size)
    one = med[f"{args.devices[0]} device{'s' if args.devices[0] > 1 else ''}"]
    env = report.environment()
    platform = jax.devices()[0].platform
    simulated = platform == "cpu"
    result = {
        "benchmark": "scaling",
        "settings": vars(args) | {"out": None},
        "platform": platform,
        "simulated_devices": simulated,
        "images_per_second": ips,
        "median_images_per_second": med,
        "speedup_vs_first": {k: v / one for k, v in med.items()},
        **env,
    }
    command = timing.command("scaling", argv)
    md = [
        f"# Data-parallel training throughput, {args.model}, global batch {args.batch_size}, "
        f"input {tuple(args.input_shape)}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']['cpu']}, {env['machine']['cores']} cores; devices "
        f"{jax.devices()[0].device_kind} ({platform}"
        + (", simulated on the CPU: they share its cores" if simulated else "")
        + f"); jax {env['versions']['jax']}, flax {env['versions']['flax']}; {env['date']}",
        "",
        "| variant | median images/s | vs first mesh | windows (images/s) |",
        "|---|---|---|---|",
    ]
    for k in runners:
        md.append(
            f"| {k} | {med[k]:.1f} | {med[k] / one:.2f}x | "
            f"{', '.join(f'{x:.1f}' for x in ips[k])} |"
        )
    md += [
        "",
        f"{args.sparsity:.0%} sparse random mask, masked SGD step, {args.repeats} windows of "
        f"{args.steps} steps each, alternating; each step includes splitting its batch over "
        "the devices."
        + (
            " Simulated CPU devices share the same cores: the ratios show what XLA:CPU makes "
            "of N smaller per-device batches run side by side (against the cost of "
            "partitioning), not how real accelerators scale."
            if simulated
            else ""
        ),
    ]
    report.write_result(args.out, f"scaling_{platform}", result, md)


if __name__ == "__main__":
    main()
