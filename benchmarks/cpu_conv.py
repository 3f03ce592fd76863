"""Convolution on the CPU: XLA's, two patches+matmul formulations, PyTorch; and ResNet-20's
training step plain, split over simulated CPU devices, and in PyTorch. One run, medians.

        python -m benchmarks.cpu_conv

Part 1, one 3x3 convolution of each ResNet-20 stage (batch 128, NHWC for JAX, NCHW for
PyTorch), forward and forward+backward (gradients for input and kernel), in ms:
``xla`` is ``lax.conv_general_dilated``; ``patches`` is ``lax.conv_general_dilated_patches``
then one matmul; ``slices`` is im2col from 9 shifted slices of the padded input then one matmul
(both let autodiff derive the backward pass, which becomes matmuls plus the patches' transpose);
``torch`` is ``nn.Conv2d`` (oneDNN) with the same threads.

Part 2, images/s of a whole masked training step of ResNet-20 (batch 128, random 95%-sparse
mask, SGD + momentum; no augmentation): jpanning's step on one device, the same step with the
batch split over 2 and 4 simulated CPU devices (``jpanning.parallel``, set up here with
``--xla_force_host_platform_device_count`` before JAX starts), and the PyTorch ResNet-20 of
``benchmarks/reference/torch_models.py`` with the same weights and SGD. Writes
``benchmarks/results/cpu_conv_<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _layer_table(batch: int, repeats: int, threads: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

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

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    rows = []
    rng = np.random.default_rng(0)
    for size, channels in ((32, 16), (16, 32), (8, 64)):
        x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
        w = (0.1 * rng.normal(size=(3, 3, channels, channels))).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        want = np.asarray(xla(xj, wj))
        for name, f in (("xla", xla), ("patches", patches), ("slices", slices)):
            fwd = jax.jit(f)
            grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
            err = float(np.max(np.abs(np.asarray(fwd(xj, wj)) - want)))
            rows.append(
                {
                    "shape": f"{size}x{size}x{channels}",
                    "impl": name,
                    "forward_ms": _median_ms(lambda: jax.block_until_ready(fwd(xj, wj)), repeats),
                    "forward_backward_ms": _median_ms(
                        lambda: jax.block_until_ready(grad(xj, wj)), repeats
                    ),
                    "max_abs_error_vs_xla": err,
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

            err = float(np.max(np.abs(t_fwd().numpy().transpose(0, 2, 3, 1) - want)))
            rows.append(
                {
                    "shape": f"{size}x{size}x{channels}",
                    "impl": "torch",
                    "forward_ms": _median_ms(t_fwd, repeats),
                    "forward_backward_ms": _median_ms(t_grad, repeats),
                    "max_abs_error_vs_xla": err,
                }
            )
    return rows


def _step_table(batch: int, steps: int, repeats: int, devices: list[int], threads: int) -> dict:

    from benchmarks.train_throughput import (
        alternating_windows,
        make_runner,
        random_masked_setup,
    )
    from jpanning import parallel, train

    model, variables, masks, images, labels = random_masked_setup(
        "resnet20", (32, 32, 3), 0.95, batch
    )
    config = train.TrainConfig()

    def jax_runner(mesh):
        return make_runner(model, variables, config, masks, images, labels, False, mesh=mesh)

    runners = {"jax, 1 device": jax_runner(None)}
    for n in devices:
        runners[f"jax, {n} simulated devices"] = jax_runner(parallel.make_mesh(n))
    try:
        runners["torch"] = _torch_runner(variables, masks, images, labels, config, threads)
    except ImportError:
        pass
    ips, med = alternating_windows(runners, steps, repeats, batch)
    return {"images_per_second": ips, "median_images_per_second": med}


def _torch_runner(variables, masks, images, labels, config, threads):
    import jax
    import numpy as np
    import torch

    from benchmarks.reference import torch_models

    torch.set_num_threads(threads)
    params = jax.tree.map(lambda p, m: np.asarray(p) * np.asarray(m), variables["params"], masks)
    model = torch_models.from_flax("resnet20", jax.device_get(params), 10).train()
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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--devices", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=5, help="training steps per timed window")
    p.add_argument(
        "--repeats", type=int, default=5, help="timed training-step windows (layers: 10 calls)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    flag = f"--xla_force_host_platform_device_count={max(args.devices)}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

    import jax

    from jpanning import report

    layers = _layer_table(args.batch_size, 10, args.threads)
    steps = _step_table(args.batch_size, args.steps, args.repeats, args.devices, args.threads)
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
        "layers": layers,
        "train_step": steps,
        "torch": torch_version,
        **env,
    }
    os.makedirs(args.out, exist_ok=True)
    report.write_json(os.path.join(args.out, f"cpu_conv_{platform}.json"), result)
    command = " ".join(["python -m benchmarks.cpu_conv", *(argv or sys.argv[1:])])
    md = [
        "# Convolution on the CPU: XLA, patches + matmul, PyTorch",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']['cpu']}, {env['machine']['cores']} cores ({platform}); jax "
        f"{env['versions']['jax']}, flax {env['versions']['flax']}, torch {torch_version} "
        f"({args.threads} threads); {env['date']}",
        "",
        f"One 3x3 convolution, batch {args.batch_size}, stride 1, SAME; median ms of 10:",
        "",
        "| input HxWxC | impl | forward ms | forward+backward ms | max abs error vs xla |",
        "|---|---|---|---|---|",
    ]
    for r in layers:
        md.append(
            f"| {r['shape']} | {r['impl']} | {r['forward_ms']:.1f} | "
            f"{r['forward_backward_ms']:.1f} | {r['max_abs_error_vs_xla']:.1e} |"
        )
    med = steps["median_images_per_second"]
    base = med["jax, 1 device"]
    md += [
        "",
        f"ResNet-20 masked training step, batch {args.batch_size}, 32x32x3, median of "
        f"{args.repeats} windows of {args.steps} steps, alternating:",
        "",
        "| variant | median images/s | vs jax, 1 device | windows |",
        "|---|---|---|---|",
    ]
    for k, v in med.items():
        md.append(
            f"| {k} | {v:.1f} | {v / base:.2f}x | "
            f"{', '.join(f'{x:.1f}' for x in steps['images_per_second'][k])} |"
        )
    report.atomic_write_bytes(
        os.path.join(args.out, f"cpu_conv_{platform}.md"), ("\n".join(md) + "\n").encode()
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
