"""An RL Panning search on a proxy environment (jpanning.proxy), resumable, one variant.

        python -m benchmarks.proxy_search --out runs/proxy/mse-s0 --seed 0
        python -m benchmarks.proxy_search --out runs/proxy/huber-s0 --seed 0 --critic-loss huber
        python -m benchmarks.proxy_search --out runs/proxy/floor-s0 --target-reward-floor -1

The authors' search (50,000 TD3 agent steps, T = 100, their target distribution and agent
settings) on the proxy of ResNet-20 / Fashion-MNIST that ``--proxy`` names; the network and
its initialization are ``run.py --model resnet20 --seed S``'s. A checkpoint is written every
``--checkpoint-every`` steps in ``OUT/checkpoints``; running the same command again goes on
from the newest one. At the end ``OUT`` holds ``policy.msgpack`` (its meta names the proxy,
so ``benchmarks.policy_eval`` widens the real environment's ranges before judging it),
``metrics.npz`` (every step: obs, action, reward, the reward's terms, the ranges; read by
``benchmarks.search_diagnostics``) and ``search.json`` (settings, seconds, versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np


def flat_metrics(metrics: dict) -> dict:
    """``{name: array}`` with the env's ``info`` entries as ``info/<name>``."""
    out = {k: np.asarray(v) for k, v in metrics.items() if k not in ("info", "selection")}
    out |= {f"info/{k}": np.asarray(v) for k, v in metrics.get("info", {}).items()}
    return out


def main(argv=None) -> int:
    from jpanning import proxy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proxy", default="proxy", choices=sorted(proxy.PROXIES))
    p.add_argument("--agent-steps", type=int, default=50_000)
    p.add_argument("--critic-loss", default="mse", choices=("mse", "huber"))
    p.add_argument(
        "--target-reward-floor",
        type=float,
        default=None,
        help="floor on the reward in the critic's target only (TD3Config.target_reward_floor)",
    )
    p.add_argument(
        "--demo-steps",
        type=int,
        default=0,
        help="warm-up steps acted by the fixed controllers, with noise, in place of uniform "
        "actions (TD3Config.demo_steps; rlpanning.fixed_controllers)",
    )
    p.add_argument(
        "--observe-gap",
        action="store_true",
        help="the observation gains the signed gap alpha (rho_e - rho_t) (EnvParams.observe_gap)",
    )
    p.add_argument(
        "--select-every",
        type=int,
        default=0,
        help="checkpoint selection: judge the actor every N steps on held-apart targets, "
        "keep the best (RLPanningConfig.select_every; 0: the last, the authors')",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="the critic's discount (TD3Config.gamma; default the authors' 0.99); 0: the "
        "critic learns each step's own reward and the actor acts myopically (docs/policy.md: "
        "a myopic controller beats every fixed one on the proxy)",
    )
    p.add_argument("--checkpoint-every", type=int, default=2000)
    p.add_argument("--steps-per-call", type=int, default=1)
    # Speed choices for this process only: the proxy's programs are small, and both library
    # defaults cost time there (agent step 55.1 -> 39.6 ms with both; docs/policy.md, "The
    # search's process settings"; `python -m benchmarks.proxy process` times them).
    p.add_argument(
        "--convolution",
        default="xla",
        choices=("auto", "onednn", "xla"),
        help="CPU convolution library (jpanning.cpu.set_convolution); default xla: on the "
        "proxy's 7x7 batches and one-image SynFlow, oneDNN's per-call overhead dominates",
    )
    p.add_argument(
        "--allocator",
        default="glibc",
        choices=("jpanning", "glibc"),
        help="'jpanning': keep freed memory in the process (jpanning.cpu.configure_allocator); "
        "default glibc: the proxy's small programs run slower with it",
    )
    args = p.parse_args(argv)

    import jax

    from benchmarks import proxy as proxy_bench
    from jpanning import checkpoint as checkpoint_lib
    from jpanning import cpu, data, report, rlpanning

    cpu.configure(allocator=args.allocator == "jpanning", convolution=args.convolution)
    os.makedirs(args.out, exist_ok=True)
    dataset = data.load_dataset("fashion_mnist", seed=0)
    problem = proxy_bench._problem(dataset, args.seed)
    base = rlpanning.RLPanningConfig(
        agent_steps=args.agent_steps,
        scoring="pool",
        steps_per_call=args.steps_per_call,
        observe_gap=args.observe_gap,
        select_every=args.select_every,
    )
    agent_settings = base.td3.replace(
        critic_loss=args.critic_loss,
        target_reward_floor=args.target_reward_floor,
        demo_steps=args.demo_steps,
        **({} if args.gamma is None else {"gamma": args.gamma}),
    )
    config = dataclasses.replace(base, td3=agent_settings)
    setting = proxy.proxy(args.proxy)
    env, env_params = proxy.build_env(
        problem, dataset, config, setting, args.seed, key=jax.random.fold_in(problem.key, 1)
    )
    k_search, _ = jax.random.split(problem.key)
    last = {"t": 0, "time": time.perf_counter()}

    def progress(t, metrics):
        if t // 1000 > last["t"] // 1000:
            now = time.perf_counter()
            rate = (t - last["t"]) / (now - last["time"])
            print(f"step {t}: {rate:.1f} agent steps/s", flush=True)
            last.update(t=t, time=now)

    start = time.perf_counter()
    with checkpoint_lib.opened(
        os.path.join(args.out, "checkpoints"), args.checkpoint_every
    ) as ckpt:
        agent, metrics = rlpanning.search(
            env, env_params, config, k_search, callback=progress, checkpoints=ckpt
        )
    seconds = time.perf_counter() - start
    ranges = rlpanning.final_ranges(metrics)
    meta = {
        "model": "resnet20",
        "dataset": "fashion_mnist",
        "seed": args.seed,
        "agent_steps": args.agent_steps,
        "proxy": args.proxy,
        "critic_loss": args.critic_loss,
        "target_reward_floor": args.target_reward_floor,
        "demo_steps": args.demo_steps,
        "observe_gap": args.observe_gap,
        "select_every": args.select_every,
        "convolution": args.convolution,
        "allocator": args.allocator,
    }
    rlpanning.save_policy(
        os.path.join(args.out, "policy.msgpack"), agent.actor_params, config, meta, ranges
    )
    np.savez_compressed(os.path.join(args.out, "metrics.npz"), **flat_metrics(metrics))
    steps, returns = rlpanning.episode_returns(metrics)
    report.write_json(
        os.path.join(args.out, "search.json"),
        {
            "command": "python -m benchmarks.proxy_search " + " ".join(sys.argv[1:]),
            "meta": meta,
            "proxy": dataclasses.asdict(setting),
            "seconds_this_process": seconds,
            "episodes": len(returns),
            "last_50_returns_mean": float(np.mean(returns[-50:])) if len(returns) else None,
            "selection": metrics.get("selection"),
            "environment": report.environment(),
        },
    )
    print(f"searched {args.agent_steps} steps ({seconds:.0f} s in this process); {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
