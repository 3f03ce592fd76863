"""PuRL: the α-threshold rule and the reward by hand, the layer environment, the method."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import flops, masks as M, purl
from jpanning.agents import dqn
from jpanning.errors import JPanningError

CONFIG = purl.PuRLConfig(
    state="compact",  # the mechanics below read the 3-value state; per_layer is tested apart
    episodes=2,
    final_episodes=2,
    retrain_images=32,
    retrain_batch=16,
    eval_images=64,
    dqn=dqn.DQNConfig(hidden_sizes=(16,), batch_size=4, learning_starts=4),
)


def test_the_default_state_is_the_papers_final_per_layer_form():
    assert purl.PuRLConfig().state == "per_layer"
    assert all(c.state == "per_layer" for c in purl.PRESETS.values())


def test_threshold_rule_by_hand():
    w1 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    w2 = np.array([0.1, -0.2, 0.3, 4.0], np.float32).reshape(2, 2)
    params = {"a": {"kernel": w1, "bias": np.ones(2, np.float32)}, "b": {"kernel": w2}}
    prunable = M.prunable_tree(params)
    ids = purl.layer_ids(prunable, ["b/kernel", "a/kernel"])
    assert ids == {"a": {"kernel": 1, "bias": -1}, "b": {"kernel": 0}}
    got = purl.threshold_masks(params, ids, jnp.array([0.0, 1.0]))
    # layer a (α = 1): std of [1, -2, 3, 0.5] = sqrt(12.6875 / 4) = 1.7810; keeps -2 and 3
    assert np.std(w1) == pytest.approx(1.7810, abs=1e-4)
    np.testing.assert_array_equal(got["a"]["kernel"], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(got["a"]["bias"], [1, 1])  # never pruned
    np.testing.assert_array_equal(got["b"]["kernel"], np.ones((2, 2)))  # α = 0 keeps all
    half = purl.threshold_masks(params, ids, jnp.array([0.5, 0.0]))
    # layer b (α = 0.5): std sqrt(11.73 / 4) = 1.7125, half 0.8562: only 4.0 stays
    np.testing.assert_array_equal(half["b"]["kernel"], [[0, 0], [0, 1]])


@pytest.mark.parametrize(
    "acc, sparsity, expected",
    [
        (0.45, 0.4, -2.0 * (0.5 + 0.5)),  # half the target accuracy and half the sparsity
        (0.9, 0.8, 0.0),  # both targets met
        (0.95, 0.9, 0.0),  # beyond the targets: no bonus
        (0.72, 0.8, -2.0 * 0.2),
    ],
)
def test_reward_at_hand_built_states(acc, sparsity, expected):
    r = purl.reward_fn(jnp.float32(acc), jnp.float32(sparsity), 0.9, 0.8, 2.0)
    assert float(r) == pytest.approx(expected, abs=1e-6)


def test_actions_are_the_alpha_grid():
    np.testing.assert_allclose(purl.PuRLConfig().alphas, np.arange(12) * 0.2, atol=1e-6)
    assert len(purl.PuRLConfig(alpha_step=0.1).alphas) == 23
    with pytest.raises(JPanningError, match="state"):
        purl.PuRLConfig(state="image").validate()


@pytest.fixture(scope="module")
def env_setup(make_tiny_problem):
    problem, dataset = make_tiny_problem(0.5)
    order = flops.prunable_layer_order(
        problem.model, problem.variables, problem.prunable, dataset.input_shape
    )
    env = purl.PuRLEnv(problem.model, problem.prunable, order, CONFIG)
    retrain, held = purl.split_examples(dataset, CONFIG, seed=0)
    env_params = purl.make_env_params(env, problem.variables, retrain, held, 0.5)
    return problem, env, env_params


def test_layers_are_visited_in_forward_order(env_setup):
    _, env, _ = env_setup
    assert env.order == ["Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel"]
    assert env.obs_size == 3 and env.num_actions == 12


def test_step_prunes_only_its_layer_keeps_zeros_through_retraining_and_ends_at_the_last(
    env_setup,
):
    problem, env, env_params = env_setup
    obs, state = env.reset(jax.random.key(0), env_params)
    np.testing.assert_allclose(obs, [0.0, float(env_params.dense_accuracy), 0.0])
    step = jax.jit(env.step)
    action = jnp.int32(5)  # α = 1.0
    obs, state1, reward, terminated, truncated, info = step(
        jax.random.key(1), state, action, env_params
    )
    w0 = np.asarray(problem.params["Conv_0"]["kernel"])
    expected = (np.abs(w0) >= 1.0 * w0.std()).astype(np.float32)
    np.testing.assert_array_equal(state1.masks["Conv_0"]["kernel"], expected)
    assert np.all(np.asarray(state1.masks["Conv_1"]["kernel"]) == 1)
    assert np.all(np.asarray(state1.params["Conv_0"]["kernel"])[expected == 0] == 0)
    total = sum(
        np.size(x)
        for x in (w0, problem.params["Conv_1"]["kernel"], problem.params["Dense_0"]["kernel"])
    )
    assert float(info["sparsity"]) == pytest.approx((expected == 0).sum() / total, abs=1e-6)
    assert float(obs[0]) == pytest.approx(1 / 3)
    assert float(reward) == pytest.approx(
        float(
            purl.reward_fn(info["accuracy"], info["sparsity"], env_params.target_accuracy, 0.5, 1.0)
        ),
        abs=1e-6,
    )
    assert not bool(terminated) and not bool(truncated)
    # the same step without jit
    _, nojit, r2, *_ = env.step(jax.random.key(1), state, action, env_params)
    np.testing.assert_array_equal(nojit.masks["Conv_0"]["kernel"], state1.masks["Conv_0"]["kernel"])
    assert float(r2) == pytest.approx(float(reward), abs=1e-5)
    _, state2, *_ = step(jax.random.key(2), state1, jnp.int32(11), env_params)
    # layer 0 keeps its zeros while layer 1 is pruned and everything is retrained
    assert np.all(np.asarray(state2.params["Conv_0"]["kernel"])[expected == 0] == 0)
    assert np.asarray(state2.masks["Conv_1"]["kernel"]).mean() < 1
    *_, terminated, _, _ = step(jax.random.key(3), state2, jnp.int32(0), env_params)
    assert bool(terminated)  # the last layer ends the episode


def test_collapse_stops_early_and_charges_the_unvisited_layers(env_setup):
    _, env, env_params = env_setup
    params = env_params.replace(
        collapse_accuracy=jnp.float32(0.99), target_accuracy=jnp.float32(1.0)
    )
    _, state = env.reset(jax.random.key(0), params)
    _, _, reward, terminated, _, info = env.step(jax.random.key(1), state, jnp.int32(11), params)
    assert bool(terminated)
    one = purl.reward_fn(info["accuracy"], info["sparsity"], 1.0, 0.5, 1.0)
    assert float(reward) == pytest.approx(3 * float(one), rel=1e-5)


def test_run_gives_masks_from_the_mean_alpha(make_tiny_problem):
    problem, dataset = make_tiny_problem(0.5)
    problem = dataclasses.replace(
        problem,
        data=purl.split_examples(dataset, CONFIG, seed=0),
        options=purl.PuRLOptions(preset="test"),
    )
    purl.PRESETS["test"] = CONFIG
    try:
        result = purl.run(problem)
    finally:
        del purl.PRESETS["test"]
    assert result.episode_alphas.shape == (2, 3)
    np.testing.assert_allclose(result.alphas, result.episode_alphas.mean(axis=0))
    expected = purl.threshold_masks(
        problem.params, purl.layer_ids(problem.prunable, result.layers), jnp.asarray(result.alphas)
    )
    jax.tree.map(np.testing.assert_array_equal, result.masks, expected)
    assert len(result.metrics["reward"]) == CONFIG.episodes * 3


def test_uniform_prunes_every_layer_to_the_same_exact_sparsity(make_tiny_problem):
    problem, _ = make_tiny_problem(0.75)
    masks = purl.uniform(problem)
    for name, layer in M.sparsity_report(masks, problem.prunable)["layers"].items():
        assert layer["kept"] == layer["total"] - round(0.75 * layer["total"]), name
    kernel = np.abs(np.asarray(problem.params["Conv_1"]["kernel"]))
    kept = kernel[np.asarray(masks["Conv_1"]["kernel"]) == 1]
    assert kept.min() >= kernel[np.asarray(masks["Conv_1"]["kernel"]) == 0].max()


def _cli(*args):
    from jpanning import cli

    return cli.main(
        ["--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--seed", "3"]
        + ["--no-progress", *args]
    )


@pytest.mark.slow  # ~25 s end to end; the default suite keeps the unit tests of PuRL above
def test_cli_purl_pretrains_reports_alphas_and_its_network_is_the_dense_run(tmp_path, capsys):
    import json

    from jpanning import report

    out = tmp_path / "purl"
    assert (
        _cli(
            "--method",
            "purl",
            "--ratio",
            "0.5",
            "--preset",
            "quick",
            "--purl-episodes",
            "1",
            "--out",
            str(out),
        )
        == 0
    )
    r = json.loads((out / "results.json").read_text())
    assert r["purl"]["layers"] == ["Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel"]
    assert len(r["purl"]["alphas"]) == 3 and len(r["purl"]["episode_alphas"]) == 5
    assert r["pretrained"]["epochs"] == 1 and r["pretrained"]["from"] is None
    for name in ("purl_alphas.png", "purl_curve.png", "pretrained.npz"):
        assert (out / name).is_file()
    # the network PuRL pruned is the one a dense run with the same seed and recipe trains
    dense = tmp_path / "dense"
    assert _cli("--method", "dense", "--out", str(dense)) == 0
    pre = report.load_npz(str(out / "pretrained.npz"))
    trained = report.load_npz(str(dense / "model.npz"))
    jax.tree.map(np.testing.assert_array_equal, pre["params"], trained["params"])

    # the uniform baseline prunes that network when given it
    uni = tmp_path / "uniform"
    assert (
        _cli(
            "--method",
            "uniform",
            "--ratio",
            "0.5",
            "--pretrained",
            str(dense / "model.npz"),
            "--out",
            str(uni),
        )
        == 0
    )
    r = json.loads((uni / "results.json").read_text())
    assert r["pretrained"]["from"] == str(dense / "model.npz")
    for layer in r["sparsity"]["layers"].values():
        assert layer["kept"] == layer["total"] - round(0.5 * layer["total"])
    capsys.readouterr()


def test_cli_refuses_bad_pretrained_input(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    other = tmp_path / "other.npz"
    from jpanning import report

    report.save_npz(
        str(other), params={"Dense_0": {"kernel": np.zeros((3, 3), np.float32)}}, batch_stats={}
    )
    cases = [
        (("--method", "snip", "--pretrained", str(other)), "--pretrained is for the methods"),
        (("--method", "uniform", "--pretrained", str(tmp_path / "none.npz")), "does not exist"),
        (("--method", "uniform", "--pretrained", str(bad)), "is not a model.npz file"),
        (("--method", "uniform", "--pretrained", str(other)), "holds a different network"),
    ]
    for args, message in cases:
        assert _cli(*args, "--ratio", "0.5", "--out", str(tmp_path / "o")) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_options_override_the_preset_and_bad_values_are_refused():
    config = purl.config_from_options(
        {"preset": "quick", "purl_alpha_step": 0.1, "purl_state": "per_layer"}
        | {"purl_collapse": 0.5}
    )
    assert config.episodes == purl.PRESETS["quick"].episodes
    assert len(config.alphas) == 23 and config.state == "per_layer"
    assert config.collapse_accuracy == 0.5
    with pytest.raises(JPanningError, match="collapse_accuracy"):
        purl.config_from_options({"purl_collapse": 1.5})
    with pytest.raises(JPanningError, match="unknown purl preset 'fast'"):
        purl.config_from_options({"preset": "fast"})


def test_per_layer_state_holds_accuracy_and_sparsity_of_each_layer(env_setup):
    problem, env, env_params = env_setup
    per_layer = purl.PuRLEnv(
        problem.model, problem.prunable, env.order, dataclasses.replace(CONFIG, state="per_layer")
    )
    obs, state = per_layer.reset(jax.random.key(0), env_params)
    np.testing.assert_array_equal(obs, np.zeros(6))
    obs, state, _, _, _, info = jax.jit(per_layer.step)(
        jax.random.key(1), state, jnp.int32(5), env_params
    )
    density = float(np.mean(np.asarray(state.masks["Conv_0"]["kernel"])))
    np.testing.assert_allclose(obs, [float(info["accuracy"]), 0, 0, 1 - density, 0, 0], atol=1e-6)
