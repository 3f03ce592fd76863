"""Scorer speed: jpanning's SNIP, GraSP, SynFlow and fused scorer against PyTorch, in one run.

        python -m benchmarks.scorers                     # ResNet-20 and VGG-19-BN, batch 100
        python -m benchmarks.scorers --quick             # 2 repeats, batch 20

For each network (CIFAR shapes, 32x32x3 inputs, 10 classes) the same weights are loaded in
JAX (``jpanning.models``) and in PyTorch (``benchmarks/reference``). Timed, each a median over
``--repeats`` calls that alternate between all variants so machine noise hits them alike:

* JAX (jitted, compiled before timing): ``snip``, ``grasp``, ``synflow`` and ``fused``
  (all three in one call; ``--chunk-size`` to chunk its batch).
* PyTorch (eager): SNIP, GraSP with double backward, SynFlow, and all three sharing GraSP's
  gradient for SNIP.
* The bare forward pass (train mode) in both, to separate the frameworks' convolution speed
  from the scorers' own overhead.
* The floor, in JAX: the bare passes the fused scorer needs, each jitted alone: one loss
  gradient, one Hessian-vector product (``jax.jvp`` of ``jax.grad``) and one SynFlow gradient.

SNIP and GraSP score with BatchNorm in train mode (batch statistics), SynFlow in eval mode,
in both frameworks. The run also checks that both frameworks compute the same scores (largest
deviation after scaling each score vector to unit norm). Writes medians, ratios (JAX/PyTorch,
fused/floor), machine, versions and date to ``benchmarks/results/scorers_<device>[_quick]``.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.reference import torch_device
from jpanning import cpu, masks as masks_lib, models, report, scores

RESULTS = os.path.join(os.path.dirname(__file__), "results")
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def scoring_batch(batch_size: int, seed: int = 0):
    """Random CIFAR-shaped images with balanced labels (``batch_size / 10`` per class)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, *INPUT_SHAPE)).astype(np.float32)
    labels = (np.arange(batch_size) % NUM_CLASSES).astype(np.int32)
    return images, labels


def jax_variants(name: str, batch_size: int, chunk_size):
    """Jitted JAX scorers and floor passes, with their arguments bound."""
    model = models.create_model(name, NUM_CLASSES)
    variables = models.init_variables(model, jax.random.key(0), INPUT_SHAPE)
    params, stats = variables["params"], variables["batch_stats"]
    apply_train = models.make_apply_fn(model, stats, train=True)
    apply_eval = models.make_apply_fn(model, stats, train=False)
    images, labels = scoring_batch(batch_size)
    batch = (jnp.asarray(images), jnp.asarray(labels))

    snip = jax.jit(functools.partial(scores.snip, apply_train))
    grasp = jax.jit(functools.partial(scores.grasp, apply_train))
    synflow = jax.jit(functools.partial(scores.synflow, apply_eval))
    fused = jax.jit(
        functools.partial(
            scores.fused, apply_train, synflow_apply_fn=apply_eval, chunk_size=chunk_size
        )
    )

    loss = lambda w: scores.cross_entropy(apply_train(w, batch[0]), batch[1])
    grad = jax.jit(jax.grad(loss))
    flags = masks_lib.prunable_tree(params)
    tangent = jax.tree.map(lambda g, f: g if f else jnp.zeros_like(g), grad(params), flags)
    hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(loss), (w,), (v,))[1])
    ones = jnp.ones((1, *INPUT_SHAPE))
    flow_grad = jax.jit(jax.grad(lambda w: jnp.sum(apply_eval(w, ones))))
    abs_params = jax.tree.map(jnp.abs, params)
    forward = jax.jit(apply_train)

    run = {
        "jax/snip": lambda: snip(params, batch),
        "jax/grasp": lambda: grasp(params, batch),
        "jax/synflow": lambda: synflow(params, batch),
        "jax/fused": lambda: fused(params, batch),
        "floor/grad": lambda: grad(params),
        "floor/hvp": lambda: hvp(params, tangent),
        "floor/synflow_grad": lambda: flow_grad(abs_params),
        "jax/forward": lambda: forward(params, batch[0]),
    }
    return params, images, labels, {k: timing.blocking(f) for k, f in run.items()}


def torch_variants(name: str, params, images, labels, threads: int, device: str = "cpu"):
    import torch

    from benchmarks.reference import torch_models, torch_scorers

    torch.set_num_threads(threads)
    model = torch_models.from_flax(name, jax.device_get(params), NUM_CLASSES).to(device)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    shape = tuple(x.shape[1:])
    run = {
        "torch/snip": lambda: torch_scorers.snip(model, x, y),
        "torch/grasp": lambda: torch_scorers.grasp(model, x, y),
        "torch/synflow": lambda: torch_scorers.synflow(model, shape),
        "torch/fused": lambda: torch_scorers.fused(model, x, y),
        "torch/forward": lambda: torch_scorers.forward(model, x),
    }
    run = {k: torch_device.synchronized(fn, device) for k, fn in run.items()}
    return torch_device.describe(device), run


def _flat(vectors) -> np.ndarray:
    v = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in vectors])
    return v / np.linalg.norm(v)


def agreement(name: str, jax_scores: dict, torch_scores: dict) -> dict:
    """Largest |difference| of the unit-norm score vectors (prunable weights), per scorer."""
    from benchmarks.reference import torch_models

    out = {}
    for key in ("snip", "grasp", "synflow"):
        layers = [
            (kind, leaves["kernel"])
            for kind, leaves in torch_models.flax_layers(name, jax_scores[key])
            if kind != "bn"
        ]
        a = _flat(torch_models.kernel_to_torch(kind, k) for kind, k in layers)
        b = _flat(t.cpu().numpy() for t in torch_scores[key])
        out[key] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    return out


def summarize(times: dict) -> dict:
    med = timing.medians(times)
    floor = med["floor/grad"] + med["floor/hvp"] + med["floor/synflow_grad"]
    ratios = {
        f"jax/torch {k}": med[f"jax/{k}"] / med[f"torch/{k}"]
        for k in ("snip", "grasp", "synflow", "fused", "forward")
    }
    ratios["fused/floor"] = med["jax/fused"] / floor
    # jvp of grad returns g as its primal output, so g + Hg need not cost a separate gradient.
    ratios["fused/(hvp+synflow_grad)"] = med["jax/fused"] / (
        med["floor/hvp"] + med["floor/synflow_grad"]
    )
    ratios["fused/(snip+grasp+synflow), jax"] = med["jax/fused"] / (
        med["jax/snip"] + med["jax/grasp"] + med["jax/synflow"]
    )
    return {"median_seconds": med, "floor_seconds": floor, "ratios": ratios}


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["resnet20", "vgg19"], choices=["resnet20", "vgg19"]
    )
    p.add_argument(
        "--batch-size", type=int, default=100, help="scoring batch (default 100 = 10 per class)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="chunk of the fused scorer")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    torch_device.add_argument(p)
    p.add_argument("--quick", action="store_true", help="2 repeats, batch 20 (smoke run)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch_size = 2, 20
    args.torch_device = torch_device.resolve_or_exit(p, args.torch_device)

    env = report.environment()
    results = {}
    torch_info = None
    for name in args.models:
        params, images, labels, run = jax_variants(name, args.batch_size, args.chunk_size)
        torch_info, torch_run = torch_variants(
            name, params, images, labels, args.threads, args.torch_device
        )
        run.update(torch_run)
        check = agreement(name, run["jax/fused"](), run["torch/fused"]())
        times = timing.time_all(run, args.repeats)
        results[name] = {
            "params": models.count_params(params),
            "times_seconds": times,
            "max_deviation_jax_vs_torch": check,
            **summarize(times),
        }
        print(f"{name}: {results[name]['ratios']}", flush=True)

    env["versions"]["torch"] = torch_info["version"]
    env["torch"] = torch_info
    result = {
        "benchmark": "scorers",
        "settings": vars(args) | {"out": None},
        "results": results,
        **env,
    }
    tag = env["device"]["platform"] + ("_quick" if args.quick else "")
    report.write_result(args.out, f"scorers_{tag}", result, markdown(args, env, results))


def markdown(args, env, results) -> list[str]:
    md = [
        f"# Scorer timings, scoring batch {args.batch_size} x {INPUT_SHAPE}"
        f"{' (quick)' if args.quick else ''}",
        "",
        *timing.header(
            f"python -m benchmarks.scorers{' --quick' if args.quick else ''} "
            f"--repeats {args.repeats} --batch-size {args.batch_size}"
            f"{f' --chunk-size {args.chunk_size}' if args.chunk_size else ''}",
            env,
            ("jax", "flax"),
            torch_device.label(env.get("torch", env["versions"]["torch"]), args.threads),
        ),
        "",
        "Medians over the repeats, seconds per call (JAX jitted and compiled beforehand; "
        "PyTorch eager). Floor: one gradient + one HVP (jvp of grad) + one SynFlow gradient, "
        "each jitted alone.",
        "",
    ]
    for name, r in results.items():
        med, ratio = r["median_seconds"], r["ratios"]
        md += [
            f"## {name} ({r['params']:,} params)",
            "",
            "| scorer | JAX s | PyTorch s | JAX/PyTorch |",
            "|---|---|---|---|",
        ]
        for k in ("snip", "grasp", "synflow", "fused", "forward"):
            md.append(
                f"| {k} | {med[f'jax/{k}']:.4f} | {med[f'torch/{k}']:.4f} | "
                f"{ratio[f'jax/torch {k}']:.2f} |"
            )
        md += [
            "",
            f"Floor {r['floor_seconds']:.4f} s (grad {med['floor/grad']:.4f}, HVP "
            f"{med['floor/hvp']:.4f}, SynFlow grad {med['floor/synflow_grad']:.4f}); "
            f"fused/floor {ratio['fused/floor']:.2f}; fused/(HVP + SynFlow grad) "
            f"{ratio['fused/(hvp+synflow_grad)']:.2f} (the HVP's primal output is the "
            f"gradient, which the fused scorer reuses); fused/(snip+grasp+synflow) "
            f"{ratio['fused/(snip+grasp+synflow), jax']:.2f}.  ",
            "Same scores in both frameworks (largest deviation of unit-norm vectors, "
            "relative to the largest entry): "
            + ", ".join(f"{k} {x:.1e}" for k, x in r["max_deviation_jax_vs_torch"].items()),
            "",
        ]
    return md


if __name__ == "__main__":
    main()
