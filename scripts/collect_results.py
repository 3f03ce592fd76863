"""Print a markdown table of run.py results: ``python scripts/collect_results.py DIR...``.

Each DIR is a run's ``--out`` folder (or a folder of them); the table lists the model, data,
method, exact sparsity, effective sparsity, test accuracy and times from its results.json.
"""

import glob
import json
import os
import sys


def rows(paths):
    for path in paths:
        found = (
            [path]
            if os.path.isfile(os.path.join(path, "results.json"))
            else sorted(
                os.path.dirname(p) for p in glob.glob(os.path.join(path, "*", "results.json"))
            )
        )
        for run in found:
            with open(os.path.join(run, "results.json")) as f:
                yield json.load(f)


def main(argv):
    print(
        "| model | data (train) | method | epochs | sparsity | effective | test acc | prune s | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows(argv):
        c = r["config"]
        print(
            f"| {c['model']} | {r['dataset']['name']} ({r['dataset']['num_train']}) | "
            f"{c['method']} | {c['epochs']} | {r['sparsity']['sparsity']:.6f} | "
            f"{r.get('effective_sparsity', float('nan')):.4f} | {r['test_accuracy']:.4f} | "
            f"{r['prune_seconds']:.1f} | {r['train_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
