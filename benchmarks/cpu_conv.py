"""Convolution on the CPU: why XLA trails PyTorch there, and jpanning's CPU setting
(``jpanning.cpu``) against XLA's default and PyTorch on the workloads of issue 9. One run,
one process, medians, alternating variants.

        python -m benchmarks.cpu_conv

Part 1, issue 9's table: ResNet-20 (random 95%-sparse mask) training step at batch 128
(images/s), SNIP and fused (SynFlow+SNIP+GraSP) scores at batch 256 (s), the eval forward pass
at batch 256 (images/s) and an f32 matmul 2048^2 (GFLOP/s). ``xla default`` compiles every
program with XLA's default YNNPACK fusion types and the models' convolution as plain
``lax.conv_general_dilated`` (what JAX does without jpanning), ``jpanning``
with jpanning's defaults (oneDNN's convolutions, :mod:`jpanning.onednn`, where built; the
process flag :func:`jpanning.cpu.configure` sets), ``jpanning, XLA conv`` with
``JPANNING_CPU_CONV=xla`` (XLA's convolutions), all chosen per trace and compilation, so they
share the process;
``torch`` is the PyTorch ResNet-20 of ``benchmarks/reference/`` with the same weights and
threads.

Part 2, one 3x3 convolution of each ResNet-20 stage and of VGG's last block on CIFAR (2x2
maps, 512 channels; batch 128, NHWC for JAX, NCHW for PyTorch), forward and forward+backward
(gradients for input and kernel), in ms, with the cores each keeps busy (CPU time / wall
time): that is where the single-threaded YNNPACK convolution shows. ``jpanning`` is
:func:`jpanning.cpu.conv_general_dilated`, which the models call: oneDNN's convolution where
built, and slices + matmul on the 2x2 maps; ``jpanning, XLA conv`` the same traced with
``JPANNING_CPU_CONV=xla`` (``lax.conv_general_dilated`` under the process setting). Besides
the settings it times the alternatives tried for issue 9 and not kept (not on the 2x2 maps):
``patches`` (``lax.conv_general_dilated_patches`` then one matmul), ``slices`` (im2col from
shifted slices of the padded input then one matmul; both let autodiff derive the backward
pass) and ``grouped`` (halves of the batch packed into two feature groups), all compiled with
jpanning's setting; ``torch`` is ``nn.Conv2d`` (oneDNN).

Writes ``benchmarks/results/cpu_conv_<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

from benchmarks import timing

XLA = "xla default"
JPANNING = "jpanning"
JPANNING_XLA = "jpanning, XLA conv"  # JPANNING_CPU_CONV=xla: jpanning before oneDNN


def _timed(fn, repeats: int) -> tuple[float, float]:
    """``(median ms, CPU time / wall time)`` of ``repeats`` calls after a warm-up call."""
    fn()  # compile / warm up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    times = timing.time_calls(fn, repeats, warmup=0)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return 1e3 * statistics.median(times), cores


def _layer_table(batch: int, repeats: int, threads: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from jpanning import cpu, onednn

    dn = ("NHWC", "HWIO", "NHWC")

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def ours(x, w):  # what jpanning's models call
        return cpu.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def ours_xla(x, w):  # the same, traced with JPANNING_CPU_CONV=xla (see compiled)
        return cpu.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def patches(x, w):
        kh, kw, ci, co = w.shape
        p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "SAME", dimension_numbers=dn)
        return p @ jnp.transpose(w, (2, 0, 1, 3)).reshape(ci * kh * kw, co)  # (c, kh, kw) order

    def slices(x, w):
        kh, kw, ci, co = w.shape
        n, h, wd, _ = x.shape
        xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        cols = [xp[:, i : i + h, j : j + wd, :] for i in range(kh) for j in range(kw)]
        return jnp.concatenate(cols, -1) @ w.reshape(kh * kw * ci, co)

    def grouped(x, w, groups=2):
        n, h, wd, c = x.shape
        co = w.shape[-1]
        xg = x.reshape(groups, n // groups, h, wd, c).transpose(1, 2, 3, 0, 4)
        y = lax.conv_general_dilated(
            xg.reshape(n // groups, h, wd, groups * c),
            jnp.concatenate([w] * groups, -1),
            (1, 1),
            "SAME",
            dimension_numbers=dn,
            feature_group_count=groups,
        )
        return y.reshape(n // groups, h, wd, groups, co).transpose(3, 0, 1, 2, 4).reshape(x.shape)

    def compiled(f, args, options=None):
        traced = _env(onednn.ENV_CHOICE, "xla") if f is ours_xla else contextlib.nullcontext()
        with traced:
            return jax.jit(f).lower(*args).compile(compiler_options=options)

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    rows = []
    rng = np.random.default_rng(0)
    for size, channels in ((32, 16), (16, 32), (8, 64), (2, 512)):
        x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
        w = (0.1 * rng.normal(size=(3, 3, channels, channels))).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        want = np.asarray(xla(xj, wj))
        variants = (
            (JPANNING, ours, None),
            (JPANNING_XLA, ours_xla, None),
            (XLA, xla, cpu.options(cpu.XLA_DEFAULT_TYPES)),
            ("patches", patches, None),
            ("slices", slices, None),
            ("grouped", grouped, None),
        )
        if size * size <= cpu.SMALL_INPUT:  # jpanning's own path is the slices one here
            variants = (variants[0], variants[2])
        for name, f, options in variants:
            fwd = compiled(f, (xj, wj), options)
            loss = lambda x, w, f=f: jnp.sum(f(x, w) ** 2)
            grad = compiled(jax.grad(loss, argnums=(0, 1)), (xj, wj), options)
            fwd_ms, fwd_cores = _timed(timing.blocking(lambda: fwd(xj, wj)), repeats)
            fb_ms, fb_cores = _timed(timing.blocking(lambda: grad(xj, wj)), repeats)
            rows.append(
                {
                    "shape": f"{size}x{size}x{channels}",
                    "impl": name,
                    "forward_ms": fwd_ms,
                    "forward_cores": fwd_cores,
                    "forward_backward_ms": fb_ms,
                    "forward_backward_cores": fb_cores,
                    "max_abs_error_vs_xla": float(np.max(np.abs(np.asarray(fwd(xj, wj)) - want))),
                    "ynn_fused": "ynn_fusion" in fwd.as_text(),
                }
            )
        if torch is not None:
            xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.tensor(w.transpose(3, 2, 0, 1).copy()))

            def t_fwd():
                with torch.no_grad():
                    return conv(xt)

            def t_grad():
                xt.grad = None
                conv.weight.grad = None
                (conv(xt) ** 2).sum().backward()

            fwd_ms, fwd_cores = _timed(t_fwd, repeats)
            fb_ms, fb_cores = _timed(t_grad, repeats)
            err = float(np.max(np.abs(t_fwd().numpy().transpose(0, 2, 3, 1) - want)))
            rows.append(
                {
                    "shape": f"{size}x{size}x{channels}",
                    "impl": "torch",
                    "forward_ms": fwd_ms,
                    "forward_cores": fwd_cores,
                    "forward_backward_ms": fb_ms,
                    "forward_backward_cores": fb_cores,
                    "max_abs_error_vs_xla": err,
                    "ynn_fused": False,
                }
            )
    return rows


@contextlib.contextmanager
def _env(name: str, value: str):
    """``os.environ[name] = value`` inside; jpanning's switches are read when a convolution is
    traced, so programs traced inside follow them."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _traced_as(variant: str):
    """The context a workload variant's programs are traced in: ``xla default`` gets
    ``lax.conv_general_dilated`` from the models' convolution (``JPANNING_CPU_FAST=0``), as
    JAX without jpanning; ``jpanning, XLA conv`` jpanning's path with XLA's convolutions."""
    from jpanning import cpu, onednn

    if variant == XLA:
        return _env(cpu.ENV_SWITCH, "0")
    if variant == JPANNING_XLA:
        return _env(onednn.ENV_CHOICE, "xla")
    return contextlib.nullcontext()


def _workloads(args) -> dict:
    """Issue 9's table: per workload, per variant, the median (images/s, s or GFLOP/s)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.train_throughput import make_runner, random_masked_setup
    from jpanning import cpu, models, scores, train

    # per variant, the compiler options of every program: XLA's default fusion types, or
    # the process setting jpanning's own programs compile with
    variants = {XLA: cpu.options(cpu.XLA_DEFAULT_TYPES), JPANNING_XLA: None, JPANNING: None}
    model, variables, masks, images, labels = random_masked_setup(
        "resnet20", (32, 32, 3), 0.95, args.batch_size
    )
    config = train.TrainConfig()
    runners = {
        k: make_runner(
            model, variables, config, masks, images, labels, False, compiler_options=options
        )
        for k, options in variants.items()
    }
    for k in (XLA, JPANNING_XLA):
        with _traced_as(k):
            runners[k](1)  # traced and compiled here: the variant's convolution
    try:
        import torch

        torch.set_num_threads(args.threads)
        runners["torch"] = _torch_runner(variables, masks, images, labels, config, args.threads)
    except ImportError:
        torch = None
    ips, med, _ = timing.alternating_windows(runners, args.steps, args.repeats, args.batch_size)
    out = {"train step, batch %d (images/s)" % args.batch_size: med, "train_windows": ips}

    params, stats = variables["params"], variables["batch_stats"]
    apply_train = models.make_apply_fn(model, stats, train=True)
    apply_eval = models.make_apply_fn(model, stats, train=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(args.score_batch, 32, 32, 3)).astype(np.float32)
    y = (np.arange(args.score_batch) % 10).astype(np.int32)
    batch = (jnp.asarray(x), jnp.asarray(y))
    programs = {
        "snip": functools.partial(scores.snip, apply_train),
        "fused": functools.partial(scores.fused, apply_train, synflow_apply_fn=apply_eval),
        "eval": lambda p, b: apply_eval(p, b[0]),
    }
    runs = {name: {} for name in programs}
    for name, f in programs.items():
        for k, options in variants.items():
            # a new function per variant: jit's trace cache would hand one variant's program
            # (traced with or without lax's convolution) to the other
            g = functools.partial(lambda f, p, b: f(p, b), f)
            with _traced_as(k):
                compiled = jax.jit(g, compiler_options=options).lower(params, batch).compile()
            runs[name][k] = timing.blocking(functools.partial(compiled, params, batch))
    if torch is not None:
        from benchmarks.reference import torch_models, torch_scorers

        tmodel = torch_models.from_flax("resnet20", jax.device_get(params), 10)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        yt = torch.from_numpy(y.astype(np.int64))
        runs["snip"]["torch"] = lambda: torch_scorers.snip(tmodel, xt, yt)
        runs["fused"]["torch"] = lambda: torch_scorers.fused(tmodel, xt, yt)

        def t_eval():
            with torch.no_grad():
                tmodel.eval()(xt)

        runs["eval"]["torch"] = t_eval
    sb = args.score_batch
    out[f"SNIP scores, batch {sb} (s)"] = timing.median_seconds(runs["snip"], args.repeats)
    out[f"fused scores, batch {sb} (s)"] = timing.median_seconds(runs["fused"], args.repeats)
    out[f"eval forward, batch {sb} (images/s)"] = {
        k: sb / v for k, v in timing.median_seconds(runs["eval"], args.repeats).items()
    }
    a = jnp.asarray(rng.normal(size=(2048, 2048)).astype(np.float32))
    mm_runs = {}
    for k, options in variants.items():
        compiled = jax.jit(lambda a: a @ a, compiler_options=options).lower(a).compile()
        mm_runs[k] = timing.blocking(functools.partial(compiled, a))
    if torch is not None:
        at = torch.from_numpy(np.asarray(a))
        mm_runs["torch"] = lambda: at @ at
    out["f32 matmul 2048^2 (GFLOP/s)"] = {
        k: 2 * 2048**3 / v / 1e9 for k, v in timing.median_seconds(mm_runs, args.repeats).items()
    }
    return out


def _torch_runner(variables, masks, images, labels, config, threads, name="resnet20"):
    import jax
    import numpy as np
    import torch

    from benchmarks.reference import torch_models

    torch.set_num_threads(threads)
    params = jax.tree.map(lambda p, m: np.asarray(p) * np.asarray(m), variables["params"], masks)
    model = torch_models.from_flax(name, jax.device_get(params), 10).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    weight_masks = [
        (p, (p != 0).float()) for p in model.parameters() if p.dim() > 1
    ]  # pruned weights held at zero after each step, as jpanning's masked optimizer does
    x = torch.tensor(images.transpose(0, 3, 1, 2).copy())
    y = torch.tensor(labels.astype(np.int64))

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                for p, m in weight_masks:
                    p.mul_(m)

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128, help="training step and layers")
    p.add_argument("--score-batch", type=int, default=256, help="SNIP, fused, eval forward")
    p.add_argument("--steps", type=int, default=5, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows / calls per variant")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    p.add_argument("--skip-layers", action="store_true", help="only the workloads")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)

    from jpanning import cpu, report

    if not cpu.configure():  # off: the user chose, or another jaxlib
        sys.exit(
            "cpu_conv: jpanning's CPU setting is off (JPANNING_CPU_FAST=0, the option in "
            "XLA_FLAGS, or a jaxlib not in cpu.MEASURED_JAXLIBS); nothing to compare"
        )
    import jax

    layers = [] if args.skip_layers else _layer_table(args.batch_size, 10, args.threads)
    work = _workloads(args)
    env = report.environment()
    platform = jax.devices()[0].platform
    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:
        torch_version = None
    result = {
        "benchmark": "cpu_conv",
        "settings": vars(args) | {"out": None},
        "cpu_setting": cpu.describe(),
        "layers": layers,
        "workloads": work,
        "torch": torch_version,
        **env,
    }
    md = _markdown(args, argv, env, platform, torch_version, layers, work)
    report.write_result(args.out, f"cpu_conv_{platform}", result, md)


def _markdown(args, argv, env, platform, torch_version, layers, work) -> list[str]:
    from jpanning import cpu

    command = timing.command("cpu_conv", argv)
    md = [
        "# Convolution on the CPU: XLA's default, jpanning's CPU setting, PyTorch",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']['cpu']}, {env['machine']['cores']} cores ({platform}); jax "
        f"{env['versions']['jax']}, flax {env['versions']['flax']}, torch {torch_version} "
        f"({args.threads} threads); {env['date']}",
        "",
        "## Workloads (issue 9)",
        "",
        f"ResNet-20 (random 95%-sparse mask for training), 32x32x3, 10 classes. Medians of "
        f"{args.repeats} alternating windows of {args.steps} steps (training) or "
        f"{args.repeats} alternating calls (the others), all in one process. `{XLA}`: every "
        f"program compiled with XLA's default YNNPACK fusions (`{cpu.YNN_OPTION}` = "
        f"{', '.join(cpu.XLA_DEFAULT_TYPES)}) and `lax.conv_general_dilated`, what JAX does "
        f"without jpanning. `{JPANNING}`: what jpanning runs by default, the models' "
        f"convolution `jpanning.cpu.conv_general_dilated` computed by "
        f"{cpu.convolution_library()} (`jpanning/onednn.py`) under the process setting "
        f"jpanning makes at import ({', '.join(cpu.PROCESS_TYPES)}). `{JPANNING_XLA}`: "
        f"jpanning with `JPANNING_CPU_CONV=xla` (its path before oneDNN): convolutions in "
        f"XLA's multi-threaded Eigen under the process setting. "
        f"Every column, PyTorch's included, runs with the process's malloc setting: "
        f"{cpu.allocator_setting()} (`benchmarks/archive/allocator.py` compares the settings).",
        "",
    ]
    cols = [XLA, JPANNING_XLA, JPANNING, "torch"]
    ratios = [JPANNING, JPANNING_XLA, XLA]
    md.append(
        "| workload | "
        + " | ".join(cols)
        + " | "
        + " | ".join(f"{c} ÷ torch" for c in ratios)
        + " |"
    )
    md.append("|---|" + "---|" * (len(cols) + len(ratios)))
    for workload, values in work.items():
        if workload == "train_windows":
            continue
        cells = [f"{values[c]:.3g}" if c in values else "—" for c in cols]
        higher_better = not workload.endswith("(s)")

        def ratio(c):
            if c not in values or "torch" not in values:
                return "—"
            r = values[c] / values["torch"]
            return f"{r if higher_better else 1 / r:.2f}"

        md.append(f"| {workload} | " + " | ".join(cells + [ratio(c) for c in ratios]) + " |")
    md += [
        "",
        "Ratios are speed ratios (above 1: faster than PyTorch).",
    ]
    if not layers:
        return md
    md += [
        "",
        f"## One 3x3 convolution, batch {args.batch_size}, stride 1, SAME; median ms of 10",
        "",
        f"`{JPANNING}`: `jpanning.cpu.conv_general_dilated` (what the models call): "
        f"{cpu.convolution_library()}'s convolution, slices + matmul on inputs "
        f"of at most {cpu.SMALL_INPUT} pixels; `{JPANNING_XLA}`: the same with "
        "`JPANNING_CPU_CONV=xla`, `lax.conv_general_dilated` under jpanning's process setting "
        "with derivatives that keep XLA's fast layout in loop bodies; "
        f"`{XLA}`: `lax.conv_general_dilated` with XLA's default fusions; `patches`, `slices`, `grouped`: "
        "alternatives tried (see the module docstring). `cores`: CPU time / wall time over the "
        "timed calls. `ynn`: whether the compiled forward program holds a YNNPACK fusion.",
        "",
        "| input HxWxC | impl | forward ms | cores | forward+backward ms | cores | "
        "max abs error vs lax | ynn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in layers:
        md.append(
            f"| {r['shape']} | {r['impl']} | {r['forward_ms']:.1f} | {r['forward_cores']:.2f} | "
            f"{r['forward_backward_ms']:.1f} | {r['forward_backward_cores']:.2f} | "
            f"{r['max_abs_error_vs_xla']:.1e} | {'yes' if r['ynn_fused'] else 'no'} |"
        )
    return md


if __name__ == "__main__":
    main()
