"""Does a higher episode return mean a better network? Return against trained test accuracy.

        python -m benchmarks.return_accuracy            # all of it, resumable (hours on 2 cores)
        python -m benchmarks.return_accuracy --seeds 0 --targets 0.99 --controllers synflow
        python -m benchmarks.return_accuracy --report-only

RL Panning's reward is the authors' proxy for a good mask: keep the pruned network's loss and
‖g‖² near the dense network's and its effective sparsity on schedule. A policy that earns a
higher return is only worth having if its masks train better. Here, at each target and seed,
every controller plays :mod:`benchmarks.policy_eval`'s episode on the real environment (the
same network, scoring batches, episode keys and normalisation ranges: the policy's), and the
masks it ends with are trained at a screening table's budget (``--preset``, default
``screening-resnet20``: 20,000 images, 8 epochs, ``run.py``'s recipe) from the initialization
and training key of ``run.py --seed S``. The last epoch's test accuracy is kept (as the
screening table does; the authors keep the best epoch's).

Controllers: policy_eval's (the policy, random, the hand staircase, each metric alone) and
``greedy``, the one-step greedy controller of :mod:`benchmarks.reward_signal` (each round the
action of highest reward among the metrics alone, the staircase's row and two random draws,
tried on the round's own scoring batch: an oracle no policy can be, since it sees the batch).
A mask with no input-output path (effective sparsity 1) counts at chance accuracy, as in the
screening table.

Per target, the Spearman rank correlation between return and test accuracy, across the
controllers' means over seeds and across every episode; also the correlation of each reward
term. Writes ``benchmarks/results/return_accuracy/<name>/``: ``items/<controller>-<target>-
s<seed>.json`` (and the item's masks, ``.npz``, saved before its training), ``table.md``,
``table.json``. Resumable: finished items are kept, and an item whose masks were saved trains
them without playing its episode again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from benchmarks import policy_eval, presets, reward_signal
from benchmarks.proxy import spearman
from jpanning import cpu, data, experiment, report, rlpanning, train
from jpanning.config import RunConfig

RESULTS = os.path.join(os.path.dirname(__file__), "results", "return_accuracy")
CONTROLLERS = (*policy_eval.CONTROLLERS, "greedy")
TARGETS = (0.95, 0.99, 0.995)
TERMS = ("r_sparsity", "r_loss", "r_gtg")
RANDOM_ACTIONS = 2  # the greedy controller's random draws, as reward_signal's default


def rank_correlation(x, y) -> float | None:
    """Spearman's rank correlation; None where either side is constant (undefined)."""
    if np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return None
    return spearman(x, y)


def item_id(controller: str, target: float, seed: int) -> str:
    return f"{controller}-{target}-s{seed}"


def episode(env, env_params, step, reset, name, actor, config, target, key, ranges) -> tuple:
    """``name``'s episode at ``target`` on policy_eval's keys: ``(record, masks)``, the record
    holding the return, each reward term summed, the effective sparsity and whether the
    network collapsed."""
    if name == "greedy":
        draws = reward_signal.greedy_draws(key, RANDOM_ACTIONS)
        totals, picks, state = reward_signal.greedy_episode(
            step, reset, env_params, config, target, key, ranges, draws
        )
        names = reward_signal.action_names(RANDOM_ACTIONS)
        extra = {"picks": {n: picks.count(n) for n in names}}
    else:
        k_episode = policy_eval.episode_key(key, target)
        actions_of = policy_eval.controller(
            name, actor, config.agent_config(), target, config.rounds, config.fusion,
            jax.random.fold_in(k_episode, 7),
        )  # fmt: skip
        totals = {"return": 0.0} | {term: 0.0 for term in TERMS}
        info = state = None
        for _, _, reward, info, state in policy_eval.rounds(
            env, env_params, step, reset, actions_of, target, k_episode, ranges
        ):
            totals["return"] += float(reward)
            for term in TERMS:
                totals[term] += float(info[term])
        extra = {"collapsed": bool(info["collapsed"])}
    record = totals | extra | {"effective": float(state.effective)}
    return record, state.masks


def summarise(items: list[dict], controllers, targets) -> tuple[str, dict]:
    """Markdown and a dict: per target, each controller's mean return and accuracy over its
    seeds, and the rank correlations between return (and each term) and accuracy."""
    lines = [
        "| target | controller | seeds | return | test accuracy | effective |",
        "|---|---|---|---|---|---|",
    ]
    stats = {}
    for target in targets:
        at = [i for i in items if i["target"] == target]
        means = []
        for c in controllers:
            mine = [i for i in at if i["controller"] == c]
            if not mine:
                continue
            ret = np.array([i["return"] for i in mine])
            acc = np.array([i["accuracy"] for i in mine])
            eff = np.mean([i["effective"] for i in mine])
            sd = lambda x: f" ± {np.std(x, ddof=1):.4f}" if len(x) > 1 else ""  # noqa: E731
            chance = sum(i["chance"] for i in mine)
            lines.append(
                f"| {target} | {c} | {len(mine)} | {ret.mean():.2f}{sd(ret)} | "
                f"{acc.mean():.4f}{sd(acc)}{f' ({chance} at chance)' if chance else ''} | "
                f"{eff:.4f} |"
            )
            means.append((c, ret.mean(), acc.mean()))
        row = {"controllers": len(means), "episodes": len(at)}
        if len(means) >= 3:
            row["spearman_means"] = rank_correlation([m[1] for m in means], [m[2] for m in means])
        if len(at) >= 3:
            acc = [i["accuracy"] for i in at]
            row["spearman_episodes"] = rank_correlation([i["return"] for i in at], acc)
            for term in TERMS:
                row[f"spearman_{term}"] = rank_correlation([i[term] for i in at], acc)
        if means:
            row["best_return"] = max(means, key=lambda m: m[1])[0]
            row["best_accuracy"] = max(means, key=lambda m: m[2])[0]
        stats[str(target)] = row
    fmt = lambda row, k: "-" if row.get(k) is None else f"{row[k]:+.2f}"  # noqa: E731
    lines += [
        "",
        "Spearman rank correlation with the test accuracy, per target: of the return across "
        "the controllers' means over seeds, of the return across every episode, and of each "
        "reward term (summed over the episode) across every episode.",
        "",
        "| target | controllers | episodes | return (means) | return (episodes) | "
        + " | ".join(TERMS)
        + " | best return | best accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, row in stats.items():
        lines.append(
            f"| {target} | {row['controllers']} | {row['episodes']} | "
            f"{fmt(row, 'spearman_means')} | {fmt(row, 'spearman_episodes')} | "
            + " | ".join(fmt(row, f"spearman_{t}") for t in TERMS)
            + f" | {row.get('best_return', '-')} | {row.get('best_accuracy', '-')} |"
        )
    return "\n".join(lines) + "\n", stats


def load_items(out: str) -> list[dict]:
    folder = os.path.join(out, "items")
    if not os.path.isdir(folder):
        return []
    items = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and not name.endswith(".episode.json"):
            with open(os.path.join(folder, name)) as f:
                items.append(json.load(f))
    return items


def write_report(out: str, header: str) -> str:
    items = load_items(out)
    controllers = [c for c in CONTROLLERS if any(i["controller"] == c for i in items)]
    targets = sorted({i["target"] for i in items})
    table, stats = summarise(items, controllers, targets)
    text = header + table
    report.atomic_write_bytes(os.path.join(out, "table.md"), text.encode())
    report.write_json(os.path.join(out, "table.json"), {"stats": stats, "items": items})
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--policy",
        default=None,
        help="the policy file: its controller, environment settings and ranges (default: "
        "the policy that ships for the preset's model, the one run.py screens with)",
    )
    p.add_argument(
        "--preset",
        default="screening-resnet20",
        choices=sorted(presets.PRESETS),
        help="the training budget: this grid's epochs and training images",
    )
    p.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--controllers", nargs="+", default=list(CONTROLLERS), choices=CONTROLLERS)
    p.add_argument("--name", default=None, help="results folder (default: the preset's name)")
    p.add_argument("--report-only", action="store_true", help="rewrite table.md from the items")
    args = p.parse_args(argv)
    grid = presets.PRESETS[args.preset]
    policy = args.policy or rlpanning.shipped_policy(grid.model)[0]
    out = os.path.join(RESULTS, args.name or args.preset)
    os.makedirs(os.path.join(out, "items"), exist_ok=True)
    header = (
        f"# Episode return against test accuracy: {grid.model} / {grid.dataset}\n\n"
        f"{report.machine_line(report.environment())}; command: `python -m "
        f"benchmarks.return_accuracy {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Each controller's final masks of benchmarks.policy_eval's episode (the policy "
        f"`{os.path.basename(policy)}`'s environment and ranges), trained at "
        f"`{args.preset}`'s budget ({grid.epochs} epochs, {grid.train_limit} training images); "
        "test accuracy at the last epoch; mean ± std over seeds (ddof=1).\n\n"
    )
    if args.report_only:
        print(write_report(out, header))
        return 0
    cpu.configure()
    actor, config, meta = rlpanning.load_policy(policy)
    if meta.get("model", grid.model) != grid.model:
        p.error(f"the policy screens {meta['model']!r}; {args.preset} trains {grid.model!r}")
    env_data = data.load_dataset(grid.dataset, seed=0)  # policy_eval's scoring data
    for seed in args.seeds:
        todo = [
            (c, t) for t in args.targets for c in args.controllers
            if not os.path.isfile(os.path.join(out, "items", item_id(c, t, seed) + ".json"))
        ]  # fmt: skip
        if not todo:
            continue
        run = RunConfig.from_flat(
            {"model": grid.model, "dataset": grid.dataset, "seed": seed, "ratio": 0.5,
             "epochs": grid.epochs, "train_limit": grid.train_limit,
             "test_limit": grid.test_limit}
        )  # fmt: skip
        train_data = data.load_dataset(
            grid.dataset, train_limit=grid.train_limit, test_limit=grid.test_limit, seed=seed
        )  # as the harness loads a cell's data
        net = experiment.setup(run, train_data)  # run.py --seed S: init and training key
        env, env_params, key = policy_eval.build(grid.model, env_data, config, seed, 10)
        step, reset = jax.jit(env.step), jax.jit(env.reset)
        for name, target in todo:
            path = os.path.join(out, "items", item_id(name, target, seed))
            start = time.perf_counter()
            if os.path.isfile(path + ".npz") and os.path.isfile(path + ".episode.json"):
                masks = report.load_npz(path + ".npz")["masks"]
                with open(path + ".episode.json") as f:
                    record = json.load(f)
            else:
                record, masks = episode(
                    env, env_params, step, reset, name, actor, config, target, key,
                    meta["ranges"],
                )  # fmt: skip
                record |= {"episode_seconds": time.perf_counter() - start}
                masks = jax.tree.map(lambda m: np.asarray(m).astype(bool), masks)  # 0/1
                report.save_npz(path + ".npz", masks=masks)
                report.write_json(path + ".episode.json", record)
            print(f"seed {seed} target {target} {name}: return {record['return']:.2f}, "
                  f"effective {record['effective']:.4f}", flush=True)  # fmt: skip
            chance = record["effective"] >= 1.0
            if chance:  # no input reaches the output: the literature's chance accuracy
                accuracy, history, seconds = 1.0 / train_data.num_classes, [], 0.0
            else:
                start = time.perf_counter()
                _, history = train.train(
                    net.model, net.variables, train_data, experiment.train_config(run),
                    net.train_key, masks=jax.tree.map(lambda m: np.asarray(m, np.float32), masks),
                    progress=False,
                )  # fmt: skip
                accuracy, seconds = float(history[-1]["test_accuracy"]), time.perf_counter() - start
            item = {"controller": name, "target": target, "seed": seed} | record | {
                "accuracy": accuracy, "chance": chance, "history": history,
                "train_seconds": seconds,
            }  # fmt: skip
            report.write_json(path + ".json", item)
            os.remove(path + ".episode.json")
            print(f"  trained: test accuracy {accuracy:.4f} ({seconds:.0f} s)", flush=True)
            write_report(out, header)
    print(write_report(out, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
