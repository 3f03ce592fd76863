"""Issue 35's variant table: each search variant's policy against the best fixed controller.

        python -m benchmarks.policy_variants --searches /work/proxy-variants

For every search folder ``<variant>-s<seed>`` under ``--searches`` (``scripts/proxy_variants.sh``
writes them) and each environment it was judged on (``benchmarks.policy_eval`` folders
``onproxy-<variant>-s<seed>``: the proxy, through the policy's own ranges; ``proxy-<variant>-
s<seed>``: the real ResNet-20, through ranges widened there first), the policy's margin at
each held-out target: its mean episode return over the evaluation seeds minus that of the
best fixed controller (random, staircase, SynFlow, SNIP or GraSP alone) on the same episodes.
A variant's cell is the mean ± std of that margin over its search seeds (n: how many); a
policy has learned only where the margin is positive at every target. Also each variant's
search cost (seconds of its search process, the machine it ran on).

Writes ``benchmarks/results/policy_variants/<env>.md`` and ``.json`` for each environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from jpanning import report

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ENVIRONMENTS = {"onproxy": "the proxy (the policy's own ranges)", "proxy": "the real ResNet-20"}
FOLDER = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def margins(episodes: list[dict]) -> dict[float, float]:
    """``{target: policy mean return − best fixed controller's mean return}`` over the
    evaluation seeds the policy played."""
    out = {}
    for target in sorted({e["target"] for e in episodes}):
        means = {}
        for c in {e["controller"] for e in episodes if e["target"] == target}:
            xs = [e["return"] for e in episodes if e["target"] == target and e["controller"] == c]
            means[c] = float(np.mean(xs))
        fixed = [m for c, m in means.items() if c != "policy"]
        if "policy" in means and fixed:
            out[target] = means["policy"] - max(fixed)
    return out


def collect(searches: str, prefix: str) -> dict:
    """``{variant: {"seeds": {seed: {target: margin}}, "seconds": [...], ...}}``."""
    table = {}
    for name in sorted(os.listdir(searches)):
        match = FOLDER.match(name)
        path = os.path.join(RESULTS, "policy_eval", f"{prefix}-{name}", "episodes.json")
        if not match or not os.path.isfile(path):
            continue
        with open(path) as f:
            episodes = json.load(f)["episodes"]
        row = table.setdefault(match["variant"], {"seeds": {}, "seconds": [], "machines": set()})
        row["seeds"][int(match["seed"])] = margins(episodes)
        search = os.path.join(searches, name, "search.json")
        if os.path.isfile(search):
            with open(search) as f:
                info = json.load(f)
            row["seconds"].append(info.get("seconds_this_process"))
            machine = info.get("environment", {}).get("machine", {})
            row["machines"].add(f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores")
    return table


def markdown(table: dict, where: str, searches: str) -> str:
    targets = sorted({t for row in table.values() for m in row["seeds"].values() for t in m})
    lines = [
        f"# Search variants judged on {where}: policy return minus the best fixed controller's",
        "",
        f"Command: `python -m benchmarks.policy_variants --searches {searches}`. Cells: mean ± "
        "std over search seeds (n) of the policy's mean return over the evaluation seeds "
        "minus the best fixed controller's, per held-out target; > 0 at every target is a "
        "policy that learned. Search seconds: the search process's (a resumed search counts "
        "only its last process).",
        "",
        "| variant | n | " + " | ".join(str(t) for t in targets) + " | wins | search s | machine |",
        "|---|---|" + "---|" * len(targets) + "---|---|---|",
    ]
    for variant, row in sorted(table.items()):
        cells, wins = [], 0
        for t in targets:
            xs = [m[t] for m in row["seeds"].values() if t in m]
            cells.append(f"{np.mean(xs):+.2f} ± {np.std(xs):.2f}" if xs else "")
            wins += sum(x > 0 for x in xs)
        total = sum(len(m) for m in row["seeds"].values())
        seconds = [s for s in row["seconds"] if s]
        lines.append(
            f"| {variant} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {wins}/{total} | {', '.join(f'{s:.0f}' for s in seconds)} "
            f"| {'; '.join(sorted(row['machines']))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searches", required=True, help="folder of <variant>-s<seed> searches")
    p.add_argument("--out", default=os.path.join(RESULTS, "policy_variants"))
    args = p.parse_args(argv)
    for prefix, where in ENVIRONMENTS.items():
        table = collect(args.searches, prefix)
        if not table:
            continue
        md = markdown(table, where, args.searches)
        result = {
            "argv": sys.argv[1:],
            "environment": where,
            "variants": {
                v: {
                    "margins": {str(s): m for s, m in row["seeds"].items()},
                    "search_seconds": row["seconds"],
                    "machines": sorted(row["machines"]),
                }
                for v, row in table.items()
            },  # fmt: skip
        }
        os.makedirs(args.out, exist_ok=True)
        report.write_json(os.path.join(args.out, f"{prefix}.json"), result)
        report.atomic_write_bytes(os.path.join(args.out, f"{prefix}.md"), md.encode())
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
