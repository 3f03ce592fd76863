"""RL Panning: screening with a policy equals Panning with the policy's weights, the policy
file round-trips, the target distribution switches, and run.py trains, saves and reuses."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import data, env as env_lib, masks as M, panning, pruning, rlpanning
from jpanning.config import RunConfig
from jpanning.agents import td3
from jpanning.errors import JPanningError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = rlpanning.RLPanningConfig(
    agent_steps=24,
    rounds=3,
    pool_size=2,
    scoring="pool",
    td3=td3.TD3Config(hidden_sizes=(16,), warmup_steps=8, batch_size=8),
)


@pytest.fixture(scope="module")
def problem(make_tiny_problem):
    return make_tiny_problem(0.9)


def _constant_actor(action):
    """Actor params whose deterministic action is ``action`` whatever the observation."""
    params = td3.init_agent(jax.random.key(0), CONFIG.td3, 7, 3).actor_params
    params = jax.tree.map(jnp.zeros_like, params)
    bias = jnp.arctanh(jnp.asarray(action, jnp.float32))
    return {
        "params": params["params"]
        | {"out": {"kernel": params["params"]["out"]["kernel"], "bias": bias}}
    }


def test_screening_with_a_constant_policy_is_panning_with_those_weights(problem):
    # a = (0.2, -0.6, 0.4) gives p = (a + 1) / 2 = (0.6, 0.2, 0.7) in every round.
    prob, _ = problem
    pool = tuple(np.asarray(x)[None] for x in prob.batch)  # one batch: every round uses it
    env, env_params = rlpanning.build_env(prob, pool, CONFIG)
    actor = _constant_actor([0.2, -0.6, 0.4])
    masks, trace = rlpanning.screen(env, env_params, actor, CONFIG, 0.9, jax.random.key(2))
    np.testing.assert_allclose(trace["weights"], np.tile([0.6, 0.2, 0.7], (3, 1)), rtol=1e-6)
    expected, hand = panning.panning(
        pruning.train_apply_fn(prob),
        pruning.eval_apply_fn(prob),
        prob.params,
        prob.batch,
        0.9,
        prunable=prob.prunable,
        config=panning.PanningConfig(rounds=3),
        weights_fn=lambda t, s: jnp.asarray([0.6, 0.2, 0.7]),
    )
    np.testing.assert_allclose(trace["sparsity"], np.asarray(hand["sparsity"]), rtol=1e-6)
    np.testing.assert_array_equal(trace["revived"], np.asarray(hand["revived"]))
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept = M.sparsity_report(masks, prob.prunable)
    assert kept["kept"] == int(kept["total"] * (1 - 0.9))  # the authors' floor


def test_the_policy_file_round_trips_and_bad_files_are_refused(tmp_path, problem):
    actor = td3.init_agent(jax.random.key(5), CONFIG.td3, 7, 3).actor_params
    path = str(tmp_path / "policy.msgpack")
    options = dataclasses.replace(CONFIG, fusion="mul", reset_observes_sparsity=True)
    ranges = env_lib.Ranges(jnp.array([2.30, 2.31]), jnp.array([1e-6, 3e-3]))
    rlpanning.save_policy(path, actor, options, meta={"model": "tinycnn"}, ranges=ranges)
    loaded, config, meta = rlpanning.load_policy(path)
    for a, b in zip(jax.tree.leaves(actor), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert config.rounds == 3 and config.td3 == CONFIG.td3 and meta["model"] == "tinycnn"
    assert rlpanning.env_options(config) == rlpanning.env_options(options)
    for a, b in zip(jax.tree.leaves(meta["ranges"]), jax.tree.leaves(ranges)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    obs = jnp.linspace(0, 1, 7)
    np.testing.assert_array_equal(
        td3.policy(actor, obs, CONFIG.td3, 3), td3.policy(loaded, obs, config.td3, 3)
    )
    (tmp_path / "junk").write_bytes(b"\x93not msgpack")
    with pytest.raises(JPanningError, match="is not a jpanning policy file"):
        rlpanning.load_policy(str(tmp_path / "junk"))
    with pytest.raises(JPanningError, match="does not exist"):
        rlpanning.load_policy(str(tmp_path / "missing"))


def test_a_policy_that_observes_the_gap_round_trips_and_its_size_is_checked(tmp_path):
    actor = td3.init_agent(jax.random.key(5), CONFIG.td3, 8, 3).actor_params
    path = str(tmp_path / "gap.msgpack")
    rlpanning.save_policy(path, actor, dataclasses.replace(CONFIG, observe_gap=True))
    _, config, _ = rlpanning.load_policy(path)
    assert config.observe_gap and rlpanning.env_options(config)["observe_gap"]
    # a file whose environment says 7 observations but whose actor was saved for 8
    from flax import serialization

    payload = serialization.msgpack_restore((tmp_path / "gap.msgpack").read_bytes())
    payload["env"]["observe_gap"] = False
    (tmp_path / "bad.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(JPanningError, match="maps 8 observations to 3 actions; .* has 7 and 3"):
        rlpanning.load_policy(str(tmp_path / "bad.msgpack"))
    # a policy written before the option existed (no key) observes the authors' 7
    del payload["env"]["observe_gap"]
    payload["obs_size"] = 7
    (tmp_path / "old.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    assert not rlpanning.load_policy(str(tmp_path / "old.msgpack"))[1].observe_gap


@pytest.fixture(scope="module")
def pool_env(problem):
    """``(pool, env, env_params)``: two scoring batches of the tiny problem's data."""
    prob, dataset = problem
    pool = rlpanning.score_pool(dataset, 2, 2, seed=0)
    return (pool, *rlpanning.build_env(prob, pool, CONFIG))


def test_search_switches_to_the_late_targets_and_screens(problem, pool_env):
    _, dataset = problem
    pool, env, env_params = pool_env
    assert pool[0].shape == (2, 20, *dataset.input_shape)
    np.testing.assert_array_equal(pool[0][0], data.scoring_batch(dataset, 2, seed=0)[0])
    seen = []
    agent, metrics = rlpanning.search(
        env, env_params, CONFIG, jax.random.key(0), callback=lambda t, m: seen.append(t)
    )
    assert seen == list(range(1, 25))
    # Each episode's target from its first round: ρ_0 = 1 − (1 − s) ** (1 / T), T = 3.
    starts = np.flatnonzero(np.concatenate([[True], metrics["done"][:-1]]))
    targets = 1 - (1 - metrics["info"]["sparsity"][starts].astype(np.float64)) ** 3
    switch = CONFIG.switch_step()  # 24 // 5 = 4
    assert switch == 4
    assert np.all((targets >= 0.8 - 1e-4) & (targets < 1.0))
    # An episode starting at step k was reset in step k − 1; from step 4 on, resets draw
    # from U(0.9, 1) or U(0.98, 1).
    assert np.all(targets[starts >= 5] >= 0.9 - 1e-4) and np.sum(starts >= 5) >= 4
    # The ranges only widen, across episodes too.
    ranges = metrics["info"]["ranges"]
    assert np.all(np.diff(ranges[:, :, 0], axis=0) <= 0) and np.all(
        np.diff(ranges[:, :, 1], axis=0) >= 0
    )
    # Episodes end at round T = 3, or earlier when no weight is left alive.
    steps, returns = rlpanning.episode_returns(metrics)
    lengths = np.diff(steps, prepend=0)
    assert np.all((lengths >= 1) & (lengths <= 3))
    collapsed = metrics["info"]["collapsed"][steps - 1]
    assert np.all(collapsed[lengths < 3])
    assert np.all(returns < 0)
    assert int(agent.step) == 24 - 8


def test_unknown_preset_and_bad_budget_are_refused():
    with pytest.raises(JPanningError, match="unknown rlpanning preset 'huge'"):
        rlpanning.config_from_options({"preset": "huge"})
    with pytest.raises(JPanningError, match="agent_steps must be >= 1"):
        dataclasses.replace(CONFIG, agent_steps=0).validate()
    quick = rlpanning.config_from_options({"preset": "quick", "agent_steps": 50, "rounds": 7})
    assert (quick.agent_steps, quick.rounds, quick.switch_step()) == (50, 7, 10)


def _run(*args):
    env = dict(os.environ, JPANNING_DATA_DIR="/nonexistent")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.slow  # ~100 s: two run.py processes (search + training, then screening only)
def test_run_py_trains_a_policy_and_reuses_it_at_another_ratio(tmp_path):
    common = (
        *("--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "50"),
        *("--train-limit", "300", "--test-limit", "100", "--no-progress"),
    )
    first = tmp_path / "search"
    proc = _run(*common, "--preset", "quick", "--agent-steps", "40", "--rounds", "4",
                "--ratio", "0.8", "--out", str(first))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads((first / "results.json").read_text())
    assert r["config"]["method"] == "rlpanning"  # the default method
    assert r["rl"]["agent_steps"] == 40 and r["rl"]["rounds"] == 4
    # Episodes end at round T = 4, or earlier where a target near 1 disconnects the network.
    ends = np.asarray(r["rl"]["episode_end_steps"])
    assert len(r["rl"]["episode_returns"]) == len(ends) >= 10
    assert np.all((np.diff(ends, prepend=0) >= 1) & (np.diff(ends, prepend=0) <= 4))
    assert r["sparsity"]["kept"] == int(r["sparsity"]["total"] * (1 - 0.8))
    # Every environment option is recorded (the authors' defaults: fresh batches every step).
    assert r["rl"]["env"] == {
        "rounds": 4, "scoring": "fresh", "pool_size": None, "samples_per_class": 10,
        "effective": "authors", "fusion": "add", "reset_observes_sparsity": False,
        "observe_gap": False, "collapse_shield": False, "alpha": 100.0, "gtg_scale": 5.0,
    }  # fmt: skip
    # the search's environment has no shield (the authors'); screening with the policy has it
    assert r["rl"]["shield"]["collapse_shield"] == "synflow"
    assert r["rl"]["shield"]["rounds"] == 4 and len(r["rl"]["screen"]["shielded"]) == 4
    assert r["rl"]["ranges"]["loss"][0] < r["rl"]["ranges"]["loss"][1]
    assert (first / "rl_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert r["files"]["policy"] == "policy.msgpack"

    second = tmp_path / "reuse"
    proc = _run(*common, "--policy", str(first / "policy.msgpack"), "--ratio", "0.9",
                "--out", str(second))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no search" in proc.stdout
    r2 = json.loads((second / "results.json").read_text())
    assert r2["rl"]["agent_steps"] == 0 and r2["rl"]["search_seconds"] == 0.0
    assert r2["rl"]["policy_loaded_from"] == str(first / "policy.msgpack")
    assert len(r2["rl"]["screen"]["sparsity"]) == 4  # the policy's T, not a default
    assert r2["sparsity"]["kept"] == int(r2["sparsity"]["total"] * (1 - 0.9))
    assert r2["rl"]["ranges"] == r["rl"]["ranges"]  # screens through the policy's ranges
    assert not (second / "policy.msgpack").exists()

    # The finished search exported with its card and learning curve.
    log = tmp_path / "search.log"
    log.write_text("RL search:  50%|#    | 20/40 [01:05<01:05, 0.3step/s]\rRL search:  100%|"
                   "#    | 40/40 [02:10<00:00, 0.3step/s]\n")  # fmt: skip
    exported = tmp_path / "shipped" / "p.msgpack"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "export_policy.py"), str(first),
         str(exported), "--log", str(log)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    actor, config, meta = rlpanning.load_policy(str(exported))
    assert (meta["agent_steps"], meta["search_steps"], config.rounds) == (40, 40, 4)
    assert config.td3.hidden_sizes == (64, 64)  # the quick preset's
    text = (tmp_path / "shipped" / "p.md").read_text()
    assert "agent steps: 40 of 40\n" in text and "search wall time: 0.04 h over 1 process" in text
    assert (tmp_path / "shipped" / "p.png").read_bytes()[:4] == b"\x89PNG"


BASE = ["--dataset", "synthetic", "--model", "tinycnn", "--epochs", "1"]
BAD_INPUTS = [
    (["--method", "snip", "--policy", "p.msgpack"], "--policy is for --method rlpanning"),
    (["--policy", "/no/such/policy"], "--policy '/no/such/policy' does not exist"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--agent-steps", "0"], "0 must be positive"),
]


@pytest.fixture(scope="module")
def bad_input_runs(run_cli_many):
    """Every case of :data:`BAD_INPUTS` through run.py's main, in one process."""
    return run_cli_many([BASE + args for args, _ in BAD_INPUTS])


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_rlpanning_input_is_one_line(args, message, bad_input_runs):
    code, stderr = bad_input_runs[tuple(BASE + args)]
    assert code not in (0, None)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr


def _config(*argv):
    from jpanning import cli

    return cli.config_of(cli.build_parser().parse_args(["--dataset", "synthetic", *argv]))


def test_rlpanning_screens_with_the_shipped_policy_unless_a_search_is_asked(
    tmp_path, monkeypatch, capsys
):
    actor = td3.init_agent(jax.random.key(5), CONFIG.td3, 7, 3).actor_params
    path = tmp_path / "resnet20-fashion_mnist.msgpack"
    meta = {"model": "resnet20", "dataset": "fashion_mnist", "agent_steps": 123}
    meta["search_steps"] = 456  # exported from a search that had not finished
    rlpanning.save_policy(str(path), actor, CONFIG, meta=meta)
    monkeypatch.setattr(rlpanning, "POLICY_DIR", str(tmp_path))
    trained = "trained on resnet20 / fashion_mnist, 123 of 456 agent steps: an interim policy"

    config = rlpanning.choose_policy(_config("--model", "resnet20"))
    assert config.pruning.options.policy == str(path) and not config.pruning.options.search
    assert config.pruning.options.scoring == CONFIG.scoring  # screening with a policy: its own
    assert f"the policy shipped for resnet20 ({trained}" in capsys.readouterr().out
    # no policy of its own: ResNet-20's, and it says so
    config = rlpanning.choose_policy(_config("--model", "tinycnn"))
    assert config.pruning.options.policy == str(path) and not config.pruning.options.search
    out = capsys.readouterr().out
    assert f"no policy ships for tinycnn; the resnet20 policy, unchanged ({trained}" in out
    # a search budget (or --search) searches; a saved policy screens without one
    for argv in (["--search"], ["--preset", "quick"], ["--agent-steps", "40"]):
        config = rlpanning.choose_policy(_config("--model", "tinycnn", *argv))
        assert config.pruning.options.search and config.pruning.options.policy is None, argv
    given = _config("--model", "tinycnn", "--preset", "quick", "--policy", str(path))
    config = rlpanning.choose_policy(given)
    assert not config.pruning.options.search and config.pruning.options.policy == str(path)
    # a resumed run keeps its recorded choice
    resumed = rlpanning.choose_policy(_config("--model", "tinycnn"), resumed=True)
    assert resumed.pruning.option("policy") is None
    with pytest.raises(JPanningError, match="--search trains a new policy and --policy"):
        rlpanning.choose_policy(_config("--search", "--policy", str(path)))
    # a damaged shipped file and a missing one are one clear error, never a silent search
    path.write_bytes(b"\x93not msgpack")
    with pytest.raises(JPanningError, match="is not a jpanning policy file"):
        rlpanning.choose_policy(_config("--model", "resnet20"))
    path.unlink()
    with pytest.raises(JPanningError, match="no RL Panning policy ships for 'tinycnn'.*--search"):
        rlpanning.choose_policy(_config("--model", "tinycnn"))


def test_the_shipped_policy_screens_a_tiny_model_deterministically_at_the_exact_ratio(problem):
    path, _ = rlpanning.shipped_policy("tinycnn")  # ResNet-20's, transferred
    actor, config, meta = rlpanning.load_policy(path)
    assert meta["model"] == "resnet20" and config.rounds == 100
    prob, dataset = problem
    pool = rlpanning.score_pool(dataset, 2, config.pool_size, seed=0)
    config = dataclasses.replace(config, scoring="pool")
    env, env_params = rlpanning.build_env(prob, pool, config)
    runs = [
        rlpanning.screen(
            env, env_params, actor, config, 0.95, jax.random.key(3), ranges=meta["ranges"]
        )
        for _ in range(2)
    ]
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept = M.sparsity_report(runs[0][0], prob.prunable)
    assert kept["kept"] == int(kept["total"] * (1 - 0.95))
    assert runs[0][1]["weights"].shape == (100, 3)


def test_the_policy_of_a_stopped_search_is_read_from_its_checkpoint(tmp_path, pool_env):
    from jpanning import checkpoint

    _, env, env_params = pool_env
    directory = str(tmp_path / "search")
    stop = lambda: "SIGTERM" if len(seen) >= 12 else None
    seen = []
    with checkpoint.opened(directory, every=0) as ckpt:
        with pytest.raises(checkpoint.Interrupted, match="at agent step 12"):
            rlpanning.search(
                env, env_params, CONFIG, jax.random.key(0), checkpoints=ckpt, stop=stop,
                callback=lambda t, m: seen.append(t),
            )  # fmt: skip
    actor, ranges, step, metrics = rlpanning.policy_from_checkpoint(directory)
    assert step == 12 and len(metrics["reward"]) == 12
    # the same actor as the structured restore a resumed search starts from
    init, _ = td3.make_step(env, CONFIG.agent_config(), action_size=3, obs_size=7)
    like = jax.jit(init)(jax.random.key(0), env_params)
    with checkpoint.opened(directory) as ckpt:
        _, carry, _, done = ckpt.restore(like, extra=True)
    for a, b in zip(jax.tree.leaves(carry.agent.actor_params), jax.tree.leaves(actor)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(ranges.loss, done["info"]["ranges"][-1, 0])
    np.testing.assert_array_equal(ranges.grad_norm, done["info"]["ranges"][-1, 1])
    assert int(carry.agent.step) == 12 - 8  # trained past the warm-up: not the initial actor
    with pytest.raises(JPanningError, match="is not a directory"):
        rlpanning.policy_from_checkpoint(str(tmp_path / "missing"))


def test_the_critic_loss_option_is_a_search_setting():
    """--critic-loss: the authors' MSE by default, Huber when asked; the run hands it from
    run.py to the method (its RLPanningOptions); without a search it is refused."""
    screening = RunConfig.from_flat({"model": "lenet5", "method": "rlpanning",
                                     "critic_loss": "huber"})  # fmt: skip
    with pytest.raises(JPanningError, match="--critic-loss huber sets how a search trains"):
        rlpanning.choose_policy(screening)
    searching = rlpanning.choose_policy(screening.replace(agent_steps=50))
    assert searching.pruning.options.search and searching.pruning.options.critic_loss == "huber"
    handed = rlpanning.config_from_options(searching.pruning.options)  # what the method reads
    assert handed.agent_config().critic_loss == "huber"
    assert rlpanning.config_from_options({"preset": "quick"}).td3.critic_loss == "mse"
    huber = rlpanning.config_from_options({"preset": "quick", "critic_loss": "huber"})
    assert huber.agent_config().critic_loss == "huber"


@pytest.mark.slow  # two searches: half a minute on 2 cores
def test_the_two_critic_losses_differ_only_once_the_updates_begin(pool_env):
    # Same seed, same environment: the two losses give the same first transitions (the
    # warm-up acts at random) and different critics once the updates begin.
    _, env, env_params = pool_env
    runs = [
        rlpanning.search(
            env,
            env_params,
            dataclasses.replace(CONFIG, td3=CONFIG.td3.replace(critic_loss=k)),
            jax.random.key(0),
        )
        for k in ("mse", "huber")
    ]
    (_, m_mse), (_, m_huber) = runs
    warm = CONFIG.td3.warmup_steps
    np.testing.assert_array_equal(m_mse["action"][:warm], m_huber["action"][:warm])
    assert not np.allclose(m_mse["critic_loss"][warm:], m_huber["critic_loss"][warm:])


def _state(round_index, target):
    """The two fields of an environment state the demonstrator reads."""
    return env_lib.EnvState(
        masks=None, round=jnp.int32(round_index), target=jnp.float32(target), synflow=None,
        snip=None, grasp=None, loss=None, sparse_loss=None, grad_norm=None,
        sparse_grad_norm=None, ranges=None, effective=None,
    )  # fmt: skip


def test_the_demonstrator_follows_one_fixed_controller_per_episode():
    rounds, target = 100, 0.99
    demo = jax.jit(rlpanning.fixed_controllers(rounds, "add"))
    key = jax.random.key(5)
    # the authors' 'add' staircase and bounds, and the exponential schedule, by hand
    rows = np.array([[0.2, 0.5, 0.3], [0.2, 0.4, 0.4], [0.2, 0.3, 0.5], [0.4, 0.2, 0.4],
                     [0.5, 0.0, 0.5]])  # fmt: skip
    bounds = [0.8, 0.9, 0.98, 0.99]
    corners = {(1.0, -1.0, -1.0): "synflow", (-1.0, 1.0, -1.0): "snip", (-1.0, -1.0, 1.0): "grasp"}
    seen = set()
    for start in range(0, 40 * rounds, rounds):  # 40 episodes, each begun at step `start`
        acts = [np.asarray(demo(key, start + r, None, _state(r, target))) for r in (0, 37, 62, 99)]
        first = tuple(float(x) for x in acts[0])
        if first in corners:  # a corner: the same action every round of the episode
            seen.add(corners[first])
            for a in acts:
                np.testing.assert_array_equal(a, acts[0])
        else:
            seen.add("staircase")
            for a, r in zip(acts, (0, 37, 62, 99)):
                sparsity = 1.0 - (1.0 - target) ** ((r + 1) / rounds)
                band = sum(sparsity > b for b in bounds)
                np.testing.assert_allclose(a, 2.0 * rows[band] - 1.0, atol=1e-6)
    assert seen == set(rlpanning.DEMONSTRATED)  # all four in 40 episodes


@pytest.mark.slow  # a search on the tiny network: half a minute on 2 cores
def test_a_search_with_demonstrations_starts_at_the_fixed_controllers(pool_env):
    _, env, env_params = pool_env
    config = dataclasses.replace(
        CONFIG, td3=CONFIG.td3.replace(demo_steps=6, exploration_noise=0.0)
    )
    _, metrics = rlpanning.search(env, env_params, config, jax.random.key(2))
    actions = np.asarray(metrics["action"])[:6]
    stairs = {tuple(2.0 * np.asarray(r) - 1.0) for r in panning.ADD_WEIGHTS}
    corners = {tuple(2.0 * np.eye(3)[i] - 1.0) for i in range(3)}
    for a in actions:
        # (a uniform action lands on one of these with probability 0)
        assert tuple(np.round(a, 6)) in corners | {tuple(np.round(s, 6)) for s in stairs}
    assert not np.any(np.isin(np.round(np.asarray(metrics["action"])[6:8], 6), [-1.0, 1.0]))


def test_checkpoint_selection_keeps_the_actor_with_the_best_mean_return(pool_env):
    import collections

    _, env, env_params = pool_env
    config = dataclasses.replace(CONFIG, select_every=8, select_targets=(0.5, 0.8))
    selection = rlpanning.Selection(env, env_params, config)
    _, state = env.reset(jax.random.key(0), env_params)
    Carry = collections.namedtuple("Carry", "agent env_state")
    actors = [td3.init_agent(jax.random.key(i), CONFIG.td3, 7, 3) for i in range(4)]
    for t, agent in zip((3, 8, 16, 24), actors):
        selection.watch(t, Carry(agent, state))
    assert selection.steps == [8, 16, 24]  # 3 is not due; the last step always is

    reset, step = jax.jit(env.reset), jax.jit(env.step)  # as compiled as the search's

    def by_hand(actor_params):  # each target's deterministic episode, summed and averaged
        totals = []
        for i, target in enumerate((0.5, 0.8)):
            k_reset, k_steps = jax.random.split(jax.random.fold_in(jax.random.key(1000), i))
            obs, s = reset(k_reset, env_params, target, state.ranges)
            total = 0.0
            for t in range(3):
                action = jax.jit(td3.policy, static_argnums=(2, 3))(
                    actor_params, obs, config.agent_config(), 3
                )
                obs, s, r, term, trunc, _ = step(jax.random.fold_in(k_steps, t), s, action,
                                                 env_params)  # fmt: skip
                total += float(r)
                if bool(term | trunc):
                    break
            totals.append(total)
        return float(np.mean(totals))

    want = [by_hand(a.actor_params) for a in actors[1:]]
    np.testing.assert_allclose(selection.returns, want, rtol=1e-5)
    best = int(np.argmax(want))
    record = selection.record()
    assert record["best_step"] == (8, 16, 24)[best] and record["steps"] == [8, 16, 24]
    for a, b in zip(jax.tree.leaves(selection.best["params"]),
                    jax.tree.leaves(actors[1 + best].actor_params)):  # fmt: skip
        np.testing.assert_array_equal(a, np.asarray(b))
    ranges = rlpanning.final_ranges({"selection": record})  # what screening observes through
    np.testing.assert_allclose(np.asarray(ranges.loss), np.asarray(state.ranges.loss))


def test_checkpoint_selection_is_validated():
    with pytest.raises(JPanningError, match="select_every must be >= 0"):
        dataclasses.replace(CONFIG, select_every=-1).validate()
    with pytest.raises(JPanningError, match="select_targets must be sparsities in"):
        dataclasses.replace(CONFIG, select_every=2, select_targets=(0.9, 1.0)).validate()


@pytest.mark.slow  # a search on the tiny network: half a minute on 2 cores
def test_a_search_with_checkpoint_selection_returns_the_chosen_actor(pool_env):
    _, env, env_params = pool_env
    config = dataclasses.replace(CONFIG, select_every=8, select_targets=(0.5, 0.8))
    agent, metrics = rlpanning.search(env, env_params, config, jax.random.key(2))
    chosen = metrics["selection"]
    assert chosen["steps"] == [8, 16, 24]
    assert chosen["best_return"] == max(chosen["mean_returns"])
    judge = rlpanning.Selection(env, env_params, config)
    ranges = rlpanning.final_ranges(metrics)
    again = np.mean([judge.episode(agent.actor_params, ranges, x, jax.random.fold_in(judge.key, i))
                     for i, x in enumerate((0.5, 0.8))])  # fmt: skip
    np.testing.assert_allclose(again, chosen["best_return"], rtol=1e-5)
    _, plain = rlpanning.search(env, env_params, CONFIG, jax.random.key(2))
    assert "selection" not in plain  # the authors': the last actor
