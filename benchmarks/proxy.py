"""The proxy search (jpanning.proxy): its step time beside the real environment's, searches
side by side, and whether it ranks the fixed controllers as the real environment does.

        python -m benchmarks.proxy steps                  # env and agent step, real vs proxies
        python -m benchmarks.proxy parallel --steps 600   # 1 process x 2 threads vs 2 x 1
        python -m benchmarks.proxy process                # the search's process settings
        python -m benchmarks.proxy faithful --real fixed-real --proxy fixed-proxy

``steps`` times, in one process and alternating between the settings (medians over
``--repeats``), for ResNet-20 / Fashion-MNIST at seed 0: the environment's step at round 50 of
100 (target 0.95, as ``benchmarks.env_step``) and one whole agent step of the search (act,
step, store, one TD3 update on a full buffer: what a search repeats 50,000 times), for the
real environment (``real``: the shipped policy's search, a pool of 10 batches of 10 images per
class at 28x28) and each proxy of :data:`jpanning.proxy.PROXIES`; then the 50,000-step search
time that implies.

``parallel`` runs ``--steps`` agent steps of a proxy search (after compiling) in one process
on both cores, then in ``--processes`` processes side by side, each pinned to one core
(``taskset``) with one thread, and compares the agent steps per second of the machine.

``process`` times the search's agent step (batch 256) in a fresh process per setting of the
convolution library and the allocator (:data:`PROCESSES`): the library's defaults serve big
programs; the proxy's are small (``benchmarks.proxy_search --convolution --allocator``).

``faithful`` reads two ``benchmarks.policy_eval`` result folders (the same fixed controllers,
targets and seeds played on the real environment and on a proxy) and reports the Spearman
rank correlation of their returns: over all (controller, target, seed) episodes, over the
means per (controller, target), and per target across the controllers.

Writes ``benchmarks/results/proxy/`` (``steps_<device>``, ``parallel_<device>``,
``process_<device>``,
``faithful-<proxy>.md/.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "proxy")
POLICY_EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "policy_eval")
SEARCH_STEPS = 50_000
BUDGET_MINUTES = 40.0


def _problem(dataset, seed: int):
    from jpanning import experiment
    from jpanning.config import RunConfig

    run = RunConfig.from_flat({"model": "resnet20", "seed": seed, "ratio": 0.5})
    return experiment.prune_problem(run, experiment.setup(run, dataset))


def agent_step_fn(env, env_params, config):
    """One jitted agent step of the search (:func:`jpanning.agents.td3.make_step`) past the
    warm-up, on a carry whose replay buffer is full, so every call acts, steps the
    environment, stores and updates; as in the search's host loop the carry is donated and
    the next call goes on from the returned one. Returns ``run()``."""
    import jax
    import jax.numpy as jnp

    from jpanning import env as env_lib
    from jpanning.agents import td3

    agent_config = config.agent_config()
    init, step = td3.make_step(
        env, agent_config, action_size=env_lib.ACTION_SIZE, obs_size=env_lib.OBS_SIZE
    )
    carry = jax.jit(init)(jax.random.key(0), env_params)
    buffer = carry.buffer
    held = {
        "carry": carry.replace(buffer=buffer.replace(size=jnp.int32(buffer.capacity))),
        "t": agent_config.warmup_steps + 1,
    }
    jitted = jax.jit(step, donate_argnums=0)
    loop_key = jax.random.key(1)

    def run():
        held["carry"], metrics = jitted(held["carry"], jnp.int32(held["t"]), loop_key, env_params)
        held["t"] += 1
        float(metrics["reward"])  # the host loop reads every step's metrics
        return held["carry"].obs

    return run


def steps(args) -> None:
    import jax

    from benchmarks import env_step, timing
    from jpanning import cpu, data, proxy, report, rlpanning

    cpu.configure()
    dataset = data.load_dataset("fashion_mnist", seed=0)
    problem = _problem(dataset, 0)
    config = rlpanning.RLPanningConfig(scoring="pool")
    run, shapes = {}, {}
    for name in args.settings:
        setting = proxy.proxy(name)
        env, env_params = proxy.build_env(problem, dataset, config, setting, 0)
        (key, state, action), _ = env_step.mid_episode(env, env_params, 1)
        env_fn = jax.jit(env.step)
        run[f"{name}/env step"] = timing.blocking(
            lambda f=env_fn, s=state, p=env_params: f(key, s, action, p)
        )
        run[f"{name}/agent step"] = timing.blocking(agent_step_fn(env, env_params, config))
        shapes[name] = {
            "scoring_inputs": list(env_params.inputs.shape),
            "synflow_input": list(env.input_shape),
            "proxy": dataclasses.asdict(setting),
        }
        print(name, shapes[name], flush=True)
    times = timing.time_all(run, args.repeats)
    med = timing.medians(times)
    env = report.environment()
    prunable = int(
        sum(
            np.size(x)
            for x, f in zip(jax.tree.leaves(problem.params), jax.tree.leaves(problem.prunable))
            if f
        )
    )
    rows = {}
    for name in args.settings:
        agent = med[f"{name}/agent step"]
        rows[name] = {
            "env_step_s": med[f"{name}/env step"],
            "agent_step_s": agent,
            "search_50k_minutes": agent * SEARCH_STEPS / 60,
            **shapes[name],
        }
    result = {
        "benchmark": "proxy.steps",
        "argv": sys.argv[1:],
        **env,
        "prunable": prunable,
        "load_average_after": os.getloadavg(),
        "seconds": times,
        "rows": rows,
    }
    md = [
        "# The proxy search's step time beside the real environment's",
        "",
        *timing.header(timing.command("proxy", sys.argv[1:]), env, ("jax", "flax")),
        "",
        f"ResNet-20 / Fashion-MNIST, seed 0, {prunable:,} prunable weights in every setting. "
        f"Medians of {args.repeats} alternating repeats, seconds. `env step`: one jitted "
        "`PanningEnv.step` at round 50 of 100 (target 0.95); `agent step`: one jitted step "
        "of the search (act, step, store, one TD3 update of batch 256 on a full buffer). "
        f"50k search: agent step x {SEARCH_STEPS:,} (goal for a proxy: <= "
        f"{BUDGET_MINUTES:.0f} min). The machine is shared: load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end of the run.",
        "",
        "| setting | scoring inputs [P, B, H, W, C] | SynFlow input | env step s | agent step s "
        "| 50k search min |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['scoring_inputs']} | {r['synflow_input']} | {r['env_step_s']:.4f} "
            f"| {r['agent_step_s']:.4f} | {r['search_50k_minutes']:.1f} |"
        )
    if "real" in rows:
        md += [""]
        for name, r in rows.items():
            if name != "real":
                md.append(
                    f"- {name}: agent step {rows['real']['agent_step_s'] / r['agent_step_s']:.1f}x "
                    "faster than the real environment's."
                )
    report.write_result(args.out, f"steps_{env['device']['platform']}", result, md)
    print("\n".join(md))


def search_timing(args) -> None:
    """One process: ``--steps`` agent steps of a proxy search after a compiling step;
    prints a JSON line with the steps per second."""
    import jax

    from jpanning import cpu, data, env as env_lib, proxy, rlpanning
    from jpanning.agents import td3

    cpu.configure(allocator=args.allocator == "jpanning", convolution=args.convolution)
    dataset = data.load_dataset("fashion_mnist", seed=0)
    config = rlpanning.RLPanningConfig(scoring="pool", agent_steps=SEARCH_STEPS)
    env, env_params = proxy.build_env(
        _problem(dataset, args.seed), dataset, config, proxy.proxy(args.setting), args.seed
    )
    agent_config = config.agent_config().replace(warmup_steps=0, batch_size=args.batch_size)
    init, step = td3.make_step(
        env, agent_config, action_size=env_lib.ACTION_SIZE, obs_size=env_lib.OBS_SIZE
    )
    run = jax.jit(step, donate_argnums=0)
    carry = jax.jit(init)(jax.random.key(args.seed), env_params)
    loop_key = jax.random.key(1)
    for t in range(100):  # compile, fill the buffer past the batch size
        carry, _ = run(carry, t, loop_key, env_params)
    jax.block_until_ready(carry)
    start = time.perf_counter()
    for t in range(100, 100 + args.steps):
        carry, metrics = run(carry, t, loop_key, env_params)
        float(metrics["reward"])  # the host loop reads every step's metrics
    seconds = time.perf_counter() - start
    print(json.dumps({"steps": args.steps, "seconds": seconds, "seed": args.seed}), flush=True)


# The process settings a search can run under: (name, --convolution, --allocator). The
# library's default (what run.py and cpu.configure() do) first: the baseline of the ratios.
PROCESSES = (
    ("library default (auto, jpanning allocator)", "auto", "jpanning"),
    ("xla convolutions", "xla", "jpanning"),
    ("glibc allocator", "auto", "glibc"),
    ("xla + glibc (proxy_search's default)", "xla", "glibc"),
)


def process(args) -> None:
    """The agent step of a search under each process setting (:data:`PROCESSES`), one process
    at a time on all cores, alternating settings across repeats."""
    from benchmarks import timing
    from jpanning import report

    seconds = {(s, name): [] for s in args.settings for name, _, _ in PROCESSES}
    for _ in range(args.repeats):
        for setting in args.settings:
            for name, conv, alloc in PROCESSES:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.proxy", "search-timing", "--steps",
                     str(args.steps), "--setting", setting, "--batch-size", "256",
                     "--convolution", conv, "--allocator", alloc],
                    check=True, stdout=subprocess.PIPE, text=True,
                ).stdout  # fmt: skip
                r = json.loads(out.strip().splitlines()[-1])
                seconds[(setting, name)].append(r["seconds"] / r["steps"])
                print(setting, name, f"{seconds[(setting, name)][-1] * 1000:.1f} ms", flush=True)
    env = report.environment()
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    md = [
        "# The proxy search's agent step under each process setting",
        "",
        *timing.header(timing.command("proxy", sys.argv[1:]), env, ("jax",)),
        "",
        f"{args.steps} agent steps of a search (act, step the environment, store, one TD3 "
        "update of batch 256) after 100 compiling steps, in a fresh process per setting on "
        f"all cores; medians of {args.repeats} alternating repeats. `convolution`: "
        "jpanning.cpu.set_convolution; `allocator`: jpanning.cpu.configure_allocator "
        "(`jpanning`) or glibc's default. Load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| setting | process | agent step ms | 50k search min | speed vs library default |",
        "|---|---|---|---|---|",
    ]
    for setting in args.settings:
        base = med[(setting, PROCESSES[0][0])]
        for name, _, _ in PROCESSES:
            m = med[(setting, name)]
            md.append(
                f"| {setting} | {name} | {m * 1000:.1f} | {m * SEARCH_STEPS / 60:.1f} "
                f"| {base / m:.2f}x |"
            )
    result = {
        "benchmark": "proxy.process",
        "argv": sys.argv[1:],
        **env,
        "processes": [list(p) for p in PROCESSES],
        "seconds_per_step": {f"{s}/{n}": v for (s, n), v in seconds.items()},
    }
    report.write_result(args.out, f"process_{env['device']['platform']}", result, md)
    print("\n".join(md))


def parallel(args) -> None:
    from benchmarks import timing
    from jpanning import report

    def launch(cores, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if threads == 1:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "")
                + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            ).strip()
        cmd = [sys.executable, "-m", "benchmarks.proxy", "search-timing", "--steps",
               str(args.steps), "--setting", args.setting]  # fmt: skip
        return [
            subprocess.Popen(
                ["taskset", "-c", core, *cmd, "--seed", str(i)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i, core in enumerate(cores)
        ]

    def collect(procs):
        out = []
        for p in procs:
            stdout, _ = p.communicate()
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    cpus = os.cpu_count() or 1
    runs = {}
    one = collect(launch([f"0-{cpus - 1}"], cpus))
    runs["1 process, all cores"] = one
    many = collect(launch([str(i % cpus) for i in range(args.processes)], 1))
    runs[f"{args.processes} processes, 1 core and 1 thread each"] = many
    env = report.environment()
    rows = {
        name: {
            "processes": len(r),
            "seconds_each": [x["seconds"] for x in r],
            "machine_steps_per_s": sum(x["steps"] / x["seconds"] for x in r),
        }
        for name, r in runs.items()
    }
    md = [
        "# Proxy searches side by side",
        "",
        *timing.header(timing.command("proxy", sys.argv[1:]), env, ("jax",)),
        "",
        f"{args.steps} agent steps of a `{args.setting}` search (TD3 update every step, batch "
        "64, after 100 compiling steps) per process; the machine's agent steps per second "
        "(summed over processes; the processes run at the same time).",
        "",
        "| run | processes | seconds each | machine agent steps/s | 50k steps take, min |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['processes']} | "
            + ", ".join(f"{s:.1f}" for s in r["seconds_each"])
            + f" | {r['machine_steps_per_s']:.1f} | "
            f"{SEARCH_STEPS / r['machine_steps_per_s'] / 60:.1f} |"
        )
    names = list(rows)
    md += [
        "",
        f"Side by side / one process: "
        f"{rows[names[1]]['machine_steps_per_s'] / rows[names[0]]['machine_steps_per_s']:.2f}x "
        "the machine's throughput.",
    ]
    result = {"benchmark": "proxy.parallel", "argv": sys.argv[1:], **env, "rows": rows}
    report.write_result(args.out, f"parallel_{env['device']['platform']}", result, md)
    print("\n".join(md))


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy import stats

    return float(stats.spearmanr(np.asarray(x), np.asarray(y)).statistic)


def paired_returns(real: list[dict], proxy: list[dict]) -> list[tuple[tuple, float, float]]:
    """``((controller, target, seed), real return, proxy return)`` of the episodes both hold."""
    index = {(e["controller"], e["target"], e["seed"]): e["return"] for e in proxy}
    return [
        ((e["controller"], e["target"], e["seed"]), e["return"], index[key])
        for e in real
        if (key := (e["controller"], e["target"], e["seed"])) in index
    ]


def faithfulness(pairs) -> dict:
    """Spearman of real and proxy returns: all episodes, means per (controller, target),
    and per target across the controllers (seed means), with each target's best controller
    on both."""
    keys = [k for k, _, _ in pairs]
    real = np.asarray([r for _, r, _ in pairs])
    prox = np.asarray([p for _, _, p in pairs])
    cells = sorted({(c, t) for c, t, _ in keys})

    def mean(values, c, t):
        return float(np.mean([v for (c2, t2, _), v in zip(keys, values) if (c2, t2) == (c, t)]))

    cell_real = np.asarray([mean(real, c, t) for c, t in cells])
    cell_proxy = np.asarray([mean(prox, c, t) for c, t in cells])
    per_target = {}
    for target in sorted({t for _, t in cells}):
        idx = [i for i, (_, t) in enumerate(cells) if t == target]
        names = [cells[i][0] for i in idx]
        per_target[str(target)] = {
            "spearman": spearman(cell_real[idx], cell_proxy[idx]),
            "controllers": names,
            "real": cell_real[idx].tolist(),
            "proxy": cell_proxy[idx].tolist(),
            "best_real": names[int(np.argmax(cell_real[idx]))],
            "best_proxy": names[int(np.argmax(cell_proxy[idx]))],
        }
    return {
        "episodes": len(pairs),
        "spearman_within_target_mean": float(np.mean([r["spearman"] for r in per_target.values()])),
        "spearman_episodes": spearman(real, prox),
        "spearman_cells": spearman(cell_real, cell_proxy),
        "per_target": per_target,
    }


def faithful(args) -> None:
    from jpanning import report

    def load(name):
        with open(os.path.join(POLICY_EVAL, name, "episodes.json")) as f:
            return json.load(f)

    real, prox = load(args.real), load(args.proxy)
    pairs = [p for p in paired_returns(real["episodes"], prox["episodes"]) if p[0][0] != "policy"]
    result = faithfulness(pairs)
    name = prox.get("proxy") or args.proxy
    md = [
        f"# Is the `{name}` proxy faithful? Fixed controllers' returns, real vs proxy",
        "",
        f"Real: `benchmarks/results/policy_eval/{args.real}` (`{real['command']}`); proxy: "
        f"`benchmarks/results/policy_eval/{args.proxy}` (`{prox['command']}`). Same network "
        "initialization, controllers, targets, seeds and episode keys; each environment "
        "observes through the ranges of its own run (its command: a policy's ranges, or the "
        "warm-up ranges without `--policy`).",
        "",
        "Spearman rank correlation of the returns across the controllers, per target, mean "
        f"over targets: **{result['spearman_within_target_mean']:.2f}** (the ranking that "
        "matters: which controller is best at a target). Pooled over targets, where the "
        "target's own effect on the return dominates: "
        f"{result['spearman_episodes']:.3f} over {result['episodes']} episodes, "
        f"{result['spearman_cells']:.3f} over the (controller, target) means. Seeds: "
        f"{sorted({k[2] for k, _, _ in pairs})}.",
        "",
        "| target | Spearman across controllers | best on real | best on proxy | real returns | "
        "proxy returns |",
        "|---|---|---|---|---|---|",
    ]
    for target, r in result["per_target"].items():
        fmt = ", ".join
        md.append(
            f"| {target} | {r['spearman']:.2f} | {r['best_real']} | {r['best_proxy']} | "
            + fmt(f"{c} {v:.2f}" for c, v in zip(r["controllers"], r["real"]))
            + " | "
            + fmt(f"{c} {v:.2f}" for c, v in zip(r["controllers"], r["proxy"]))
            + " |"
        )
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"faithful-{name}")
    report.write_json(stem + ".json", {"argv": sys.argv[1:], **result})
    report.atomic_write_bytes(stem + ".md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


def main(argv=None) -> int:
    from jpanning import proxy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("steps")
    s.add_argument(
        "--settings", nargs="+", default=["real", *[n for n in proxy.PROXIES if n != "real"]]
    )
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--out", default=RESULTS)
    t = sub.add_parser("search-timing")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--setting", default="proxy")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--convolution", default=None, choices=("auto", "onednn", "xla"))
    t.add_argument("--allocator", default="jpanning", choices=("jpanning", "glibc"))
    r = sub.add_parser("process")
    r.add_argument("--settings", nargs="+", default=["proxy", "proxy-lowres-synflow"])
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--out", default=RESULTS)
    q = sub.add_parser("parallel")
    q.add_argument("--steps", type=int, default=600)
    q.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    q.add_argument("--setting", default="proxy")
    q.add_argument("--out", default=RESULTS)
    f = sub.add_parser("faithful")
    f.add_argument("--real", required=True, help="policy_eval results folder (real env)")
    f.add_argument("--proxy", required=True, help="policy_eval results folder (proxy env)")
    f.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    commands = {"steps": steps, "search-timing": search_timing, "parallel": parallel}
    commands |= {"process": process, "faithful": faithful}
    commands[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
