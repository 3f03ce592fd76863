"""Has an RL Panning policy learned anything? Its episode returns against fixed controllers.

        python -m benchmarks.policy_eval --policy jpanning/policies/resnet20-fashion_mnist.msgpack
        python -m benchmarks.policy_eval --policy runs/x/policy.msgpack --model lenet5 \\
            --targets 0.9 0.98 --seeds 0 --name lenet5-smoke

On held-out targets (fixed, not drawn) and seeds, every controller plays the same episodes of
the policy's own environment (its T, scoring, fusion, effective sparsity, and the
normalisation ranges it observed through at the end of its search):

* ``policy``: the trained actor, deterministic (what ``run.py`` screens with);
* ``random``: actions drawn uniformly from [−1, 1]³ each round;
* ``staircase``: the hand Panning fusion weights of the round's sparsity (the authors'
  ``add`` or ``mul`` staircase, advanced as their ``Panning`` does);
* ``synflow``, ``snip``, ``grasp``: one metric alone (weight 1, the others 0).

A seed changes the network's initialization and the scoring batches (as ``run.py --seed``
does); every controller of a seed sees the same network and the same batches. The episode
return is the environment's (the authors' reward), so "the policy learned" means a higher
return than every fixed controller on the same episodes. Also written per episode: the final
effective sparsity, whether the network collapsed, and each reward term summed.

``--proxy NAME`` plays the proxy environment of the same network (:mod:`jpanning.proxy`).
A policy searched on a proxy (its meta names it) and judged on the real environment, or the
reverse, does not observe through its own ranges: they measure another network's losses.
As the authors' environment widens its ranges on the network it screens, the real
environment's warm-up ranges are first widened by ``--widen-episodes`` episodes of the policy
(default 5, targets from the late distribution; :func:`widen_ranges`) and every controller
then plays through those. Without ``--policy`` only the fixed controllers play (the shipped
policy's environment settings, the warm-up ranges).

Writes ``benchmarks/results/policy_eval/<name>/`` (``episodes.json``, ``table.md``), resuming
from the episodes already there.

A fixed controller's episode does not depend on the ranges (its actions do not read the
observation), so each is played once per environment: its rounds' losses and ‖g‖² are kept
in ``benchmarks/results/policy_eval/trajectories/`` and its return through another policy's
ranges is recomputed from them (:func:`rescore`; ``--no-cache`` plays it again). Judging a
proxy's policy on the real ResNet-20 then costs its own episodes, not the 75 of the fixed
controllers (about 70 s each on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jpanning import cpu, data, experiment, panning, report, rlpanning
from jpanning import env as env_lib
from jpanning import masks as masks_lib
from jpanning import proxy as proxy_lib
from jpanning.agents import td3
from jpanning.config import RunConfig

RESULTS = os.path.join(os.path.dirname(__file__), "results", "policy_eval")
CONTROLLERS = ("policy", "random", "staircase", "synflow", "snip", "grasp")
TARGETS = (0.9, 0.95, 0.98, 0.99, 0.995)
TERMS = ("r_sparsity", "r_loss", "r_gtg", "r_done")  # the reward's terms (env info)
# What each round of an episode records so that its return can be recomputed through any
# starting ranges (:func:`rescore`): the dense and masked loss and ‖g‖², and the two terms
# that do not read the ranges.
RAW = ("loss", "sparse_loss", "grad_norm", "sparse_grad_norm", "r_sparsity", "r_done")
TRAJECTORIES = os.path.join(RESULTS, "trajectories")


def staircase_actions(target: float, rounds: int, fusion: str) -> np.ndarray:
    """``[T, 3]`` actions whose fusion weights ``(a + 1) / 2`` are hand Panning's staircase
    row of each round (:func:`jpanning.panning.schedule_bands`)."""
    config = panning.PanningConfig(rounds=rounds, fusion=fusion)
    schedule = masks_lib.exponential_schedule(target, rounds)
    rows = np.asarray(config.staircase, np.float64)[
        panning.schedule_bands(schedule, config.thresholds)
    ]
    return 2.0 * rows - 1.0  # 'mul' rows have weights up to 1: still within [−1, 1]


def single_metric_actions(metric: str, rounds: int) -> np.ndarray:
    """``[T, 3]``: weight 1 on ``metric``, 0 on the others."""
    row = -np.ones(3)
    row[panning.METRICS.index(metric)] = 1.0
    return np.tile(row, (rounds, 1))


def episode_key(key, target: float):
    """The key of the episode at ``target`` for a seed's ``key``: every controller judged at
    that target and seed plays the same scoring batches."""
    return jax.random.fold_in(key, int(round(target * 1e4)))


def build(
    model_name: str,
    dataset,
    config: rlpanning.RLPanningConfig,
    seed: int,
    spc: int,
    proxy_config: proxy_lib.ProxyConfig | None = None,
):
    """The environment ``run.py --model M --seed S`` screens in: the same initialization and
    scoring data (:func:`jpanning.experiment.setup`; a pool of the policy's size, or the
    training set for fresh batches); with ``proxy_config``, the proxy environment of the
    same network (:func:`jpanning.proxy.build_env`, the seed's pool)."""
    run = RunConfig.from_flat(
        {"model": model_name, "seed": seed, "samples_per_class": spc}
        | {"ratio": 0.5}  # a placeholder: each episode draws its own target
    )
    problem = experiment.prune_problem(run, experiment.setup(run, dataset))
    key = jax.random.fold_in(problem.key, 1)
    if proxy_config is not None:
        env, env_params = proxy_lib.build_env(problem, dataset, config, proxy_config, seed, key=key)
        return env, env_params, problem.key
    if config.scoring == "pool":
        scoring_data = rlpanning.score_pool(dataset, spc, config.pool_size, seed)
    else:
        scoring_data = (dataset.train_images, dataset.train_labels)
    env, env_params = rlpanning.build_env(problem, scoring_data, config, key=key)
    return env, env_params, problem.key


def rounds(env, env_params, step, reset, actions_of, target, key, ranges):
    """One episode, round by round: yields ``(obs, action, reward, info, state)``, where
    ``obs`` is what round t's action ``actions_of(t, obs)`` saw and the rest is the step's."""
    k_reset, k_steps = jax.random.split(key)
    obs, state = reset(k_reset, env_params, target, ranges)
    for t in range(env_params.rounds):
        action = jnp.asarray(actions_of(t, obs), jnp.float32)
        next_obs, state, reward, terminated, _, info = step(
            jax.random.fold_in(k_steps, t), state, action, env_params
        )
        yield obs, action, reward, info, state
        if bool(terminated):
            break
        obs = next_obs


def play(env, env_params, step, reset, actions_of, target, key, ranges) -> dict:
    """One episode (:func:`rounds`); returns its totals."""
    totals = {"return": 0.0} | {term: 0.0 for term in TERMS}
    weights, raw = [], []
    for _, _, reward, info, state in rounds(
        env, env_params, step, reset, actions_of, target, key, ranges
    ):
        totals["return"] += float(reward)
        weights.append(np.asarray(info["weights"], np.float64).round(4).tolist())
        for term in TERMS:
            totals[term] += float(info[term])
        values = [getattr(state, n) for n in RAW[:4]] + [info[n] for n in RAW[4:]]
        raw.append([float(f"{float(v):.9g}") for v in values])  # float32's digits
    return totals | {
        "raw": raw,
        "rounds_played": len(weights),
        "collapsed": bool(info["collapsed"]),
        "effective": float(state.effective),
        "sparsity": float(info["sparsity"]),
        "weights": weights,  # the fusion weights (synflow, snip, grasp) of each round
    }


def rescore(raw, ranges, gtg_scale: float) -> dict:
    """An episode's return and reward terms through other starting ``ranges``, from its
    rounds' :data:`RAW` values (``play(...)["raw"]``), in float64.

    A fixed controller's actions do not read the observation, so its masks, losses and
    ‖g‖² are the same whatever ranges the environment observes through; only ``r_loss`` and
    ``r_gtg`` read them, through ranges that each round widens with its own values
    (:meth:`jpanning.env.PanningEnv.step`). Replaying that widening gives the episode's
    return through any starting ranges without playing it again (to float32 rounding).
    """
    loss_range = np.asarray(ranges.loss, np.float64)
    grad_range = np.asarray(ranges.grad_norm, np.float64)

    def normalised(x, r):
        width = r[1] - r[0]
        return x / width if width != 0 else 0.0

    totals = {"return": 0.0} | {term: 0.0 for term in TERMS}
    for loss, sparse_loss, grad_norm, sparse_grad_norm, r_sparsity, r_done in raw:
        loss_range = np.array(
            [min(loss_range[0], loss, sparse_loss), max(loss_range[1], loss, sparse_loss)]
        )
        grad_range = np.array(
            [
                min(grad_range[0], grad_norm, sparse_grad_norm),
                max(grad_range[1], grad_norm, sparse_grad_norm),
            ]
        )
        terms = {
            "r_sparsity": r_sparsity,
            "r_loss": normalised(abs(sparse_loss - loss), loss_range),
            "r_gtg": normalised(abs(sparse_grad_norm - grad_norm), grad_range) / gtg_scale,
            "r_done": r_done,
        }
        totals["return"] -= sum(terms.values())
        for term, value in terms.items():
            totals[term] += value
    return totals


def trajectory_key(model_name, dataset_name, config, spc, proxy_name, proxy_config) -> dict:
    """What a fixed controller's episode depends on: the network, the scoring data and the
    environment's settings, not its ranges or what the policy observes (``observe_gap``)."""
    options = {k: v for k, v in rlpanning.env_options(config).items() if k != "observe_gap"}
    return {
        "model": model_name,
        "dataset": dataset_name,
        "samples_per_class": spc,
        "pool_size": config.pool_size if config.scoring == "pool" else None,
        "proxy": proxy_name,
        "proxy_config": dataclasses.asdict(proxy_config) if proxy_config else None,
        "env": options,
    }


def trajectory_path(key: dict) -> str:
    """``benchmarks/results/policy_eval/trajectories/<model>-<dataset>-<proxy>-<hash>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{key['model']}-{key['dataset']}-{key['proxy'] or 'real'}-{digest}.json"
    return os.path.join(TRAJECTORIES, name)


def widen_ranges(env, env_params, step, reset, actions_of, episodes: int, key, ranges=None):
    """The normalisation ranges after ``episodes`` episodes of ``actions_of`` (targets drawn
    from the authors' late distribution, each episode starting from the last one's ranges,
    as :meth:`jpanning.env.PanningEnv.reset_after` carries them in a search).

    This is how a policy trained on another environment (a proxy) is judged on this one: the
    authors screen through the ranges their environment widened on the network it screens,
    so the policy's own ranges, of another network's losses, are replaced by this
    environment's warm-up ranges (``ranges=None``) widened by the policy's own episodes.

    Returns:
        ``(ranges, targets)``: a :class:`jpanning.env.Ranges` (``ranges`` or the warm-up ones
        when ``episodes`` is 0) and the targets played.
    """
    late = env_params.with_targets(env_lib.TARGETS_LATE)
    targets = []
    for i in range(int(episodes)):
        k_target, k_episode = jax.random.split(jax.random.fold_in(key, i))
        target = float(env.sample_target(k_target, late))
        targets.append(target)
        state = None
        for *_, state in rounds(
            env, env_params, step, reset, actions_of, target, k_episode, ranges
        ):
            pass
        ranges = state.ranges
    return (env_params.ranges if ranges is None else ranges), targets


def controller(name, actor, agent_config, target, rounds, fusion, key):
    """``actions_of(t, obs)`` for controller ``name``."""
    if name == "policy":
        act = jax.jit(lambda obs: td3.policy(actor, obs, agent_config, env_lib.ACTION_SIZE))
        return lambda t, obs: act(obs)
    if name == "random":
        draws = np.asarray(jax.random.uniform(key, (rounds, 3), minval=-1.0, maxval=1.0))
        return lambda t, obs: draws[t]
    table = (
        staircase_actions(target, rounds, fusion)
        if name == "staircase"
        else single_metric_actions(name, rounds)
    )
    return lambda t, obs: table[t]


def summarise(episodes: list[dict], controllers, targets) -> str:
    """Markdown: mean ± std of the return over seeds per controller and target, then the
    policy's margin over the best fixed controller."""

    def stats(c, s):
        xs = [e["return"] for e in episodes if e["controller"] == c and e["target"] == s]
        return (np.mean(xs), np.std(xs), len(xs)) if xs else (np.nan, np.nan, 0)

    lines = [
        "| controller | " + " | ".join(f"{s}" for s in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for c in controllers:
        cells = []
        for s in targets:
            m, sd, n = stats(c, s)
            collapsed = sum(
                e["collapsed"] for e in episodes if e["controller"] == c and e["target"] == s
            )
            cells.append(f"{m:.2f} ± {sd:.2f}" + (f" ({collapsed} collapsed)" if collapsed else ""))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if "policy" in controllers:
        margins = []
        for s in targets:
            best = max((stats(c, s)[0], c) for c in controllers if c != "policy" and stats(c, s)[2])
            margins.append(f"{stats('policy', s)[0] - best[0]:+.2f} vs {best[1]}")
        lines.append("| policy − best fixed | " + " | ".join(margins) + " |")
    return "\n".join(lines) + "\n"


def plot_weights(episodes: list[dict], path: str, title: str) -> None:
    """The fusion weights the policy picks over the rounds (solid, mean over seeds) beside
    the hand staircase (dashed), one panel per target; PNG."""
    plt = report.pyplot()
    targets = sorted({e["target"] for e in episodes if e["controller"] == "policy"})
    if not targets:
        return
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    colors = {"synflow": "#1f77b4", "snip": "#ff7f0e", "grasp": "#2ca02c"}
    for ax, target in zip(axes, targets):
        for controller, style in (("policy", "-"), ("staircase", "--")):
            runs = [
                np.asarray(e["weights"])
                for e in episodes
                if e["controller"] == controller and e["target"] == target
            ]
            if not runs:
                continue
            rounds = min(len(r) for r in runs)
            mean = np.mean([r[:rounds] for r in runs], axis=0)
            for i, metric in enumerate(panning.METRICS):
                ax.plot(
                    np.arange(1, rounds + 1), mean[:, i], style, color=colors[metric],
                    label=f"{metric} ({controller})",
                )  # fmt: skip
        ax.set_title(f"target {target}", fontsize=9)
        ax.set_xlabel("round")
    axes[0].set_ylabel("fusion weight (a + 1) / 2")
    axes[-1].legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=10)
    report.save_png(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--policy",
        default=None,
        help="a policy file (rlpanning.save_policy); without one only the fixed controllers "
        "play, in the shipped policy's environment settings, through the warm-up ranges",
    )
    p.add_argument("--model", default=None, help="default: the model the policy was trained on")
    p.add_argument("--dataset", default=None, help="default: the policy's dataset")
    p.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--controllers", nargs="+", default=None, choices=CONTROLLERS)
    p.add_argument("--samples-per-class", type=int, default=10)
    p.add_argument(
        "--proxy",
        default=None,
        choices=sorted(proxy_lib.PROXIES),
        help="play the proxy environment of the same network (jpanning.proxy) instead",
    )
    p.add_argument(
        "--widen-episodes",
        type=int,
        default=None,
        help="first widen the environment's warm-up ranges with this many episodes of the "
        "policy (late targets) and play every controller through them (widen_ranges); "
        "default: 5 for a policy trained on another environment (a proxy's policy on the "
        "real one, or the reverse), else 0 (the policy's own ranges)",
    )
    p.add_argument("--name", default=None, help="results folder (default: model-dataset)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="play every fixed controller's episode (default: recompute the return of one "
        "played before in the same environment through this run's ranges, rescore)",
    )
    args = p.parse_args(argv)
    cpu.configure()
    if args.policy is not None:
        actor, config, meta = rlpanning.load_policy(args.policy)
    else:
        actor, config = None, rlpanning.RLPanningConfig(scoring="pool")
        meta = {"ranges": None, "model": "resnet20", "dataset": "fashion_mnist"}
    controllers = args.controllers or [c for c in CONTROLLERS if actor is not None or c != "policy"]
    if actor is None and "policy" in controllers:
        p.error("the policy controller needs --policy")
    trained_on = meta.get("proxy")  # the proxy a policy was searched on (None: real)
    widen = args.widen_episodes
    if widen is None:
        widen = 5 if actor is not None and trained_on != args.proxy else 0
    if widen and actor is None:
        p.error("--widen-episodes plays the policy: it needs --policy")
    proxy_config = proxy_lib.proxy(args.proxy) if args.proxy else None
    model_name = args.model or meta.get("model")
    dataset_name = args.dataset or meta.get("dataset")
    out = os.path.join(RESULTS, args.name or f"{model_name}-{dataset_name}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "episodes.json")
    episodes, widened = [], {}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        episodes, widened = saved["episodes"], saved.get("widened", {})
    seen = {(e["controller"], e["target"], e["seed"]) for e in episodes}
    key_fields = trajectory_key(
        model_name, dataset_name, config, args.samples_per_class, args.proxy, proxy_config
    )
    cache_path = trajectory_path(key_fields)
    trajectories = {}
    if os.path.isfile(cache_path) and not args.no_cache:
        with open(cache_path) as f:
            trajectories = {
                (e["controller"], e["target"], e["seed"]): e for e in json.load(f)["episodes"]
            }

    def save_trajectories():
        os.makedirs(TRAJECTORIES, exist_ok=True)
        report.write_json(
            cache_path,
            {
                "key": key_fields,
                "command": "python -m benchmarks.policy_eval " + " ".join(sys.argv[1:]),
                "episodes": [
                    {"controller": c, "target": t, "seed": s} | e
                    for (c, t, s), e in sorted(trajectories.items())
                ],
            },
        )

    dataset = data.load_dataset(dataset_name, seed=0)
    environment = report.environment()
    agent_config = config.agent_config()
    for seed in args.seeds:
        todo = [(c, s) for s in args.targets for c in controllers if (c, s, seed) not in seen]
        if not todo:
            continue
        env, env_params, key = build(
            model_name, dataset, config, seed, args.samples_per_class, proxy_config
        )
        step, reset = jax.jit(env.step), jax.jit(env.reset)
        ranges = meta["ranges"]
        if widen:
            act = controller("policy", actor, agent_config, 0.0, config.rounds, config.fusion, key)
            ranges, played = widen_ranges(
                env, env_params, step, reset, act, widen, jax.random.fold_in(key, 99)
            )
            widened[str(seed)] = {
                "episodes": widen,
                "targets": played,
                "loss": np.asarray(ranges.loss).tolist(),
                "grad_norm": np.asarray(ranges.grad_norm).tolist(),
            }
            print(f"seed {seed}: ranges widened by {widen} policy episodes: {widened[str(seed)]}")
        for name, target in todo:
            k_episode = episode_key(key, target)  # the same for every controller
            actions_of = controller(
                name, actor, agent_config, target, config.rounds, config.fusion,
                jax.random.fold_in(k_episode, 7),
            )  # fmt: skip
            start = time.perf_counter()
            cached = trajectories.get((name, target, seed)) if name != "policy" else None
            if cached is None:
                result = play(env, env_params, step, reset, actions_of, target, k_episode, ranges)
                if name != "policy" and not args.no_cache:
                    trajectories[(name, target, seed)] = {
                        k: v for k, v in result.items() if k not in ("return", *TERMS)
                    }
                    save_trajectories()
            else:  # the same episode, its return recomputed through these ranges
                result = cached | rescore(cached["raw"], ranges, float(env_params.gtg_scale))
                result["rescored_from"] = os.path.relpath(cache_path, RESULTS)
            episodes.append(
                {"controller": name, "target": target, "seed": seed}
                | {k: v for k, v in result.items() if k != "raw"}  # kept in the trajectories
                | {"seconds": time.perf_counter() - start}
            )
            print(
                f"seed {seed} target {target} {name:9s} return {result['return']:8.2f} "
                f"effective {result['effective']:.4f}"
                + (" collapsed" if result["collapsed"] else ""),
                flush=True,
            )
            report.write_json(
                path,
                {
                    "command": "python -m benchmarks.policy_eval " + " ".join(sys.argv[1:]),
                    "policy": os.path.abspath(args.policy) if args.policy else None,
                    "policy_meta": {k: v for k, v in meta.items() if k != "ranges"},
                    "env": rlpanning.env_options(config),
                    "proxy": args.proxy,
                    "proxy_config": dataclasses.asdict(proxy_config) if proxy_config else None,
                    "widened": widened,
                    "model": model_name,
                    "dataset": dataset_name,
                    "environment": environment,
                    "episodes": episodes,
                },
            )
    table = summarise(
        episodes,
        [c for c in CONTROLLERS if any(e["controller"] == c for e in episodes)],
        sorted({e["target"] for e in episodes}),
    )
    what = os.path.basename(args.policy) if args.policy else "fixed controllers"
    where = f"the {args.proxy} proxy of {model_name}" if args.proxy else model_name
    header = (
        f"# {what} on {where} / {dataset_name}: episode return, "
        f"mean ± std over seeds {sorted({e['seed'] for e in episodes})}\n\n"
        f"{report.machine_line(report.environment())}; command: `python -m "
        f"benchmarks.policy_eval {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        + (
            f"Ranges: the environment's warm-up ranges widened by {widen} episodes of the "
            "policy (`widened` in episodes.json).\n\n"
            if widen
            else ""
        )
    )
    report.atomic_write_bytes(os.path.join(out, "table.md"), (header + table).encode())
    if actor is not None:
        plot_weights(
            episodes,
            os.path.join(out, "weights.png"),
            f"{what} on {where}: policy (solid) vs hand staircase",
        )
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
