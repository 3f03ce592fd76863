"""RL Panning's environment options against the authors' setting: learning curves and masks.

        python -m benchmarks.env_options --run          # the three grids, then this report
        python -m benchmarks.env_options                # the report from the grids' cells

Each variant is one ``benchmarks.compare`` grid (resumable: a cell that finished is never
run again) of RL Panning searches with the same recipe and seeds, differing in one option:

* ``fresh``: the authors' environment (a new scoring batch every step);
* ``pool``: ``--scoring pool --pool-size 10`` (10 batches scored once);
* ``fresh + reset obs``: ``--reset-observes-sparsity`` (the first observation carries ρ_0).

The report (``benchmarks/results/env_options/``) holds each variant's learning curve (episode
returns, mean over seeds of a moving average), the return of its final policy's screening
episode at the grid's ratio, the screened network's test accuracy after training, and the
search's wall time, with mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from jpanning import report

RESULTS = os.path.join(os.path.dirname(__file__), "results")
RECIPE = (
    "--model lenet5 --dataset fashion_mnist --ratios 0.98 --methods rlpanning --seeds 3 --epochs 2"
)
RUN_ARGS = "--lr 0.03 --preset quick --agent-steps 3000"
VARIANTS = {
    "fresh": ("env-fresh", "--scoring fresh"),
    "pool": ("env-pool", "--scoring pool --pool-size 10"),
    "fresh + reset obs": ("env-fresh-reset-obs", "--scoring fresh --reset-observes-sparsity"),
}


def grid_command(name: str, extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.compare",
        "--name",
        name,
        *RECIPE.split(),
        "--run-args",
        f"{RUN_ARGS} {extra}",
    ]


def _cells(name: str, root: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, name, "cells", "*", "results.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _moving(x: np.ndarray, width: int) -> np.ndarray:
    if len(x) < width:
        return np.full(len(x), np.mean(x) if len(x) else np.nan)
    kernel = np.ones(width) / width
    return np.convolve(x, kernel, mode="valid")


def _stat(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarise(root: str) -> dict:
    rows = {}
    for label, (name, extra) in VARIANTS.items():
        cells = _cells(name, root)
        rows[label] = {
            "grid": name,
            "options": extra,
            "seeds": [c["config"]["seed"] for c in cells],
            "test_accuracy": [c["test_accuracy"] for c in cells],
            "screen_return": [float(np.sum(c["rl"]["screen"]["reward"])) for c in cells],
            "late_return": [
                float(np.mean(r[-max(len(r) // 5, 1) :]))
                for r in (np.asarray(c["rl"]["episode_returns"]) for c in cells)
            ],
            "search_seconds": [c["rl"]["search_seconds"] for c in cells],
            "curves": [
                {"steps": c["rl"]["episode_end_steps"], "returns": c["rl"]["episode_returns"]}
                for c in cells
            ],
        }
    return rows


def plot(rows: dict, path: str, width: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, row in rows.items():
        curves = []
        for c in row["curves"]:
            steps, returns = np.asarray(c["steps"]), np.asarray(c["returns"])
            smooth = _moving(returns, width)
            curves.append((steps[len(steps) - len(smooth) :], smooth))
        if not curves:
            continue
        grid = np.linspace(max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves), 200)
        values = np.stack([np.interp(grid, s, r) for s, r in curves])
        mean = values.mean(0)
        ax.plot(grid, mean, label=f"{label} ({len(curves)} seeds)")
        if len(curves) > 1:
            std = values.std(0, ddof=1)
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("agent step")
    ax.set_ylabel(f"episode return (moving mean of {width})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    report.atomic_write_bytes(path, _png(fig))
    plt.close(fig)


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def markdown(rows: dict, env: dict) -> list[str]:
    md = [
        "# RL Panning's environment options against the authors' setting",
        "",
        "Command: `python -m benchmarks.env_options --run` (each variant is the grid "
        f'`python -m benchmarks.compare --name NAME {RECIPE} --run-args "{RUN_ARGS} OPTIONS"`)  ',
        report.machine_line(env, ("jax", "flax")),
        "",
        "Mean ± std over seeds (ddof=1). *screen return*: the return of the final policy's "
        "screening episode at 0.98; *late return*: the mean return of the last fifth of the "
        "search's episodes; *accuracy*: the screened LeNet-5 trained 2 epochs on all of "
        "Fashion-MNIST, test accuracy.",
        "",
        "| variant | options | seeds | accuracy at 0.98 | screen return | late return | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        md.append(
            f"| {label} | `{r['options']}` | {len(r['seeds'])} | {_stat(r['test_accuracy'])} | "
            f"{_stat(r['screen_return'])} | {_stat(r['late_return'])} | "
            f"{_stat(r['search_seconds'])} |"
        )
    md += ["", "![learning curves](learning_curves.png)", ""]
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="run (or continue) the three grids first")
    p.add_argument("--root", default=RESULTS, help="where the grids' folders are")
    p.add_argument("--out", default=os.path.join(RESULTS, "env_options"))
    args = p.parse_args(argv)
    if args.run:
        for name, extra in VARIANTS.values():
            subprocess.run(grid_command(name, extra), check=True)
    rows = summarise(args.root)
    env = report.environment()
    os.makedirs(args.out, exist_ok=True)
    plot(rows, os.path.join(args.out, "learning_curves.png"))
    result = {"benchmark": "env_options", **env, "recipe": RECIPE, "run_args": RUN_ARGS}
    result["results"] = rows
    report.write_result(args.out, "env_options", result, markdown(rows, env))


if __name__ == "__main__":
    main()
