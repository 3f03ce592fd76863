"""Panning (hand schedule, revival, fusion) and its environment (jit, vmap, reward)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import data, env as E, masks as M, models, panning, scores
from jpanning.errors import JPanningError


@pytest.fixture(scope="module")
def net():
    dataset = data.load_dataset("synthetic", seed=0)
    model = models.create_model("tinycnn", dataset.num_classes)
    variables = models.init_variables(model, jax.random.key(0), dataset.input_shape)
    return {
        "dataset": dataset,
        "params": variables["params"],
        "prunable": M.prunable_tree(variables["params"]),
        "train": models.make_apply_fn(model, variables["batch_stats"], train=True),
        "eval": models.make_apply_fn(model, variables["batch_stats"], train=False),
        "batch": data.scoring_batch(dataset, 4, seed=0),
    }


def _flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- Panning -----------------------------------------------------------------------------------


def test_normalise_is_abs_zscore_over_all_prunable_entries():
    tree = {"a": {"kernel": jnp.array([[1.0, -3.0], [2.0, 6.0]])}, "b": {"bias": jnp.ones(3)}}
    prunable = M.prunable_tree(tree)
    out = panning.normalise(tree, prunable)
    x = np.array([1.0, -3.0, 2.0, 6.0])
    expected = np.abs(x - x.mean()) / x.std()
    np.testing.assert_allclose(np.asarray(out["a"]["kernel"]).ravel(), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["b"]["bias"]), 0.0)
    # Huge raw scores (SynFlow reaches 1e26 at init) stay finite in float32.
    big = panning.normalise(jax.tree.map(lambda v: v * 1e30, tree), prunable)
    np.testing.assert_allclose(np.asarray(big["a"]["kernel"]).ravel(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "sparsity,row",
    [(0.5, 0), (0.8, 0), (0.85, 1), (0.9, 1), (0.95, 2), (0.98, 2), (0.985, 3), (0.995, 4)],
)
def test_hand_schedule_bands(sparsity, row):
    config = panning.PanningConfig()
    got = panning.scheduled_weights(jnp.float32(sparsity), config)
    np.testing.assert_allclose(np.asarray(got), config.weights[row], rtol=1e-6)


def test_round_sparsities_follow_the_keep_fractions(net):
    config = panning.PanningConfig(rounds=5)
    masks, trace = panning.panning(
        net["train"], net["eval"], net["params"], net["batch"], 0.9,
        prunable=net["prunable"], config=config,
    )  # fmt: skip
    keep = (1 - 0.9) ** ((np.arange(5) + 1) / 5)
    np.testing.assert_allclose(1 - np.asarray(trace["sparsity"]), keep, rtol=1e-5)
    total = sum(
        np.size(x) for x, f in zip(jax.tree.leaves(masks), jax.tree.leaves(net["prunable"])) if f
    )
    kept = sum(
        np.sum(x) for x, f in zip(jax.tree.leaves(masks), jax.tree.leaves(net["prunable"])) if f
    )
    assert kept == M.num_to_keep(total, 0.9)


def test_a_weight_pruned_in_one_round_comes_back_when_its_score_rises(net):
    # Round 0 fuses SNIP alone, round 1 GraSP alone: weights that SNIP pruned but GraSP
    # ranks high must be back after round 1, and the masks are exactly those top-ks.
    weights_fn = lambda t, s: jnp.where(t == 0, jnp.array([0.0, 1, 0]), jnp.array([0.0, 0, 1]))
    config = panning.PanningConfig(rounds=2)
    masks, trace = panning.panning(
        net["train"], net["eval"], net["params"], net["batch"], 0.75,
        prunable=net["prunable"], config=config, weights_fn=weights_fn,
    )  # fmt: skip
    dense = panning.dense_metrics(
        net["train"], net["params"], net["batch"], prunable=net["prunable"]
    )
    s0, s1 = np.asarray(trace["sparsity"])
    round0 = M.global_topk(dense["snip"], s0, net["prunable"])
    round1 = M.global_topk(dense["grasp"], s1, net["prunable"])
    _same(masks, round1)
    back = (_flat(round0) == 0) & (_flat(round1) == 1)
    assert back.sum() > 0
    assert int(trace["revived"][1]) == back.sum()


def test_weights_one_zero_zero_give_the_normalised_synflow_mask_round_by_round(net):
    # Three rounds of SynFlow alone, by hand: each round scores the |θ ⊙ m|-network of the
    # previous round's mask, signs θ's, normalises |s − mean| / std and takes the top-k.
    config = panning.PanningConfig(rounds=3)
    masks, trace = panning.panning(
        net["train"], net["eval"], net["params"], net["batch"], 0.8,
        prunable=net["prunable"], config=config, weights_fn=lambda t, s: jnp.array([1.0, 0, 0]),
    )  # fmt: skip
    expected = M.ones_like(net["params"])
    for s in np.asarray(trace["sparsity"]):
        flow = scores.synflow(
            net["eval"], net["params"], net["batch"], masks=expected, prunable=net["prunable"]
        )
        signed = jax.tree.map(lambda f, p: f * jnp.sign(p), flow, net["params"])
        expected = M.global_topk(panning.normalise(signed, net["prunable"]), s, net["prunable"])
    _same(masks, expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"thresholds": (0.9, 0.8)}, "thresholds must ascend"),
        ({"weights": ((1.0, 0, 0),)}, "needs 5 rows of weights"),
        ({"weights": ((1.0, 0),) * 5}, "needs 3 non-negative values"),
    ],
)
def test_bad_config_is_one_clear_error(kwargs, message):
    with pytest.raises(JPanningError, match=message):
        panning.PanningConfig(**kwargs).validate()


# -- The environment ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_env(net):
    ds = net["dataset"]
    env = E.PanningEnv(net["train"], net["eval"], net["prunable"], ds.input_shape)
    xs = ds.train_images[:60].reshape(3, 20, *ds.input_shape)
    ys = ds.train_labels[:60].reshape(3, 20)
    return env, env.make_params(net["params"], xs, ys, rounds=4)


def test_reset_carries_the_target_and_steps_agree_with_and_without_jit(tiny_env):
    env, params = tiny_env
    obs, state = env.reset(jax.random.key(0), params, target=0.9)
    assert obs.shape == (E.OBS_SIZE,)
    np.testing.assert_allclose(obs[5], 0.9, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(obs)[[4, 6]], [0.0, 0.0])
    action = jnp.array([0.2, -0.5, 0.9])
    eager = env.step(jax.random.key(1), state, action, params)
    jitted = jax.jit(env.step)(jax.random.key(1), state, action, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    obs1, state1 = eager[0], eager[1]
    assert int(state1.round) == 1 and np.isclose(float(obs1[6]), 0.25)
    # The mask hits the round's sparsity exactly.
    s0 = float(E.round_sparsity(0.9, 0, 4))
    report = M.sparsity_report(state1.masks, env.prunable)
    assert report["kept"] == M.num_to_keep(report["total"], s0)


def test_vmap_over_four_environments_equals_four_single_steps(tiny_env):
    env, params = tiny_env
    keys = jax.random.split(jax.random.key(3), 4)
    actions = jax.random.uniform(jax.random.key(4), (4, 3), minval=-1, maxval=1)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    _, states = reset(keys, params)
    batched = step(keys, states, actions, params)
    single_step = jax.jit(env.step)
    for i in range(4):
        _, s = env.reset(keys[i], params)
        one = single_step(keys[i], s, actions[i], params)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], rtol=1e-5, atol=1e-6)


def test_an_episode_truncates_at_round_t_without_terminating(tiny_env):
    env, params = tiny_env
    _, state = env.reset(jax.random.key(0), params, target=0.5)
    step = jax.jit(env.step)
    for t in range(4):
        _, state, _, terminated, truncated, info = step(
            jax.random.key(t), state, jnp.zeros(3), params
        )
        assert not bool(terminated)
        assert bool(truncated) == (t == 3)
        np.testing.assert_allclose(float(info["sparsity"]), 1 - 0.5 ** ((t + 1) / 4), rtol=1e-6)
    report = M.sparsity_report(state.masks, env.prunable)
    assert report["kept"] == M.num_to_keep(report["total"], 0.5)


# A two-layer linear network in plain jnp: 4 inputs, 3 hidden, 2 outputs (18 prunable weights).
def _mlp(params, x):
    return x.reshape(x.shape[0], -1) @ params["l1"]["kernel"] @ params["l2"]["kernel"]


@pytest.fixture(scope="module")
def mlp_env():
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    params = {
        "l1": {"kernel": jax.random.normal(k1, (4, 3))},
        "l2": {"kernel": jax.random.normal(k2, (3, 2))},
    }
    xs = jax.random.normal(k3, (2, 6, 4))
    ys = jnp.array([[0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 0]])
    env = E.PanningEnv(_mlp, _mlp, M.prunable_tree(params), (4,))
    return env, env.make_params(params, xs, ys, rounds=4, alpha=10.0)


def test_reward_terms_match_a_hand_computation(mlp_env):
    env, params = mlp_env
    _, state = env.reset(jax.random.key(0), params, target=0.5)
    key = jax.random.key(5)
    obs, new, reward, terminated, _, info = env.step(key, state, jnp.zeros(3), params)
    b = int(jax.random.randint(key, (), 0, 2))
    x, y = params.inputs[b], params.labels[b]

    def loss(w):
        logits = _mlp(w, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y])

    theta = params.net_params
    masked = jax.tree.map(jnp.multiply, theta, new.masks)
    L, g = loss(theta), jax.grad(loss)(theta)
    Ls, gs = loss(masked), jax.grad(loss)(masked)
    G = sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(g))
    Gs = sum(
        float(jnp.sum((v * m) ** 2))
        for v, m in zip(jax.tree.leaves(gs), jax.tree.leaves(new.masks))
    )
    L0, G0 = float(state.loss), float(state.grad_norm)  # the reset batch's dense values
    loss_width = max(L0, float(L), float(Ls)) - min(L0, float(L), float(Ls))
    grad_width = max(G0, G, Gs) - min(G0, G, Gs)
    r_loss = abs(float(L) - float(Ls)) / loss_width
    r_gtg = abs(G - Gs) / grad_width / 5.0
    np.testing.assert_allclose(float(info["r_loss"]), r_loss, rtol=1e-4)
    np.testing.assert_allclose(float(info["r_gtg"]), r_gtg, rtol=1e-4)
    # Round 0 has sparsity 1 - 0.5 ** 0.25 = 0.159 (15 of 18 kept). ρe by hand: a kept weight
    # is effective iff its hidden unit keeps an input and an output weight.
    m1, m2 = np.asarray(new.masks["l1"]["kernel"]), np.asarray(new.masks["l2"]["kernel"])
    alive = (m1.sum(0) > 0) & (m2.sum(1) > 0)
    eff_kept = (m1 * alive[None, :]).sum() + (m2 * alive[:, None]).sum()
    rho_e = 1 - eff_kept / 18
    np.testing.assert_allclose(float(obs[4]), rho_e, rtol=1e-6)
    expected = -10.0 * abs(0.5 - rho_e) - r_loss - r_gtg
    np.testing.assert_allclose(float(reward), expected, rtol=1e-4)
    assert not bool(terminated)


def test_disconnecting_the_network_terminates_with_the_remaining_rounds_as_penalty(mlp_env):
    env, params = mlp_env
    # ρt = 0.996: round 1 (t=1 of 4) keeps round(18 * 0.004 ** 0.5) = 1 weight, so no
    # input-output path is left: terminated, penalty T - t = 4 - 2 = 2.
    _, state = env.reset(jax.random.key(0), params, target=0.996)
    state = state.replace(round=jnp.int32(1))
    obs, new, reward, terminated, truncated, info = env.step(
        jax.random.key(1), state, jnp.zeros(3), params
    )
    assert int(np.sum(_flat(new.masks))) == 1
    assert bool(terminated) and not bool(truncated)
    np.testing.assert_allclose(float(obs[4]), 1.0)
    np.testing.assert_allclose(float(info["r_done"]), 2.0)
    expected = -10.0 * abs(0.996 - 1.0) - float(info["r_loss"]) - float(info["r_gtg"]) - 2.0
    np.testing.assert_allclose(float(reward), expected, rtol=1e-5)


def test_targets_follow_the_configured_mixture(tiny_env):
    env, params = tiny_env
    late = params.with_targets(E.TARGETS_LATE)
    keys = jax.random.split(jax.random.key(0), 4000)
    t = np.asarray(jax.vmap(env.sample_target, in_axes=(0, None))(keys, late))
    assert t.min() >= 0.9 and t.max() < 1.0
    # Half from U(0.98, 1): P(t > 0.98) = 0.5 + 0.5 * 0.2 = 0.6.
    assert abs(np.mean(t > 0.98) - 0.6) < 0.03
    with pytest.raises(JPanningError, match="sum to 1"):
        params.with_targets(((0.5, 0.8, 1.0),))


def test_the_pool_holds_each_batch_s_dense_maps_in_order(net, tiny_env):
    """Entry b of the pool (scored batch by batch) is ``dense_batch`` of pool batch b, for
    every batch, maps, loss and ‖g‖²; the batches give different values."""
    env, pooled = tiny_env
    assert pooled.dense_loss.shape == (3,)
    losses = []
    for b in range(3):
        want = env.dense_batch(net["params"], (pooled.inputs[b], pooled.labels[b]))
        got = (
            jax.tree.map(lambda x: x[b], pooled.snip),
            jax.tree.map(lambda x: x[b], pooled.grasp),
            pooled.dense_loss[b],
            pooled.dense_grad_norm[b],
        )
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
        losses.append(float(want[2]))
    assert len(set(losses)) == 3


def test_recomputing_the_dense_maps_every_step_gives_the_pooled_step(net, tiny_env):
    env, pooled = tiny_env
    ds = net["dataset"]
    xs = ds.train_images[:60].reshape(3, 20, *ds.input_shape)
    ys = ds.train_labels[:60].reshape(3, 20)
    fresh = env.make_params(net["params"], xs, ys, rounds=4, recompute_dense=True)
    _, state = env.reset(jax.random.key(0), pooled, target=0.9)
    action = jnp.array([0.5, -0.2, 0.1])
    a = jax.jit(env.step)(jax.random.key(2), state, action, pooled)
    b = jax.jit(env.step)(jax.random.key(2), state, action, fresh)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
