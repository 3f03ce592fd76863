"""The headline command's screening time: ``run.py --model resnet20 --ratio 0.95`` screens with
the shipped RL Panning policy (no search); seconds from the process's start until the masks
are ready (its ``pruned with rlpanning`` line), then the process is stopped before training.

        python -m benchmarks.headline                  # 3 runs, the default data
        python -m benchmarks.headline --repeats 5 --dataset fashion_mnist

Each run is a new process, as a user's is: Python and JAX start-up, the dataset load, the
model's initialization, the environment's warm-up batches, compiling the step and T policy
steps. Also reported: the screening alone, as the line prints it. Writes
``benchmarks/results/headline_<device>.{json,md}``. The goal (issue 29): under 2 minutes on
a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from jpanning import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PRUNED = re.compile(r"pruned with rlpanning in ([0-9.]+)s")


def one_run(argv: list[str]) -> dict:
    """Start ``run.py argv``, time it until the masks are ready, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run.py"), *argv, "--out", f"{tmp}/run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                found = PRUNED.search(line)
                if found:
                    return {
                        "to_masks_s": time.perf_counter() - start,
                        "screen_s": float(found.group(1)),
                        "policy_line": next((x for x in lines if "policy" in x), None),
                    }
        finally:
            proc.kill()
            proc.wait()
    raise RuntimeError("run.py ended before screening:\n" + "\n".join(lines[-20:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--ratio", default="0.95")
    p.add_argument("--dataset", default=None, help="default: run.py's")
    args = p.parse_args(argv)
    run_argv = ["--model", args.model, "--ratio", args.ratio, "--no-progress"]
    if args.dataset:
        run_argv += ["--dataset", args.dataset]
    runs = [one_run(run_argv) for _ in range(args.repeats)]
    for r in runs:
        print(f"to masks {r['to_masks_s']:.1f} s (screening {r['screen_s']:.1f} s)", flush=True)
    env = report.environment()
    result = {
        "command": "python run.py " + " ".join(run_argv),
        "runs": runs,
        "median_to_masks_s": statistics.median(r["to_masks_s"] for r in runs),
        "median_screen_s": statistics.median(r["screen_s"] for r in runs),
        "environment": env,
    }
    markdown = [
        f"# `{result['command']}` until its masks are ready",
        "",
        report.machine_line(env),
        "",
        f"- policy: {runs[0]['policy_line']}",
        f"- whole command until the masks, median of {len(runs)} new processes: "
        f"{result['median_to_masks_s']:.1f} s (runs: "
        + ", ".join(f"{r['to_masks_s']:.1f}" for r in runs)
        + ")",
        f"- of which screening (the T policy steps, compile included): "
        f"{result['median_screen_s']:.1f} s",
        "- goal: under 120 s",
    ]
    report.write_result(RESULTS, f"headline_{env['device']['platform']}", result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
