"""Training throughput of dense vs masked networks, measured in one run.

        python -m benchmarks.train_throughput --model resnet20 --batch-size 128

Both variants run the same jitted train step (jpanning.train.make_train_step) on the same
CIFAR-shaped random batch; the masked one wraps the optimizer in
``jpanning.masks.masked_optimizer`` with a 95%-sparse random mask. Timed windows alternate
between the two so that machine noise hits both alike. Writes medians and the ratio to
``benchmarks/results/train_throughput_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from jpanning import cpu, masks as masks_lib, models, parallel, report, scores, train

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def make_runner(
    model,
    variables,
    config,
    masks,
    images,
    labels,
    augment,
    *,
    mesh=None,
    put_every_step=False,
    compiler_options=None,
):
    """``run(n)``: ``n`` of jpanning's train steps on one batch, the state carried over calls.

    With a ``mesh`` (:func:`jpanning.parallel.make_mesh`) the batch is split over its devices
    and the state replicated; ``put_every_step`` places the batch again at every step (the
    host-to-device split a real step pays), else once. ``compiler_options``: XLA's for the
    step (None: the process's settings, as :func:`jpanning.train.make_train_step` compiles it).
    """
    tx = train.make_optimizer(config, 10_000, masks)
    holder = {"state": parallel.replicate(mesh, train.create_train_state(variables, tx, masks))}
    step = jax.jit(
        train.train_step_fn(model, tx, augment=augment),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
    key = jax.random.key(0)

    def place():
        if mesh is None:
            return jnp.asarray(images), jnp.asarray(labels)
        return parallel.put_batch(mesh, (images, labels))

    batch = None if put_every_step else place()

    def run(n):
        s = holder["state"]
        for i in range(n):
            x, y = place() if put_every_step else batch
            s, metrics = step(s, jax.random.fold_in(key, i), x, y)
        jax.block_until_ready(metrics["loss"])
        holder["state"] = s

    return run


def random_masked_setup(model_name: str, input_shape, sparsity: float, batch_size: int):
    """The benchmarks' workload: ``(model, variables, masks, images, labels)``, a 10-class
    model with a random global mask at ``sparsity`` and one random batch (numpy arrays)."""
    model = models.create_model(model_name, 10)
    variables = models.init_variables(model, jax.random.key(0), input_shape)
    prunable = masks_lib.prunable_tree(variables["params"])
    random_scores = scores.random(None, variables["params"], None, key=jax.random.key(1))
    masks = masks_lib.global_topk(random_scores, sparsity, prunable)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch_size, *input_shape)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size).astype(np.int32)
    return model, variables, masks, images, labels


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-shape", type=int, nargs=3, default=(32, 32, 3))
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed window (default: windows of about 1 s, at least 10 steps)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed windows per variant")
    p.add_argument("--augment", action="store_true", help="include crop+flip augmentation")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    model, variables, masks, images, labels = random_masked_setup(
        args.model, args.input_shape, args.sparsity, args.batch_size
    )
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    config = train.TrainConfig()
    runners = {
        "dense": make_runner(model, variables, config, None, images, labels, args.augment),
        "masked": make_runner(model, variables, config, masks, images, labels, args.augment),
    }
    ips, med, steps = timing.alternating_windows(runners, args.steps, args.repeats, args.batch_size)
    overhead = med["dense"] / med["masked"] - 1
    env = report.environment()
    result = {
        "benchmark": "train_throughput",
        "settings": vars(args) | {"out": None, "steps": steps},
        "images_per_second": ips,
        "median_images_per_second": med,
        "masked_overhead": overhead,
        "goal": "masked costs at most 5% more than dense",
        "goal_met": overhead <= 0.05,
        **env,
    }
    tag = f"{env['device']['platform']}"
    md = [
        f"# Training throughput, {args.model}, batch {args.batch_size}, "
        f"input {tuple(args.input_shape)}",
        "",
        *timing.header(timing.command("train_throughput", argv), env, ("jax", "flax")),
        "",
        "| variant | median images/s | windows (images/s) |",
        "|---|---|---|",
    ]
    for k in runners:
        md.append(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in ips[k])} |")
    md += [
        "",
        f"Masked overhead: {100 * overhead:+.1f}% (goal: at most +5%; "
        f"{'met' if overhead <= 0.05 else 'not met'}), {args.sparsity:.0%} sparse random "
        f"mask, {args.repeats} windows of {steps} steps each, alternating.",
    ]
    report.write_result(args.out, f"train_throughput_{tag}", result, md)


if __name__ == "__main__":
    main()
