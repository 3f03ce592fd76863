"""Panning environment speed: steps per second against the bare passes a step needs.

        python -m benchmarks.env_step                          # ResNet-20 (both widths), VGG-19
        python -m benchmarks.env_step --models resnet20 --repeats 3

For each network (CIFAR shapes 32x32x3, 10 classes, a scoring batch of ``--batch-size``
examples, 10 per class in the authors' setting) one run times, alternating between variants so
machine noise hits them alike, medians over ``--repeats``:

* ``step``: one jitted :meth:`jpanning.env.PanningEnv.step` with ``scoring='pool'`` (the
  dense SNIP/GraSP maps, loss and ‖g‖² come from the pool scored once by ``make_params``);
* ``step x E``: ``jax.vmap`` of the step over ``--envs`` environments, per environment;
* ``step (fresh)``: ``scoring='fresh'``, the authors' setting: a new class-balanced batch
  drawn every step and the dense maps (GraSP's Hessian-vector product included) recomputed;
* ``step (effective=paths)``: the pool step with the path-based effective sparsity (one more
  gradient of the mask network) instead of the authors';
* the floor: the bare passes a pool-mode step needs, each jitted alone: the SynFlow gradient of
  the masked |θ|-network (which also gives the effective sparsity), the masked network's loss
  and ‖g‖² (one gradient) and the global top-k;
* ``torch step (fresh)``: the fresh step in PyTorch (``benchmarks/reference/torch_panning.py``,
  ``pip install -r requirements-bench.txt``; ``--no-torch`` skips it), from the same weights,
  maps and scoring batch, with how far its masks, losses and ‖g‖² are from jpanning's.

Writes medians and ratios (step/floor; PyTorch's step over ours; for ``resnet20_panning``,
also the authors' 5.66 s per step of that network on this kind of CPU, as issue 4 reports it,
over ours) to
``benchmarks/results/env_step_<device>``; ``--rewrite`` redoes ratios and markdown from it;
``--update`` keeps the results of models not run this time (each with its date and command).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.reference import torch_device
from jpanning import cpu, env as env_lib, masks as masks_lib, models, panning, report, scores

RESULTS = os.path.join(os.path.dirname(__file__), "results")
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
AUTHORS_STEP_SECONDS = 5.66  # kangxiatao/RLPanning, their ResNet-20 on a 2-core CPU (issue 4)
TORCH_MODELS = ("resnet20", "resnet20_panning", "vgg19")  # benchmarks/reference/torch_models.py
TORCH_STEP = "torch step (fresh)"
FRESH_STEP = "step (fresh)"


def mid_episode(env: env_lib.PanningEnv, env_params, envs: int):
    """A mid-episode step's arguments, as most steps see: round 50 of 100 of an episode with
    target 0.95 (sparsity ~0.78) and a fixed action; ``(key, state, action)`` for one
    environment and ``(keys, states, actions)`` for ``envs`` vmapped ones."""
    action = jnp.array([0.0, 0.2, -0.3])
    _, state = env.reset(jax.random.key(0), env_params, target=0.95)
    state = state.replace(round=jnp.int32(50))
    key = jax.random.key(1)
    keys = jax.random.split(key, envs)
    _, states = jax.vmap(env.reset, in_axes=(0, None, None))(keys, env_params, 0.95)
    states = states.replace(round=jnp.full((envs,), 50, jnp.int32))
    return (key, state, action), (keys, states, jnp.tile(action, (envs, 1)))


def setup(name: str, batch_size: int, pool: int, envs: int, batched: bool):
    model = models.create_model(name, NUM_CLASSES)
    variables = models.init_variables(model, jax.random.key(0), INPUT_SHAPE)
    params, stats = variables["params"], variables["batch_stats"]
    prunable = masks_lib.prunable_tree(params)
    train_fn = models.make_apply_fn(model, stats, train=True)
    eval_fn = models.make_apply_fn(model, stats, train=False)
    env = env_lib.PanningEnv(train_fn, eval_fn, prunable, INPUT_SHAPE)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(pool, batch_size, *INPUT_SHAPE)).astype(np.float32)
    ys = np.tile(np.arange(batch_size) % NUM_CLASSES, (pool, 1)).astype(np.int32)
    env_params = env.make_params(params, xs, ys)
    fresh_params = env.make_params(
        params,
        xs.reshape(-1, *INPUT_SHAPE),
        ys.reshape(-1),
        scoring="fresh",
        samples_per_class=batch_size // NUM_CLASSES,
    )
    paths_params = env_params.replace(effective="paths")  # one more gradient per step
    (key, state, action), (keys, states, actions) = mid_episode(env, env_params, envs)
    step = jax.jit(env.step)
    fresh_step = jax.jit(env.step)
    vstep = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))

    masks = step(key, state, action, env_params)[1].masks
    batch = (jnp.asarray(xs[0]), jnp.asarray(ys[0]))
    # the scoring batch is an argument, as in the step, not a constant baked into the program
    flow = jax.jit(lambda p, m, b: scores.synflow(eval_fn, p, b, masks=m, prunable=prunable))
    masked = jax.jit(
        lambda p, m, b: scores.loss_and_grad_norm(
            train_fn, p, b, m, prunable=prunable, whole_tensors=True
        )
    )
    topk = jax.jit(functools.partial(masks_lib.global_topk, prunable=prunable, rounding="floor"))
    fused = panning.normalise(flow(params, masks, batch), prunable)

    run = {
        "step": timing.blocking(lambda: step(key, state, action, env_params)),
        FRESH_STEP: timing.blocking(lambda: fresh_step(key, state, action, fresh_params)),
        "step (effective=paths)": timing.blocking(lambda: step(key, state, action, paths_params)),
        "floor/synflow_grad": timing.blocking(lambda: flow(params, masks, batch)),
        "floor/masked_loss_grad": timing.blocking(lambda: masked(params, masks, batch)),
        "floor/topk": timing.blocking(lambda: topk(fused, jnp.float32(0.8))),
    }
    if batched:
        run[f"step x {envs}"] = timing.blocking(lambda: vstep(keys, states, actions, env_params))
    info = {
        "params": models.count_params(params),
        "prunable": masks_lib.sparsity_report(masks_lib.ones_like(params), prunable)["total"],
    }
    # What the fresh step does from ``state``, for the PyTorch reference to redo.
    result = fresh_step(key, state, action, fresh_params)
    (images, labels), _ = env.draw(key, fresh_params)  # the scoring batch the step drew
    case = {
        "params": params,
        "maps": (state.synflow, state.snip, state.grasp),
        "images": np.asarray(images),
        "labels": np.asarray(labels),
        "weights": np.asarray(result[5]["weights"]),
        "sparsity": float(result[5]["sparsity"]),
        "temperature": env.temperature,
        "result": result,
    }
    return run, info, case


def torch_variant(name: str, case: dict, threads: int, device: str = "cpu"):
    """The PyTorch step (``benchmarks/reference/torch_panning.py``) on the same weights, maps
    and batch as jpanning's fresh step, on ``device``, and how far its outputs are from
    jpanning's."""
    import torch

    from benchmarks.reference import torch_models, torch_panning

    torch.set_num_threads(threads)
    model = torch_models.from_flax(name, jax.device_get(case["params"]), NUM_CLASSES).to(device)

    def to_torch(tree):
        return [
            torch.from_numpy(torch_models.kernel_to_torch(kind, leaves["kernel"]).copy())
            for kind, leaves in torch_models.flax_layers(name, jax.device_get(tree))
            if kind != "bn"
        ]

    x = torch.from_numpy(case["images"].transpose(0, 3, 1, 2).copy()).to(device)
    y = torch.from_numpy(case["labels"].astype(np.int64)).to(device)
    maps = [[m.to(device) for m in to_torch(tree)] for tree in case["maps"]]
    weights = torch.tensor(case["weights"], device=device)

    def step():
        return torch_panning.env_step(
            model, maps, x, y, weights, case["sparsity"], case["temperature"]
        )

    run = torch_device.synchronized(step, device)

    got, state = run(), case["result"][1]
    kept_jax = np.concatenate([np.ravel(m.numpy()) for m in to_torch(state.masks)]) != 0
    kept_torch = np.concatenate([np.ravel(m.cpu().numpy()) for m in got["masks"]]) != 0
    check = {
        "kept": int(kept_jax.sum()),
        "kept_torch": int(kept_torch.sum()),
        "kept_by_both / kept": float((kept_jax & kept_torch).sum() / kept_jax.sum()),
        "effective": float(state.effective),
        "effective_torch": got["effective"],
        **{
            f"{k}, relative difference": float(
                abs(float(getattr(state, k)) - float(got[k])) / abs(float(got[k]))
            )
            for k in ("loss", "grad_norm", "sparse_loss", "sparse_grad_norm")
        },
    }
    return torch_device.describe(device), run, check


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet20_panning", "vgg19"])
    p.add_argument("--batch-size", type=int, default=100, help="scoring batch (10 per class)")
    p.add_argument("--pool", type=int, default=2, help="scoring batches in the pool")
    p.add_argument("--envs", type=int, default=4, help="environments in the vmapped step")
    p.add_argument(
        "--batched",
        nargs="*",
        default=["resnet20", "resnet20_panning"],
        help="models whose vmapped step is timed (slow for big nets on CPU)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    p.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch step (no torch installed)"
    )
    torch_device.add_argument(p)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--rewrite", action="store_true", help="only redo ratios/markdown from JSON")
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the other models' results of the earlier run (each keeps its own date)",
    )
    args = p.parse_args(argv)
    if args.rewrite:
        return rewrite(args, argv)
    if not args.no_torch and set(args.models) & set(TORCH_MODELS):
        args.torch_device = torch_device.resolve_or_exit(p, args.torch_device)
    env = report.environment()
    results = {}
    if args.update:
        saved = _load(args.out)
        for name, r in saved["results"].items():
            if name not in args.models:
                r.setdefault("date", saved["date"])
                r.setdefault("argv", saved.get("argv", []))
                results[name] = r
    for name in args.models:
        batched = name in args.batched
        run, info, case = setup(name, args.batch_size, args.pool, args.envs, batched)
        if not args.no_torch and name in TORCH_MODELS:
            info["torch"], run[TORCH_STEP], info["jax_vs_torch"] = torch_variant(
                name, case, args.threads, args.torch_device
            )
            print(name, "jpanning vs torch:", info["jax_vs_torch"], flush=True)
        times = timing.time_all(run, args.repeats)
        med = timing.medians(times)
        if batched:
            med[f"step x {args.envs}"] /= args.envs  # per environment
        floor = sum(v for k, v in med.items() if k.startswith("floor/"))
        results[name] = {
            **info,
            "date": env["date"],
            "argv": list(argv if argv is not None else sys.argv[1:]),
            "seconds": times,
            "median_seconds": med,
            "floor_seconds": floor,
            "ratios": ratios(name, med, floor),
        }
        print(name, {k: round(v, 4) for k, v in med.items()}, flush=True)
        write(args, env, results, argv)  # after every model: nothing measured is lost


def ratios(name: str, med: dict, floor: float) -> dict:
    """Step over floor (goal <= 1.2); PyTorch's step over ours; for the authors' network,
    their 5.66 s over ours."""
    out = {f"{k}/floor": v / floor for k, v in med.items() if k.startswith("step")}
    if TORCH_STEP in med:
        out[f"{TORCH_STEP} / step"] = med[TORCH_STEP] / med["step"]
        out[f"{TORCH_STEP} / {FRESH_STEP}"] = med[TORCH_STEP] / med[FRESH_STEP]
    if name == "resnet20_panning":
        out["authors' 5.66 s / step"] = AUTHORS_STEP_SECONDS / med["step"]
        out[f"authors' 5.66 s / {FRESH_STEP}"] = AUTHORS_STEP_SECONDS / med[FRESH_STEP]
    return out


def rewrite(args, argv) -> None:
    """Recompute the ratios and the markdown from the JSON of an earlier run."""
    saved = _load(args.out)
    for name, r in saved["results"].items():
        r["ratios"] = ratios(name, r["median_seconds"], r["floor_seconds"])
    env = {k: saved[k] for k in ("versions", "xla_cpu", "device", "machine", "date") if k in saved}
    settings = argparse.Namespace(**{**saved["settings"], "out": args.out})
    write(settings, env, saved["results"], saved.get("argv", []))


def _load(out: str) -> dict:
    tag = report.environment()["device"]["platform"]
    with open(os.path.join(out, f"env_step_{tag}.json")) as f:
        return json.load(f)


def write(args, env, results, argv) -> None:
    tag = env["device"]["platform"]
    result = {"benchmark": "env_step", "settings": vars(args) | {"out": None}, **env}
    result["argv"] = list(argv if argv is not None else sys.argv[1:])
    result["results"] = results
    report.write_result(
        args.out, f"env_step_{tag}", result, markdown(args, env, results, result["argv"])
    )


def markdown(args, env, results, argv) -> list[str]:
    md = [
        f"# Panning environment step, scoring batch {args.batch_size} x {INPUT_SHAPE}",
        "",
        *timing.header(timing.command("env_step", argv), env, ("jax", "flax")),
        "",
        f"Medians of {args.repeats} alternating repeats, seconds. Step at round 50 of 100 "
        f"(target 0.95); `step x {args.envs}` is per environment of a vmapped batch. Floor: "
        "SynFlow gradient (which gives the effective sparsity too) + masked loss/‖g‖² "
        "gradient + top-k, each jitted alone (the step also normalises and fuses the maps; "
        "goal: step/floor <= 1.1). `step (fresh)`: a new batch every step, its dense maps "
        "recomputed (the authors' setting). `torch step (fresh)`: the fresh step in PyTorch "
        "(`benchmarks/reference/torch_panning.py`) from the same weights, maps and batch. "
        "The authors' own figure, 5.66 s per step of their ResNet-20 (width 32, "
        "`resnet20_panning`) on a CPU like this one, is quoted from issue 4, not measured "
        "here.",
        "",
    ]
    for name, r in results.items():
        med = r["median_seconds"]
        md += [f"## {name} ({r['params']:,} params, {r['prunable']:,} prunable)", ""]
        if r.get("date", env["date"]) != env["date"]:  # kept by --update from an earlier run
            md += [
                f"From an earlier run: {r['date']}, command `"
                + timing.command("env_step", r.get("argv", []))
                + "`.",
                "",
            ]
        md += [
            "| variant | median s | steps/s |",
            "|---|---|---|",
        ]
        for k, v in med.items():
            rate = f"{1 / v:.2f}" if "step" in k else ""
            md.append(f"| {k} | {v:.4f} | {rate} |")
        md += [
            "",
            f"Floor {r['floor_seconds']:.4f} s. "
            + "; ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())
            + ".",
            "",
        ]
        if "jax_vs_torch" in r:
            c = r["jax_vs_torch"]
            md += [
                f"{torch_device.label(r['torch'], getattr(args, 'threads', '?'))} against "
                "jpanning's fresh step from the same "
                f"state: kept {c['kept']:,} vs {c['kept_torch']:,}, of which "
                f"{c['kept_by_both / kept']:.4f} by both; effective sparsity "
                f"{c['effective']:.4f} vs {c['effective_torch']:.4f}; relative differences "
                + ", ".join(f"{k.split(',')[0]} {v:.1e}" for k, v in c.items() if "relative" in k)
                + ".",
                "",
            ]
    return md


if __name__ == "__main__":
    main()
