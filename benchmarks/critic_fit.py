"""Does an RL Panning search's critic know what its episodes return? Q against rolled-out returns.

    python -m benchmarks.critic_fit --checkpoint runs/policy-resnet20-fmnist/checkpoints/search \\
        --policy benchmarks/results/policy_eval/resnet20-fashion_mnist-step39629/policy.msgpack \\
        --offline 40000

TD3's actor climbs its critic: a policy is only as good as ``Q(s, a)``'s ordering of actions.
Writes ``benchmarks/results/critic_fit/<name>/``:

* ``trace.md``, ``trace.png``: the search's own per-step metrics from its checkpoint, per
  2,000 agent steps: the critic loss, the mean Q, the actor loss, the rewards and the
  collapse penalties among them (every reward is ≤ 0, so a positive Q is divergence);
* ``offline.md``, ``offline.png`` (with ``--offline UPDATES``): fresh TD3 agents trained on
  the checkpoint's replay buffer alone, with the MSE critic loss, with MSE after removing the
  rewards below −1, and with the Huber loss;
* ``table.md``, ``rounds.json``, ``q_vs_return.png``: the policy's own environment played as
  ``benchmarks.policy_eval`` does (held-out targets, the same network and scoring pool per
  seed, the policy's normalisation ranges) with the policy and with fixed controllers (the
  hand staircase, each metric alone, random actions). At every round the search's twin
  critic, ``min(Q1, Q2)(s_t, a_t)``, is set against the discounted return collected from
  there on, ``G_t = sum_k gamma^k r_{t+k}`` (the episode ends at round T: no bootstrap):
  their correlation, the controllers ranked by ``G_0`` and by ``Q_0``, and, in the policy's
  own states, how often the critic prefers the policy's action to SynFlow alone and to the
  staircase's row.

``--checkpoint`` is a search's ``checkpoints/search`` folder (its newest step is read);
``--policy`` the policy exported from that same step (``scripts/export_policy.py``), which
gives the environment's settings and ranges; the two are checked to hold the same actor.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import policy_eval
from jpanning import checkpoint as checkpoint_lib
from jpanning import cpu, data, report, rlpanning
from jpanning.agents import td3

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "critic_fit")
CONTROLLERS = ("policy", "staircase", "synflow", "snip", "grasp", "random")


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = r_t + gamma * G_{t+1}``, ``G_T = 0`` (the episode ends: no bootstrap)."""
    out = np.zeros(len(rewards), np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


def play(env, env_params, step, reset, actions_of, target, key, ranges) -> dict:
    """One episode (:func:`benchmarks.policy_eval.rounds`); every round's observation,
    action and reward."""
    observations, actions, rewards = [], [], []
    for obs, action, reward, info, _ in policy_eval.rounds(
        env, env_params, step, reset, actions_of, target, key, ranges
    ):
        observations.append(np.asarray(obs, np.float32))
        actions.append(np.asarray(action, np.float32))
        rewards.append(float(reward))
    return {
        "obs": np.stack(observations),
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards),
        "collapsed": bool(info["collapsed"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a search's checkpoints/search folder")
    p.add_argument("--policy", required=True, help="the policy exported from that step")
    p.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.99])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samples-per-class", type=int, default=10)
    p.add_argument("--name", default=None, help="results folder (default: model-dataset-stepN)")
    p.add_argument(
        "--offline",
        type=int,
        default=0,
        metavar="UPDATES",
        help="also train fresh TD3 agents for UPDATES updates on the checkpoint's replay "
        "buffer: MSE, MSE without the collapse penalties, Huber (offline.md)",
    )
    args = p.parse_args(argv)
    cpu.configure()
    actor, config, meta = rlpanning.load_policy(args.policy)
    with checkpoint_lib.opened(args.checkpoint) as ckpt:
        step, state, _, metrics = ckpt.restore_saved()
    critic_params = jax.tree.map(jnp.asarray, state["agent"]["critic_params"])
    saved_actor = jax.tree.map(jnp.asarray, state["agent"]["actor_params"])
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), actor, saved_actor))
    if not same:
        raise SystemExit(f"{args.policy} is not the actor of {args.checkpoint}'s step {step}")
    agent_config = config.agent_config()
    critic = td3._critic(agent_config)
    q_min = jax.jit(lambda o, a: jnp.min(critic.apply(critic_params, o, a), axis=0))
    gamma = agent_config.gamma
    model_name, dataset_name = meta["model"], meta["dataset"]
    name = args.name or f"{model_name}-{dataset_name}-step{step}"
    out = os.path.join(RESULTS, name)
    os.makedirs(out, exist_ok=True)
    if metrics is not None:  # the search's own trace, before any episode is played
        trace = search_trace(metrics)
        report.atomic_write_bytes(os.path.join(out, "trace.md"), trace_table(trace, step).encode())
        plot_trace(trace, os.path.join(out, "trace.png"), f"{model_name} search, step {step}")
        print(trace_table(trace, step))
    if args.offline:
        runs = offline(state["buffer"], config.agent_config(), args.offline)
        text = offline_table(runs, step, args.offline)
        report.atomic_write_bytes(os.path.join(out, "offline.md"), text.encode())
        plot_offline(runs, os.path.join(out, "offline.png"), f"replay buffer of step {step}")
        print(text)
    dataset = data.load_dataset(dataset_name, seed=0)
    synflow_row = policy_eval.single_metric_actions("synflow", config.rounds)[0]
    episodes = []
    for seed in args.seeds:
        env, env_params, key = policy_eval.build(
            model_name, dataset, config, seed, args.samples_per_class
        )
        step_fn, reset = jax.jit(env.step), jax.jit(env.reset)
        for target in args.targets:
            k_episode = policy_eval.episode_key(key, target)
            stair = policy_eval.staircase_actions(target, config.rounds, config.fusion)
            for name_c in CONTROLLERS:
                actions_of = policy_eval.controller(
                    name_c, actor, agent_config, target, config.rounds, config.fusion,
                    jax.random.fold_in(k_episode, 7),
                )  # fmt: skip
                ep = play(env, env_params, step_fn, reset, actions_of, target, k_episode,
                          meta["ranges"])  # fmt: skip
                obs = jnp.asarray(ep["obs"])
                ep |= {
                    "controller": name_c, "target": target, "seed": seed,
                    "G": returns_to_go(ep["rewards"], gamma),
                    "Q": np.asarray(q_min(obs, jnp.asarray(ep["actions"])), np.float64),
                }  # fmt: skip
                if name_c == "policy":  # the critic's preference in the policy's own states
                    rows = len(ep["obs"])
                    ep["Q_synflow"] = np.asarray(
                        q_min(obs, jnp.tile(jnp.asarray(synflow_row, jnp.float32), (rows, 1)))
                    )
                    ep["Q_staircase"] = np.asarray(
                        q_min(obs, jnp.asarray(stair[:rows], jnp.float32))
                    )
                episodes.append(ep)
                print(
                    f"seed {seed} target {target} {name_c:9s} G0 {ep['G'][0]:8.3f} "
                    f"Q0 {ep['Q'][0]:8.3f} return {ep['rewards'].sum():8.3f}"
                    + (" collapsed" if ep["collapsed"] else ""),
                    flush=True,
                )
    table = summarise(episodes, args, step)
    report.atomic_write_bytes(os.path.join(out, "table.md"), table.encode())
    report.write_json(
        os.path.join(out, "rounds.json"),
        {
            "command": "python -m benchmarks.critic_fit " + " ".join(argv or sys.argv[1:]),
            "step": step,
            "gamma": gamma,
            "environment": report.environment(),
            "episodes": [
                {
                    k: (v.tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in e.items()
                    if k != "obs"
                }
                for e in episodes
            ],
        },
    )
    plot(episodes, os.path.join(out, "q_vs_return.png"), f"critic of step {step}")
    print(table)
    return 0


def search_trace(metrics: dict, window: int = 2000) -> list[dict]:
    """Per ``window`` agent steps of the search (its checkpoint's per-step metrics): the mean
    Q of the sampled batches, the critic loss (median and mean), the actor loss, the rewards
    seen and how many were collapse penalties (below -1)."""
    q, loss = np.asarray(metrics["q"]), np.asarray(metrics["critic_loss"])
    actor, updated = np.asarray(metrics["actor_loss"]), np.asarray(metrics["actor_updated"])
    reward, learned = np.asarray(metrics["reward"]), np.asarray(metrics["updated"])
    rows = []
    for start in range(0, len(q), window):
        sl = slice(start, start + window)
        live = learned[sl]
        if not live.any():
            continue
        rows.append(
            {
                "steps": [start, min(start + window, len(q))],
                "q_mean": float(q[sl][live].mean()),
                "critic_loss_median": float(np.median(loss[sl][live])),
                "critic_loss_mean": float(loss[sl][live].mean()),
                "actor_loss_mean": float(actor[sl][updated[sl]].mean()),
                "reward_mean": float(reward[sl].mean()),
                "reward_min": float(reward[sl].min()),
                "collapse_penalties": int((reward[sl] < -1.0).sum()),
            }
        )
    return rows


def trace_table(trace: list[dict], step: int) -> str:
    lines = [
        f"# The search's critic, step by step (to step {step})",
        "",
        "From the checkpoint's per-step metrics, over the agent updates of each window: Q = "
        "the mean of both critics on the sampled batch; the critic loss; the actor loss "
        "(−Q1(s, μ(s))); the rewards collected (all are ≤ 0, so a true Q is ≤ 0); collapse "
        "penalties = rewards below −1 (`r_done`).",
        "",
        "| steps | mean Q | critic loss median | critic loss mean | actor loss | mean reward "
        "| min reward | collapse penalties |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in trace:
        lines.append(
            f"| {r['steps'][0]}-{r['steps'][1]} | {r['q_mean']:.2f} | "
            f"{r['critic_loss_median']:.3f} | {r['critic_loss_mean']:.3f} | "
            f"{r['actor_loss_mean']:.2f} | {r['reward_mean']:.3f} | {r['reward_min']:.2f} | "
            f"{r['collapse_penalties']} |"
        )
    return "\n".join(lines) + "\n"


def plot_trace(trace: list[dict], path: str, title: str) -> None:
    plt = report.pyplot()
    x = [np.mean(r["steps"]) for r in trace]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.semilogy(x, [r["critic_loss_median"] for r in trace], label="median")
    a.semilogy(x, [r["critic_loss_mean"] for r in trace], label="mean")
    a.set_title("critic loss", fontsize=9)
    a.legend(fontsize=7)
    b.plot(x, [r["q_mean"] for r in trace], label="mean Q (batches)")
    b.plot(x, [-r["actor_loss_mean"] for r in trace], label="Q1(s, μ(s))")
    b.axhline(0.0, color="black", lw=0.8, ls="--")
    b.set_title("Q (every reward is ≤ 0)", fontsize=9)
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_xlabel("agent step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    report.save_png(fig, path)


def offline(
    buffer: dict, config: td3.TD3Config, updates: int, seed: int = 0, window: int = 1000
) -> dict[str, list[dict]]:
    """Fresh TD3 agents (the search's settings, the same seed) trained for ``updates``
    updates on the transitions of a search's replay buffer, with no new data: with the MSE
    critic loss, with MSE after removing the collapse penalties (rewards below -1), and with
    the Huber loss. Per ``window`` updates: the median critic loss and the mean Q. Every
    reward is ≤ 0, so a Q above 0 is divergence; what differs between the three is only the
    loss and those few transitions."""
    size = int(buffer["size"])
    data = td3.Transition(**{k: jnp.asarray(v[:size]) for k, v in buffer["data"].items()})
    penalty = np.asarray(data.reward) < -1.0
    variants = {
        "mse": (config, np.ones(size, bool)),
        f"mse, {int(penalty.sum())} collapse penalties removed": (config, ~penalty),
        "huber": (config.replace(critic_loss="huber"), np.ones(size, bool)),
    }
    obs_size, action_size = data.obs.shape[-1], data.action.shape[-1]
    runs = {}
    for name, (cfg, keep) in variants.items():
        kept = jax.tree.map(lambda a: a[np.flatnonzero(keep)], data)
        n = int(keep.sum())

        @jax.jit
        def chunk(agent, keys, kept=kept, n=n, cfg=cfg):
            def body(agent, key):
                k_sample, k_update = jax.random.split(key)
                index = jax.random.randint(k_sample, (cfg.batch_size,), 0, n)
                batch = jax.tree.map(lambda a: a[index], kept)
                agent, metrics = td3.update(agent, batch, k_update, cfg)
                return agent, (metrics["critic_loss"], metrics["q"])

            return jax.lax.scan(body, agent, keys)

        key = jax.random.key(seed)
        agent = td3.init_agent(jax.random.fold_in(key, 0), cfg, obs_size, action_size)
        rows = []
        for start in range(0, updates, window):
            keys = jax.random.split(jax.random.fold_in(key, 1 + start), window)
            agent, (loss, q) = chunk(agent, keys)
            rows.append(
                {
                    "updates": start + window,
                    "critic_loss_median": float(np.median(loss)),
                    "q_mean": float(np.mean(q)),
                }
            )
        runs[name] = rows
        print(f"offline {name}: {rows[-1]}", flush=True)
    return runs


def offline_table(runs: dict[str, list[dict]], step: int, updates: int) -> str:
    names = list(runs)
    marks = sorted({len(r) for r in runs.values()})[0]
    picks = sorted({max(0, marks * f // 4 - 1) for f in (1, 2, 3, 4)})
    lines = [
        f"# Fresh TD3 agents on the replay buffer of step {step}, {updates} updates each",
        "",
        "Per 1,000 updates: median critic loss / mean Q of the sampled batches. Every reward "
        "in the buffer is ≤ 0, so a positive Q means the critic diverged. Same seed, same "
        "settings; the rows differ only in the critic loss and in the collapse penalties.",
        "",
        "| variant | "
        + " | ".join(f"after {runs[names[0]][i]['updates']:,}" for i in picks)
        + " |",
        "|---|" + "---|" * len(picks),
    ]
    for name in names:
        cells = [
            f"{runs[name][i]['critic_loss_median']:.3g} / {runs[name][i]['q_mean']:+.2f}"
            for i in picks
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_offline(runs: dict[str, list[dict]], path: str, title: str) -> None:
    plt = report.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in runs.items():
        x = [r["updates"] for r in rows]
        a.semilogy(x, [r["critic_loss_median"] for r in rows], label=name)
        b.plot(x, [r["q_mean"] for r in rows], label=name)
    a.set_title("critic loss (median per 1,000 updates)", fontsize=9)
    b.set_title("mean Q (every reward is ≤ 0)", fontsize=9)
    b.axhline(0.0, color="black", lw=0.8, ls="--")
    for ax in (a, b):
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    report.save_png(fig, path)


def summarise(episodes: list[dict], args, step: int) -> str:
    q = np.concatenate([e["Q"] for e in episodes])
    g = np.concatenate([e["G"] for e in episodes])
    lines = [
        f"# The critic of step {step} against the returns its episodes collect",
        "",
        f"{report.machine_line(report.environment())}; command: `python -m benchmarks.critic_fit "
        f"--checkpoint {args.checkpoint} --policy {args.policy} --targets "
        f"{' '.join(map(str, args.targets))} --seeds {' '.join(map(str, args.seeds))}`",
        "",
        "Q: the twin critic's min(Q1, Q2)(s_t, a_t); G: the discounted return collected from "
        "round t to the episode's end (gamma as in the search).",
        "",
        f"Over all {len(q)} rounds of all controllers: Pearson r(Q, G) = "
        f"{np.corrcoef(q, g)[0, 1]:.3f}, Spearman = {_spearman(q, g):.3f}; mean Q − G = "
        f"{np.mean(q - g):+.3f} (G from {g.min():.2f} to {g.max():.2f}).",
        "",
        "| target | controller | G_0 (true) | Q(s_0, a_0) | rank by G_0 | rank by Q_0 | "
        "r(Q, G) over rounds | collapsed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in args.targets:
        for seed in args.seeds:
            eps = [e for e in episodes if e["target"] == target and e["seed"] == seed]
            by_g = _ranks([e["G"][0] for e in eps])
            by_q = _ranks([e["Q"][0] for e in eps])
            for e, rg, rq in zip(eps, by_g, by_q):
                r = np.corrcoef(e["Q"], e["G"])[0, 1] if np.std(e["Q"]) > 0 else float("nan")
                lines.append(
                    f"| {target} (seed {seed}) | {e['controller']} | {e['G'][0]:.3f} | "
                    f"{e['Q'][0]:.3f} | {rg} | {rq} | {r:.3f} | {e['collapsed']} |"
                )
    lines += ["", "Along the policy's own episodes, the critic's choice in each state:", ""]
    lines += ["| target | rounds | Q(policy's action) > Q(SynFlow alone) | "
              "Q(policy's action) > Q(staircase row) |", "|---|---|---|---|"]  # fmt: skip
    for e in episodes:
        if e["controller"] != "policy":
            continue
        n = len(e["Q"])
        lines.append(
            f"| {e['target']} (seed {e['seed']}) | {n} | "
            f"{np.mean(e['Q'] > e['Q_synflow']):.2f} | {np.mean(e['Q'] > e['Q_staircase']):.2f} |"
        )
    return "\n".join(lines) + "\n"


def _ranks(values: list[float]) -> list[int]:
    order = np.argsort(-np.asarray(values))
    ranks = np.empty(len(values), int)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks.tolist()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def plot(episodes: list[dict], path: str, title: str) -> None:
    """Q (solid) and G (dashed) by round, one panel per target (first seed), per controller."""
    plt = report.pyplot()
    targets = sorted({e["target"] for e in episodes})
    seed = min(e["seed"] for e in episodes)
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, target in zip(axes, targets):
        for i, e in enumerate(x for x in episodes if x["target"] == target and x["seed"] == seed):
            color = f"C{i}"
            ax.plot(e["Q"], color=color, label=f"{e['controller']} Q")
            ax.plot(e["G"], "--", color=color, label=f"{e['controller']} G")
        ax.set_title(f"target {target}, seed {seed}", fontsize=9)
        ax.set_xlabel("round t")
    axes[0].set_ylabel("min(Q1, Q2)(s_t, a_t) (solid), G_t (dashed)")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    report.save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
