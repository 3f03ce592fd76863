"""TD3 speed: agent updates per second against PyTorch, seeds under vmap, the whole search.

        python -m benchmarks.td3                                  # all parts, ResNet-20
        python -m benchmarks.td3 --search-models resnet20 resnet20_panning

One run, medians over ``--repeats``, alternating between variants so machine noise hits them
alike:

* ``updates``: TD3 updates per second at the Panning authors' sizes (observation 7, action 3,
  256-256 MLPs, batch 256, Adam, policy delay 2), sampling from a filled replay buffer
  included: ``jpanning.agents.td3.update`` in one jitted ``lax.scan`` of ``--updates``
  updates, against the same update in PyTorch (``benchmarks/reference/td3_torch.py``,
  ``--threads`` threads).
* ``seeds``: ``jax.vmap`` of that scan over 8 agents against one agent (time ratio), and the
  whole training loop (act, step, store, update) on Pendulum-v1 for 8 seeds against one.
* ``search``: one agent step of RL Panning's search (a Panning environment step on CIFAR
  shapes with a scoring batch of ``--batch-size``, fresh as the authors' or from a pool of
  two, plus one TD3 update), as
  ``jpanning.agents.td3.train_loop`` runs it, and the default search (50,000 steps) it
  implies, against the authors' 84 hours for their ResNet-20 on this kind of CPU (issue 5).

Writes ``benchmarks/results/td3_<device>.{json,md}``; ``--parts`` reruns some parts and keeps
the others from the existing file (each part records its own command, machine and date).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.reference import torch_device
from jpanning import cpu, env as env_lib, masks as masks_lib, models, report
from jpanning.agents import td3
from jpanning.agents.pendulum import Pendulum

RESULTS = os.path.join(os.path.dirname(__file__), "results")
AUTHORS_SEARCH_HOURS = 84.0  # kangxiatao/RLPanning's default search, their ResNet-20 (issue 5)
AUTHORS_UPDATE_MS = 14.0  # their PyTorch TD3 update on this kind of CPU (issue 5)
DEFAULT_STEPS = 50_000
OBS, ACT = env_lib.OBS_SIZE, env_lib.ACTION_SIZE


def _filled_buffer(config: td3.TD3Config, key) -> td3.ReplayBuffer:
    ks = jax.random.split(key, 5)
    n = config.buffer_size
    data = td3.Transition(
        obs=jax.random.normal(ks[0], (n, OBS)),
        action=jax.random.uniform(ks[1], (n, ACT), minval=-1.0, maxval=1.0),
        reward=jax.random.normal(ks[2], (n,)),
        next_obs=jax.random.normal(ks[3], (n, OBS)),
        terminated=(jax.random.uniform(ks[4], (n,)) < 0.01).astype(jnp.float32),
    )
    return td3.ReplayBuffer(data=data, position=jnp.int32(0), size=jnp.int32(n))


def bench_updates(args) -> dict:
    import torch

    from benchmarks.reference.td3_torch import TD3

    config = td3.TD3Config()
    buffer = _filled_buffer(config, jax.random.key(0))

    def many(agent, key):
        def body(agent, k):
            k_sample, k_update = jax.random.split(k)
            batch = td3.buffer_sample(k_sample, buffer, config.batch_size)
            return td3.update(agent, batch, k_update, config)[0], None

        return jax.lax.scan(body, agent, jax.random.split(key, args.updates))[0]

    one = jax.jit(many)
    eight = jax.jit(jax.vmap(many))
    agent = td3.init_agent(jax.random.key(1), config, OBS, ACT)
    agents = jax.vmap(lambda k: td3.init_agent(k, config, OBS, ACT))(
        jax.random.split(jax.random.key(2), 8)
    )
    keys = jax.random.split(jax.random.key(3), 8)
    torch.set_num_threads(args.threads)
    ref = TD3(OBS, ACT, buffer_size=config.buffer_size, device=args.torch_device)

    def updates():
        for _ in range(args.updates):
            ref.update()

    torch_run = torch_device.synchronized(updates, args.torch_device)

    med = timing.median_seconds(
        {
            "jax": timing.blocking(lambda: one(agent, keys[0])),
            "jax vmap x8": timing.blocking(lambda: eight(agents, keys)),
            "torch": torch_run,
        },
        args.repeats,
    )
    per = {k: v / args.updates for k, v in med.items()}
    # The floor: the update's FLOPs (XLA's count) at the machine's f32 matmul rate.
    batch = td3.buffer_sample(jax.random.key(4), buffer, config.batch_size)
    compiled = jax.jit(lambda a, k: td3.update(a, batch, k, config)).lower(agent, keys[0])
    flops = float(compiled.compile().cost_analysis()["flops"])
    x = jax.random.normal(jax.random.key(5), (2048, 2048))
    matmul = jax.jit(lambda a: a @ a)
    seconds = timing.median_seconds({"matmul": timing.blocking(lambda: matmul(x))}, 5)["matmul"]
    rate = 2 * 2048**3 / seconds
    return {
        "update_flops": flops,
        "matmul_flops_per_second": rate,
        "floor_seconds_per_update": flops / rate,
        "updates_per_call": args.updates,
        "median_seconds_per_update": per,
        "updates_per_second": {k: 1.0 / v for k, v in per.items()},
        "jax/torch rate": per["torch"] / per["jax"],
        "authors_update_ms": AUTHORS_UPDATE_MS,
        "vmap x8 / one (time)": per["jax vmap x8"] / per["jax"],
        "torch": torch_device.describe(args.torch_device),
    }


def bench_pendulum_seeds(args) -> dict:
    env = Pendulum()
    params = env.default_params()
    config = td3.TD3Config(warmup_steps=200, batch_size=256, total_steps=args.pendulum_steps)
    train = td3.make_train(env, params, config, action_size=1)
    one = jax.jit(train)
    eight = jax.jit(jax.vmap(train))
    keys = jax.random.split(jax.random.key(0), 8)
    med = timing.median_seconds(
        {
            "one seed": timing.blocking(lambda: one(keys[0])),
            "8 seeds (vmap)": timing.blocking(lambda: eight(keys)),
        },
        min(args.repeats, 3),
    )
    return {
        "steps": args.pendulum_steps,
        "median_seconds": med,
        "8 seeds / one (time)": med["8 seeds (vmap)"] / med["one seed"],
    }


def bench_search(name: str, args, scoring: str = "fresh") -> dict:
    model = models.create_model(name, 10)
    shape = (32, 32, 3)
    variables = models.init_variables(model, jax.random.key(0), shape)
    params, stats = variables["params"], variables["batch_stats"]
    env = env_lib.PanningEnv(
        models.make_apply_fn(model, stats, train=True),
        models.make_apply_fn(model, stats, train=False),
        masks_lib.prunable_tree(params),
        shape,
    )
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(2, args.batch_size, *shape)).astype(np.float32)
    ys = np.tile(np.arange(args.batch_size) % 10, (2, 1)).astype(np.int32)
    if scoring == "pool":
        env_params = env.make_params(params, xs, ys)
    else:  # the authors': a new batch from the examples every step
        env_params = env.make_params(
            params,
            xs.reshape(-1, *shape),
            ys.reshape(-1),
            scoring="fresh",
            samples_per_class=args.batch_size // 10,
        )
    # The step train_loop runs, with the warm-up over and a filled buffer, so every timed
    # step acts, steps the environment, stores and updates.
    config = td3.TD3Config(warmup_steps=0)
    init, step = td3.make_step(env, config, action_size=ACT, obs_size=OBS)
    key = jax.random.key(0)
    carry = jax.jit(init)(key, env_params)
    carry = carry.replace(buffer=_filled_buffer(config, key))
    step = jax.jit(step, donate_argnums=0)  # as rlpanning.search compiles it
    loop = {"carry": carry, "t": 0}

    def agent_step():  # the next step from the last one's carry
        loop["carry"], metrics = step(loop["carry"], jnp.int32(loop["t"]), key, env_params)
        loop["t"] += 1
        jax.block_until_ready(metrics)
        assert bool(metrics["updated"])

    per_step = statistics.median(timing.time_calls(agent_step, args.search_steps))
    return {
        "model": name,
        "scoring": scoring,
        "batch_size": args.batch_size,
        "timed_steps": args.search_steps,
        "median_seconds_per_agent_step": per_step,
        "default_search_hours": per_step * DEFAULT_STEPS / 3600,
        "authors_hours": AUTHORS_SEARCH_HOURS if name == "resnet20_panning" else None,
    }


def render(result: dict) -> list[str]:
    """The markdown report of whichever parts ``result`` holds."""
    md = [
        "# TD3: updates against PyTorch, seeds under vmap, the RL Panning search",
        "",
        "Commands and machines per part; medians over repeats, variants alternated.",
    ]
    for part in ("updates", "pendulum_seeds", "search"):
        if part not in result:
            continue
        r = result[part]
        env = r["environment"]
        md += [
            "",
            *timing.header(r["command"], env),
        ]
        if part == "updates":
            ups = r["updates_per_second"]
            md += [
                "",
                f"## Updates (obs {OBS}, action {ACT}, 256-256, batch 256; medians of "
                f"{r['repeats']} x {r['updates_per_call']} updates; "
                + torch_device.label(r.get("torch", r.get("torch_version")), r.get("torch_threads"))
                + ")",
                "",
                "| variant | updates/s | ms/update |",
                "|---|---|---|",
                *(
                    f"| {k} | {v:,.0f} | {1000 / v:.3f} |"
                    for k, v in ups.items()
                    if k != "jax vmap x8"
                ),
                f"| jax vmap x8 (per agent) | {8 * ups['jax vmap x8']:,.0f} | "
                f"{1000 / (8 * ups['jax vmap x8']):.3f} |",
                f"| floor: {r['update_flops'] / 1e6:.0f} MFLOP at the f32 matmul rate "
                f"({r['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s) | "
                f"{1 / r['floor_seconds_per_update']:,.0f} | "
                f"{1000 * r['floor_seconds_per_update']:.3f} |",
                "",
                f"JAX / PyTorch update rate: **{r['jax/torch rate']:.2f}x** (goal: 10x; the "
                f"floor allows {r['median_seconds_per_update']['torch'] / r['floor_seconds_per_update']:.2f}x "
                f"here). 8 vmapped agents take {r['vmap x8 / one (time)']:.2f}x the time of one "
                "(goal: at most 3x).",
            ]
        elif part == "pendulum_seeds":
            md += [
                "",
                f"## Whole training loop, Pendulum-v1, {r['steps']} steps "
                "(act, step, store, update)",
                "",
                "| variant | median s |",
                "|---|---|",
                *(f"| {k} | {v:.2f} |" for k, v in r["median_seconds"].items()),
                "",
                f"8 seeds under vmap / one seed: **{r['8 seeds / one (time)']:.2f}x** the time.",
            ]
        else:
            rows = r["rows"]
            md += [
                "",
                "## RL Panning search: one agent step (act, Panning environment step, store, "
                f"one update), scoring batch {rows[0]['batch_size']}, CIFAR shapes; median of "
                f"{rows[0]['timed_steps']} steps",
                "",
                "| model | scoring | s / agent step | default search (50k steps) | authors |",
                "|---|---|---|---|---|",
                *(
                    f"| {row['model']} | {row.get('scoring', 'pool')} | "
                    f"{row['median_seconds_per_agent_step']:.3f} | "
                    f"{row['default_search_hours']:.1f} h | "
                    + (f"{row['authors_hours']:.0f} h |" if row["authors_hours"] else "— |")
                    for row in rows
                ),
            ]
    return md


def main(argv=None):
    cpu.configure()  # the CPU tuning run.py has, before JAX starts (jpanning.cpu)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--parts",
        nargs="+",
        default=["updates", "seeds", "search"],
        choices=["updates", "seeds", "search"],
        help="parts to run; the others are kept from the existing results file",
    )
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    torch_device.add_argument(p)
    p.add_argument("--pendulum-steps", type=int, default=2000)
    p.add_argument("--search-models", nargs="+", default=["resnet20", "resnet20_panning"])
    p.add_argument("--search-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if "updates" in args.parts:
        args.torch_device = torch_device.resolve_or_exit(p, args.torch_device)
    argv = list(argv if argv is not None else sys.argv[1:])
    env = report.environment()
    tag = env["device"]["platform"]
    path = os.path.join(args.out, f"td3_{tag}.json")
    result = {"benchmark": "td3"}
    if os.path.isfile(path):  # keep the parts this run does not redo
        with open(path) as f:
            result = json.load(f)
    command = timing.command("td3", argv)
    environment = {k: env[k] for k in ("machine", "device", "versions", "date")}
    runs = {
        "updates": lambda: bench_updates(args),
        "pendulum_seeds": lambda: bench_pendulum_seeds(args),
        "search": lambda: {
            "rows": [
                bench_search(name, args, scoring)
                for name in args.search_models
                for scoring in ("fresh", "pool")
            ]
        },
    }
    for part in args.parts:
        key = "pendulum_seeds" if part == "seeds" else part
        result[key] = runs[key]() | {
            "command": command,
            "settings": vars(args) | {"out": None},
            "repeats": min(args.repeats, 3) if key == "pendulum_seeds" else args.repeats,
            "environment": environment,
        }
        # After every part: nothing measured is lost.
        report.write_result(args.out, f"td3_{tag}", result, render(result), echo=False)
    print("\n".join(render(result)))


if __name__ == "__main__":
    main()
