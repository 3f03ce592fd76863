"""How much of a step's reward does the action decide? Against the scoring batch drawn.

        python -m benchmarks.reward_signal --policy jpanning/policies/resnet20-fashion_mnist.msgpack

TD3 learns which fusion weights pay from the rewards it sees. Here, for states that hand
Panning's staircase reaches at round t of an episode (target ρ), the environment steps from the
same state with M actions (each metric alone, the staircase's row, uniform random draws) and K
step keys (the key draws the scoring batch the step evaluates on), and the K x M rewards are
split as a two-way analysis of variance without replication: the action's main effect, the
batch's main effect and the rest. Each reward term (``r_sparsity``, ``r_loss``, ``r_gtg``) is
split the same way. Only the step's own reward is measured: what an action does to later
rounds through the mask it leaves is not.

With ``--future-batches N`` it also measures what an action carries into later rounds: for
the first N step keys of each state, the rest of the episode is played with the staircase (on
the episode's own keys) after each action, and its summed reward is split the same way. If
its spread over the actions is small against the step's own, the return is decided round by
round (a discount near 0 loses little). ``--proxy NAME`` plays the proxy environment.

With ``--greedy TARGET...`` it also plays whole episodes with a one-step greedy controller:
each round it tries the same M actions on the round's own step key and keeps the one with the
highest reward. Its keys are ``benchmarks.policy_eval``'s, so its return compares with that
evaluation's controllers on the very same scoring batches (same policy file, seed, target).

The environment is the policy's (its T, scoring, fusion and normalisation ranges), built as
``benchmarks.policy_eval`` builds it. Writes ``benchmarks/results/reward_signal/<name>/``
(``signal.json``, ``table.md``).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import policy_eval
from jpanning import cpu, data, panning, report, rlpanning
from jpanning import proxy as proxy_lib

RESULTS = os.path.join(os.path.dirname(__file__), "results", "reward_signal")
PARTS = ("reward", "r_sparsity", "r_loss", "r_gtg")


def two_way(r: np.ndarray) -> dict:
    """Standard deviations of a ``[K, M]`` table's batch (rows) and action (columns) main
    effects and of the rest, with the share of the total sum of squares each explains."""
    grand = r.mean()
    rows, cols = r.mean(axis=1) - grand, r.mean(axis=0) - grand
    rest = r - grand - rows[:, None] - cols[None, :]
    k, m = r.shape
    ss = {"batch": m * np.sum(rows**2), "action": k * np.sum(cols**2), "rest": np.sum(rest**2)}
    total = max(sum(ss.values()), 1e-30)
    return {
        "mean": float(grand),
        "std_action": float(np.std(cols)),
        "std_batch": float(np.std(rows)),
        "std_rest": float(np.sqrt(ss["rest"] / r.size)),
        "share_action": float(ss["action"] / total),
        "share_batch": float(ss["batch"] / total),
        "share_rest": float(ss["rest"] / total),
        "action_means": [float(x) for x in r.mean(axis=0)],
    }


def candidates(staircase_row: np.ndarray, draws: np.ndarray) -> list[np.ndarray]:
    """The actions tried at a round, in :func:`action_names` order: each metric alone, the
    staircase's row, then the random draws."""
    alone = [policy_eval.single_metric_actions(m, 1)[0] for m in panning.METRICS]
    return [*alone, staircase_row, *draws]


def action_names(random_actions: int) -> list[str]:
    """The names of :func:`candidates`' actions, in order."""
    return [*panning.METRICS, "staircase"] + [f"random{i}" for i in range(random_actions)]


def greedy_episode(step, reset, env_params, config, target, key, ranges, draws, probes=0):
    """One episode of the one-step greedy controller: each round it steps from the round's
    state with every :func:`candidates` action on the round's own step key (policy_eval's keys
    for ``key``, the seed's) and keeps the one of highest reward.

    With ``probes`` > 0 it does not see the round's batch: it picks the action of highest
    mean reward over ``probes`` other step keys, then steps with it on the round's own key:
    the best a myopic policy choosing among these actions can do (what a critic with
    discount 0 would learn, given enough data).

    Returns:
        ``(totals, picks, state)``: the return, each reward term summed and whether the
        network collapsed; the name of the action kept at each round (:func:`action_names`);
        the last state (its masks).
    """
    names = action_names(len(draws))
    stairs = policy_eval.staircase_actions(target, config.rounds, config.fusion)
    k_episode = policy_eval.episode_key(key, target)
    k_reset, k_steps = jax.random.split(k_episode)
    _, state = reset(k_reset, env_params, target, ranges)
    totals = {"return": 0.0} | {part: 0.0 for part in PARTS[1:]}
    picks = []
    for t in range(config.rounds):
        k_t = jax.random.fold_in(k_steps, t)
        actions = [jnp.asarray(a, jnp.float32) for a in candidates(stairs[t], draws)]
        if probes:
            k_probe = [jax.random.fold_in(jax.random.fold_in(k_steps, 20_000 + t), k)
                       for k in range(probes)]  # fmt: skip
            mean = [np.mean([float(step(k, state, a, env_params)[2]) for k in k_probe])
                    for a in actions]  # fmt: skip
            j = int(np.argmax(mean))
            _, state, reward, terminated, _, info = step(k_t, state, actions[j], env_params)
        else:
            tried = [step(k_t, state, a, env_params) for a in actions]
            j = int(np.argmax([float(x[2]) for x in tried]))
            _, state, reward, terminated, _, info = tried[j]
        picks.append(names[j])
        totals["return"] += float(reward)
        for part in PARTS[1:]:
            totals[part] += float(info[part])
        if bool(terminated):
            break
    return totals | {"collapsed": bool(info["collapsed"])}, picks, state


def future(step, env_params, state, actions, stairs, t, k_steps, k_probes) -> np.ndarray:
    """``[K, M]``: the reward summed over the rest of the episode (rounds t+1 to the end,
    the staircase's actions on the episode's own step keys, the same for every probe) after
    round t stepped with action j on probe key k. Its spread over the actions is what an
    action carries into later rounds (through the masks it leaves: SynFlow's next map and
    the ranges); the step's own reward is not in it."""
    table = np.zeros((len(k_probes), len(actions)))
    for k, k_probe in enumerate(k_probes):
        for j, a in enumerate(actions):
            _, after, _, terminated, _, _ = step(
                k_probe, state, jnp.asarray(a, jnp.float32), env_params
            )
            total = 0.0
            for u in range(t + 1, env_params.rounds):
                if bool(terminated):
                    break
                _, after, reward, terminated, _, _ = step(
                    jax.random.fold_in(k_steps, u), after, jnp.asarray(stairs[u], jnp.float32),
                    env_params,
                )  # fmt: skip
                total += float(reward)
            table[k, j] = total
    return table


def greedy_draws(key, random_actions: int) -> np.ndarray:
    """The random actions :func:`candidates` tries, drawn once per seed."""
    return np.asarray(
        jax.random.uniform(jax.random.fold_in(key, 99), (random_actions, 3), minval=-1.0,
                           maxval=1.0)
    )  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help="a policy file: its environment and ranges")
    p.add_argument("--targets", type=float, nargs="*", default=[0.95, 0.99])
    p.add_argument("--rounds", type=int, nargs="+", default=[10, 30, 50, 70, 90])
    p.add_argument("--batches", type=int, default=10, help="K step keys per state")
    p.add_argument("--random-actions", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", type=float, nargs="*", default=[], help="targets to play greedily")
    p.add_argument(
        "--greedy-probes",
        type=int,
        default=0,
        help="the greedy controller picks by the mean reward over N other scoring batches "
        "instead of the round's own (0: the round's own batch, an oracle)",
    )
    p.add_argument(
        "--future-batches",
        type=int,
        default=0,
        help="for the first N step keys of each state, also play the rest of the episode "
        "(the staircase) after each action and split its summed reward the same way: what an "
        "action carries into later rounds (0: not measured)",
    )
    p.add_argument(
        "--proxy",
        default=None,
        choices=sorted(proxy_lib.PROXIES),
        help="the proxy environment of the same network (jpanning.proxy) instead of the real",
    )
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    cpu.configure()
    _, config, meta = rlpanning.load_policy(args.policy)
    model_name, dataset_name = meta["model"], meta["dataset"]
    dataset = data.load_dataset(dataset_name, seed=0)
    proxy_config = proxy_lib.proxy(args.proxy) if args.proxy else None
    env, env_params, key = policy_eval.build(
        model_name, dataset, config, args.seed, 10, proxy_config
    )
    step, reset = jax.jit(env.step), jax.jit(env.reset)
    names = action_names(args.random_actions)
    draws = greedy_draws(key, args.random_actions)
    rows = []
    for target in args.targets:
        stairs = policy_eval.staircase_actions(target, config.rounds, config.fusion)
        k_episode = policy_eval.episode_key(key, target)
        k_reset, k_steps = jax.random.split(k_episode)
        obs, state = reset(k_reset, env_params, target, meta["ranges"])
        for t in range(max(args.rounds) + 1):
            if t in args.rounds:
                actions = candidates(stairs[t], draws)
                table = {part: np.zeros((args.batches, len(actions))) for part in PARTS}
                k_probes = [
                    jax.random.fold_in(jax.random.fold_in(k_steps, 10_000 + t), k)
                    for k in range(args.batches)
                ][: args.future_batches]
                for k in range(args.batches):
                    k_probe = jax.random.fold_in(jax.random.fold_in(k_steps, 10_000 + t), k)
                    for j, a in enumerate(actions):
                        _, _, reward, _, _, info = step(
                            k_probe, state, jnp.asarray(a, jnp.float32), env_params
                        )
                        table["reward"][k, j] = float(reward)
                        for part in PARTS[1:]:
                            table[part][k, j] = float(info[part])
                row = {"target": target, "round": t, "effective": float(state.effective)}
                row |= {part: two_way(table[part]) for part in PARTS}
                if args.future_batches:
                    row["future"] = two_way(
                        future(step, env_params, state, actions, stairs, t, k_steps, k_probes)
                    )
                rows.append(row)
                r = row["reward"]
                print(
                    f"target {target} round {t}: reward std action {r['std_action']:.4f}, "
                    f"batch {r['std_batch']:.4f}, rest {r['std_rest']:.4f} "
                    f"(action share {r['share_action']:.2f})",
                    flush=True,
                )
            obs, state, *_ = step(
                jax.random.fold_in(k_steps, t), state, jnp.asarray(stairs[t], jnp.float32),
                env_params,
            )  # fmt: skip
    greedy = []
    for target in args.greedy:
        totals, picks, state = greedy_episode(
            step, reset, env_params, config, target, key, meta["ranges"], draws,
            args.greedy_probes,
        )  # fmt: skip
        counts = {n: picks.count(n) for n in names}
        greedy.append({"target": target, "effective": float(state.effective), "picks": counts}
                      | totals)  # fmt: skip
        print(f"greedy target {target}: return {totals['return']:.2f}, picks {counts}", flush=True)
    out = os.path.join(RESULTS, args.name or f"{model_name}-{dataset_name}")
    os.makedirs(out, exist_ok=True)
    command = "python -m benchmarks.reward_signal " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report.write_json(
        os.path.join(out, "signal.json"),
        {"command": command, "policy": args.policy, "actions": names,
         "environment": report.environment(), "rows": rows, "greedy": greedy},
    )  # fmt: skip
    lines = [
        f"# How much of a step's reward the action decides: {model_name}"
        + (f" (its {args.proxy} environment)" if args.proxy else "")
        + f" / {dataset_name}",
        "",
        f"{report.machine_line(report.environment())}; command: `{command}`",
        "",
        f"States reached by the staircase; {args.batches} step keys (scoring batches) x "
        f"{len(names)} actions ({', '.join(names)}) per state. Std of each main effect over "
        "its levels, and the share of the sum of squares it explains."
        + (
            " `future`: the reward of the rest of the episode (the staircase, the episode's "
            f"keys) after each action, over the first {args.future_batches} step keys: what "
            "the action carries into later rounds."
            if args.future_batches
            else ""
        ),
        "",
        "| target | round | part | mean | std action | std batch | std rest | action share "
        "| batch share | best action |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for part in [*PARTS, "future"][: len(PARTS) + ("future" in row)]:
            s = row[part]
            means = np.asarray(s["action_means"])
            higher = part in ("reward", "future")  # rewards; the terms are costs
            best = names[int(np.argmax(means) if higher else np.argmin(means))]
            lines.append(
                f"| {row['target']} | {row['round']} | {part} | {s['mean']:.4f} | "
                f"{s['std_action']:.4f} | {s['std_batch']:.4f} | {s['std_rest']:.4f} | "
                f"{s['share_action']:.2f} | {s['share_batch']:.2f} | {best} |"
            )
    if greedy:
        lines += [
            "",
            "One-step greedy episodes (each round the action of highest reward among the "
            "same actions, on policy_eval's keys"
            + (
                f"; picked by the mean reward over {args.greedy_probes} other scoring batches, "
                "not the round's own):"
                if args.greedy_probes
                else "; picked on the round's own scoring batch, an oracle):"
            ),
            "",
            "| target | return | r_sparsity | r_loss | r_gtg | effective | rounds per action |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in greedy:
            lines.append(
                f"| {g['target']} | {g['return']:.2f} | {g['r_sparsity']:.2f} | "
                f"{g['r_loss']:.2f} | {g['r_gtg']:.2f} | {g['effective']:.4f} | "
                + ", ".join(f"{n} {c}" for n, c in g["picks"].items() if c) + " |"
            )
    report.atomic_write_bytes(os.path.join(out, "table.md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
