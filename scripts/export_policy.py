"""Write the policy of a run.py search, still running or stopped (its newest checkpoint) or
finished (its policy.msgpack), with its card and learning curve: what jpanning/policies/ ships.

    python scripts/export_policy.py runs/A jpanning/policies/resnet20-fashion_mnist.msgpack \
        [--log runs/A.log] [--note "text for the card"]

Writes OUT (the policy file ``run.py --policy`` takes), OUT without .msgpack plus ``.md``
(the card: the command, the commit, the steps done, the search's wall time summed over the
progress bars in ``--log``, the seed, the machine, the environment's options) and ``.png``
(the learning curve: each episode's return at the agent step it ended). The settings come
from the run's run.json; the actor, the normalisation ranges and the episode returns from
``runs/A/checkpoints/search``, or from a finished run's policy.msgpack and results.json.
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from jpanning import report, rlpanning
from jpanning.errors import JPanningError

# tqdm's "[elapsed<remaining" in a progress bar line, h:mm:ss or mm:ss
ELAPSED = re.compile(r"RL search:\s+\d+%.*?\|\s*(\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<")


def search_seconds(log_text: str) -> tuple[float, int]:
    """The wall time of a search from its progress bars, summed over the bars (each resumed
    run starts a new one at the resumed step), and the number of bars."""
    total, bars, last, prev_step = 0.0, 0, None, None
    for line in log_text.replace("\r", "\n").splitlines():
        m = ELAPSED.search(line)
        if not m:
            continue
        step = int(m.group(1))
        seconds = int(m.group(2) or 0) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
        if last is None or step < prev_step or seconds < last:  # a new bar
            total += last or 0.0
            bars += 1
        last, prev_step = seconds, step
    return total + (last or 0.0), bars


def card(run_dir, out, args, config, step, seconds, bars, returns, note) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    argv = [f"--{k.replace('_', '-')} {v}" for k, v in sorted(args.items())
            if k in ("model", "dataset", "ratio", "seed", "scoring", "pool_size", "preset",
                     "agent_steps", "rounds", "fusion", "effective")
            and v is not None]  # fmt: skip
    env = report.environment()
    # The machine the search ran on: benchmarks/device_search.py records it in the run folder.
    searched = env
    if os.path.isfile(os.path.join(run_dir, "device_run.json")):
        with open(os.path.join(run_dir, "device_run.json")) as f:
            searched = json.load(f)["environment"]
    last = returns[-50:] if len(returns) else []
    lines = [
        f"# RL Panning policy: {args['model']} / {args['dataset']}",
        "",
        f"- file: `{os.path.basename(out)}`, read by `run.py --model {args['model']}` "
        "(and by every model without a policy of its own)",
        f"- search: `python run.py --search {' '.join(argv)}` (the full run.json is "
        f"`{os.path.join(run_dir, 'run.json')}`)",
        f"- agent steps: {step:,} of {config.agent_steps:,}"
        + (" (the search is not finished: this is its newest checkpoint)"
           if step < config.agent_steps else ""),
        f"- T = {config.rounds} rounds; environment: "
        + ", ".join(f"{k} {v}" for k, v in rlpanning.env_options(config).items()),
        f"- TD3: hidden {config.td3.hidden_sizes}, warm-up {config.td3.warmup_steps}, batch "
        f"{config.td3.batch_size}, lr {config.td3.actor_lr}/{config.td3.critic_lr}",
        f"- seed: {args['seed']}",
        f"- search wall time: {seconds / 3600:.2f} h over {bars} process(es), to the log's last "
        "progress line"
        if bars else "- search wall time: not recorded",
        f"- machine: {searched['machine']['cpu']}, {searched['machine']['cores']} cores; "
        f"device {searched['device']['kind']} ({searched['device']['platform']}); "
        f"jax {searched['versions'].get('jax')}",
        f"- exported at commit {commit} on {env['date'][:10]}",
        f"- episodes: {len(returns)}; mean return of the last {len(last)}: "
        + (f"{sum(last) / len(last):.2f}" if len(last) else "-"),
        f"- learning curve: `{os.path.basename(os.path.splitext(out)[0])}.png`",
    ]  # fmt: skip
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("out", help="the policy file to write (.msgpack)")
    p.add_argument("--log", default=None, help="the search's output, for its wall time")
    p.add_argument("--note", default="", help="a paragraph for the card")
    a = p.parse_args(argv)
    try:
        with open(os.path.join(a.run_dir, "run.json")) as f:
            args = json.load(f)
        if args.get("method") != "rlpanning":
            raise JPanningError(f"{a.run_dir!r} is a {args.get('method')!r} run, not rlpanning")
        config = rlpanning.config_from_options(args)
        directory = os.path.abspath(os.path.join(a.run_dir, "checkpoints", "search"))
        finished = os.path.join(a.run_dir, "policy.msgpack")
        if os.path.isdir(directory):  # running or stopped: its newest checkpoint
            actor, ranges, step, metrics = rlpanning.policy_from_checkpoint(directory)
            steps, returns = rlpanning.episode_returns(metrics)
        elif os.path.isfile(finished):  # finished: its policy file and results.json
            actor, _, saved = rlpanning.load_policy(finished)
            ranges, step = saved["ranges"], saved.get("agent_steps", config.agent_steps)
            with open(os.path.join(a.run_dir, "results.json")) as f:
                rl = json.load(f)["rl"]
            steps, returns = rl["episode_end_steps"], rl["episode_returns"]
        else:
            raise JPanningError(f"{a.run_dir!r} holds no search checkpoint and no policy.msgpack")
        log_text = ""
        if a.log:
            with open(a.log) as f:
                log_text = f.read()
    except (OSError, ValueError, KeyError, JPanningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    meta = {k: args[k] for k in ("model", "dataset", "seed")}
    meta |= {"agent_steps": int(step), "search_steps": config.agent_steps}
    rlpanning.save_policy(a.out, actor, config, meta=meta, ranges=ranges)
    stem = os.path.splitext(a.out)[0]
    report.plot_learning_curve(
        steps,
        returns,
        stem + ".png",
        f"RL Panning search: {args['model']} / {args['dataset']}, T={config.rounds}, "
        f"seed {args['seed']}",
        window=25,
    )
    seconds, bars = search_seconds(log_text)
    text = card(a.run_dir, a.out, args, config, step, seconds, bars, list(returns), a.note)
    report.atomic_write_bytes(stem + ".md", text.encode())
    print(f"{a.out}: the actor at agent step {step} of {config.agent_steps}; card {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
