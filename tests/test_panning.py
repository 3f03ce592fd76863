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
    expected = np.abs(x - x.mean()) / x.std(ddof=1)  # torch.std, as the authors
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
    np.testing.assert_allclose(np.asarray(got), config.staircase[row], rtol=1e-6)
    np.testing.assert_allclose(config.staircase[row], panning.ADD_WEIGHTS[row])


def test_the_staircase_moves_up_one_step_per_round_as_the_authors():
    # A 3-round schedule to 0.995 jumps over several bounds; the authors' step lags.
    schedule = M.exponential_schedule(0.995, 3)  # 0.829, 0.971, 0.995
    np.testing.assert_array_equal(
        panning.schedule_bands(schedule, (0.8, 0.9, 0.98, 0.99)), [1, 2, 3]
    )
    # With T = 100 every step is reached in order: the lag never shows.
    schedule = M.exponential_schedule(0.998, 100)
    bands = panning.schedule_bands(schedule, (0.8, 0.9, 0.98, 0.99))
    direct = (schedule[:, None] > np.array([0.8, 0.9, 0.98, 0.99], np.float32)).sum(1)
    np.testing.assert_array_equal(bands, direct)


def test_mul_fusion_is_a_product_of_powers_with_its_own_staircase():
    maps = {m: {"w": jnp.array([0.0, 1.0, 2.0, 3.0]) + i} for i, m in enumerate(panning.METRICS)}
    p = jnp.array([0.3, 1.0, 0.0])
    got = np.asarray(panning.fuse(maps, p, "mul")["w"])
    x = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(got, x**0.3 * (x + 1) ** 1.0 * (x + 2) ** 0.0, rtol=1e-6)
    added = np.asarray(panning.fuse(maps, p, "add")["w"])
    np.testing.assert_allclose(added, 0.3 * x + (x + 1), rtol=1e-6)
    assert panning.PanningConfig(fusion="mul").staircase == panning.MUL_WEIGHTS
    assert panning.PanningConfig(fusion="mul").staircase[0] == (0.3, 1.0, 0.2)


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
    assert kept == int(total * (1 - 0.9)) == M.num_to_keep(total, 0.9, "floor")


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
    round0 = M.global_topk(dense["snip"], s0, net["prunable"], "floor")
    round1 = M.global_topk(dense["grasp"], s1, net["prunable"], "floor")
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
        normalised = panning.normalise(signed, net["prunable"])
        expected = M.global_topk(normalised, s, net["prunable"], "floor")
    _same(masks, expected)


def test_each_round_scores_snip_on_its_own_fresh_batch(net):
    # SNIP alone: round t's mask is the top-k of SNIP on batch t (the authors draw a new
    # batch every round); with one batch every round would rank alike.
    ds = net["dataset"]
    batches = tuple(
        np.stack([data.scoring_batch(ds, 4, seed=i)[j] for i in range(3)]) for j in (0, 1)
    )
    config = panning.PanningConfig(rounds=3)
    snip_only = lambda t, s: jnp.array([0.0, 1.0, 0.0])
    masks, trace = panning.panning(
        net["train"], net["eval"], net["params"], None, 0.8, prunable=net["prunable"],
        config=config, weights_fn=snip_only, batches=batches,
    )  # fmt: skip
    s_last = float(trace["sparsity"][-1])
    last = panning.dense_metrics(
        net["train"], net["params"], (batches[0][2], batches[1][2]), prunable=net["prunable"]
    )
    _same(masks, M.global_topk(last["snip"], s_last, net["prunable"], "floor"))
    first = panning.dense_metrics(
        net["train"], net["params"], (batches[0][0], batches[1][0]), prunable=net["prunable"]
    )
    assert not np.array_equal(
        _flat(M.global_topk(first["snip"], s_last, net["prunable"], "floor")), _flat(masks)
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"thresholds": (0.9, 0.8)}, "thresholds must ascend"),
        ({"weights": ((1.0, 0, 0),)}, "needs 5 rows of weights"),
        ({"weights": ((1.0, 0),) * 5}, "needs 3 non-negative values"),
        ({"fusion": "max"}, "unknown panning fusion 'max'"),
    ],
)
def test_bad_config_is_one_clear_error(kwargs, message):
    with pytest.raises(JPanningError, match=message):
        panning.PanningConfig(**kwargs).validate()


# -- The environment ---------------------------------------------------------------------------
# tests/test_conformance.py checks every term against the authors' definitions; these check
# the environment's mechanics (jit, vmap, the episode's end, the pool, options, errors).


@pytest.fixture(scope="module")
def tiny_env(net):
    ds = net["dataset"]
    env = E.PanningEnv(net["train"], net["eval"], net["prunable"], ds.input_shape)
    xs = ds.train_images[:60].reshape(3, 20, *ds.input_shape)
    ys = ds.train_labels[:60].reshape(3, 20)
    return env, env.make_params(net["params"], xs, ys, rounds=4)


@pytest.mark.slow  # 17 s
def test_reset_observes_the_dense_batch_only_and_steps_agree_with_and_without_jit(tiny_env):
    env, params = tiny_env
    obs, state = env.reset(jax.random.key(0), params, target=0.9)
    assert obs.shape == (E.OBS_SIZE,)
    np.testing.assert_array_equal(np.asarray(obs)[2:], 0.0)  # the authors' (N(L), N(G), 0, ...)
    aware = params.replace(reset_observes_sparsity=True)
    obs_aware, _ = env.reset(jax.random.key(0), aware, target=0.9)
    np.testing.assert_allclose(float(obs_aware[5]), 1 - 0.1**0.25, rtol=1e-6)
    action = jnp.array([0.2, -0.5, 0.9])
    eager = env.step(jax.random.key(1), state, action, params)
    jitted = jax.jit(env.step)(jax.random.key(1), state, action, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    obs1, state1 = eager[0], eager[1]
    # Observation 6 is the round index before it advances: 0 after the first step.
    assert int(state1.round) == 1 and float(obs1[6]) == 0.0
    s0 = float(M.round_sparsity(0.9, 0, 4))
    np.testing.assert_allclose(float(obs1[5]), s0, rtol=1e-6)
    report = M.sparsity_report(state1.masks, env.prunable)
    assert report["kept"] == int(report["total"] * (1 - s0)) == int(eager[5]["kept"])


@pytest.mark.slow  # 19 s
def test_the_gap_feature_is_one_more_entry_alpha_times_the_signed_sparsity_gap(tiny_env):
    env, params = tiny_env
    gap = params.replace(observe_gap=True)
    assert E.obs_size(False) == E.OBS_SIZE == 7 and E.obs_size(True) == 8
    obs, state = env.reset(jax.random.key(0), gap, target=0.99)
    plain_obs, plain_state = env.reset(jax.random.key(0), params, target=0.99)
    assert obs.shape == (8,) and float(obs[7]) == 0.0
    np.testing.assert_array_equal(np.asarray(obs)[:7], np.asarray(plain_obs))
    action = jnp.array([-1.0, 1.0, 1.0])
    for _ in range(3):  # the masks, rewards and the authors' 7 entries are unchanged
        obs, state, reward, *_, info = env.step(jax.random.key(1), state, action, gap)
        want = env.step(jax.random.key(1), plain_state, action, params)
        plain_obs, plain_state = want[0], want[1]
        np.testing.assert_array_equal(np.asarray(obs)[:7], np.asarray(plain_obs))
        assert float(reward) == float(want[2])
        effective, sparsity = float(obs[4]), float(obs[5])  # ρe and ρ_t of this step
        np.testing.assert_allclose(float(obs[7]), 100.0 * (effective - sparsity), rtol=1e-5)
        # r_sparsity is its absolute value (the authors' alpha = 100)
        np.testing.assert_allclose(abs(float(obs[7])), float(info["r_sparsity"]), rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_reset_and_step_assert_their_inputs_at_the_door(tiny_env, jit):
    env, params = tiny_env
    reset, step = (jax.jit(env.reset), jax.jit(env.step)) if jit else (env.reset, env.step)
    key = jax.random.key(0)
    _, state = env.reset(key, params, target=0.9)
    with pytest.raises(AssertionError, match=r"assert_shape.*step: action"):
        step(key, state, jnp.zeros(4), params)
    with pytest.raises(AssertionError, match=r"step: state.masks"):
        step(key, state.replace(masks=jax.tree.map(lambda m: m[None], state.masks)), jnp.zeros(3), params)  # fmt: skip
    with pytest.raises(AssertionError, match=r"assert_type.*EnvParams \(scoring 'pool'\)"):
        reset(key, params.replace(labels=params.labels.astype(jnp.float32)))
    with pytest.raises(AssertionError, match=r"assert_rank.*EnvParams"):
        reset(key, params.replace(inputs=params.inputs[0]))
    with pytest.raises(AssertionError, match=r"assert_axis_dimension.*EnvParams"):
        reset(key, params.replace(inputs=jnp.concatenate([params.inputs] * 2, axis=-1)))
    with pytest.raises(AssertionError, match=r"EnvParams: snip"):
        reset(key, params.replace(snip=jax.tree.map(lambda x: x[:2], params.snip)))
    with pytest.raises(AssertionError, match=r"reset: target"):
        reset(key, params, jnp.array([0.9, 0.8]))


@pytest.mark.slow  # 13 s
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
        _same(one[1].masks, jax.tree.map(lambda x: x[i], batched[1].masks))
        # The loss gaps are divided by the width of a narrow range (losses at logits / 200),
        # which magnifies float32 rounding that differs between the two programs.
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], rtol=5e-3, atol=1e-6)


def test_round_t_terminates_the_episode_and_nothing_truncates(tiny_env):
    env, params = tiny_env
    _, state = env.reset(jax.random.key(0), params, target=0.5)
    step = jax.jit(env.step)
    for t in range(4):
        obs, state, _, terminated, truncated, info = step(
            jax.random.key(t), state, jnp.zeros(3), params
        )
        assert bool(terminated) == (t == 3) and not bool(truncated)
        np.testing.assert_allclose(float(info["sparsity"]), 1 - 0.5 ** ((t + 1) / 4), rtol=1e-6)
        np.testing.assert_allclose(float(obs[6]), t / 4)
    report = M.sparsity_report(state.masks, env.prunable)
    assert report["kept"] == int(report["total"] * 0.5)


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
    return env, env.make_params(params, xs, ys, rounds=4)


def test_leaving_no_weight_alive_ends_the_episode_with_the_authors_penalty(mlp_env):
    env, params = mlp_env
    # Target 0.996 at round t = 1 of 4 keeps int(18 * 0.004 ** 0.5) = 1 weight: nothing is
    # alive, so the episode ends, with the penalty (1 − t / T) · T = 3.
    _, state = env.reset(jax.random.key(0), params, target=0.996)
    state = state.replace(round=jnp.int32(1))
    obs, new, reward, terminated, truncated, info = env.step(
        jax.random.key(1), state, jnp.zeros(3), params
    )
    assert int(np.sum(_flat(new.masks))) == 1 and int(info["alive"]) == 0
    assert bool(terminated) and bool(info["collapsed"]) and not bool(truncated)
    np.testing.assert_allclose(float(obs[4]), 1.0)
    np.testing.assert_allclose(float(info["r_done"]), 3.0)
    rho_1 = 1 - 0.004**0.5
    expected = -100 * abs(rho_1 - 1.0) - float(info["r_loss"]) - float(info["r_gtg"]) - 3.0
    np.testing.assert_allclose(float(reward), expected, rtol=1e-5)


def test_warmup_ranges_follow_the_authors_inverted_start():
    r = E.warmup_ranges(jnp.array([2.0, 1.5, 3.0]), jnp.array([1.0, 50.0, 0.02]))
    np.testing.assert_allclose(np.asarray(r.loss), [1.5, 3.0])  # min(200, 1.5, 3), max(.02, ..)
    np.testing.assert_allclose(np.asarray(r.grad_norm), [0.02, 50.0])
    r = E.warmup_ranges(jnp.array([2.0, 2.001]), jnp.array([1.0, 1.0]))
    np.testing.assert_allclose(np.asarray(r.loss), [2.001, 2.001])  # x_0 itself is not in it


@pytest.mark.slow  # 17 s
def test_ranges_outlive_the_episode_through_reset_after_and_the_agent_loop(tiny_env):
    env, params = tiny_env
    point = E.Ranges(params.ranges.loss[:1].repeat(2), params.ranges.grad_norm[:1].repeat(2))
    _, state = env.reset(jax.random.key(0), params, target=0.95, ranges=point)
    for t in range(4):
        _, state, *_ = jax.jit(env.step)(jax.random.key(t), state, jnp.array([1.0, -1, -1]), params)
    wide = state.ranges
    assert (
        float(wide.loss[1] - wide.loss[0]) > 0 and float(wide.grad_norm[1] - wide.grad_norm[0]) > 0
    )
    _, carried = env.reset_after(jax.random.key(9), state, params)
    _same(carried.ranges, wide)
    _, fresh = env.reset(jax.random.key(9), params)
    _same(fresh.ranges, params.ranges)
    # The agents' loop resets through reset_after at an episode's end.
    from jpanning.agents import loop, td3

    carry = loop.TrainCarry(
        agent=None,
        buffer=td3.buffer_init(8, E.OBS_SIZE, 3),
        obs=jnp.zeros(E.OBS_SIZE),
        env_state=state.replace(round=jnp.int32(3)),
        episode_return=jnp.float32(0.0),
    )
    new, metrics = loop.interact(
        env, params, carry, jnp.zeros(3), jax.random.key(1), jax.random.key(2)
    )
    assert bool(metrics["done"]) and int(new.env_state.round) == 0
    np.testing.assert_allclose(
        np.asarray(new.env_state.ranges.loss), np.asarray(metrics["info"]["ranges"][0])
    )


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


def test_the_pool_holds_each_batch_s_dense_measurements_in_order(net, tiny_env):
    """Entry b of the pool (scored batch by batch) is ``dense_batch`` of pool batch b, for
    every batch, maps, loss and ‖g‖²; the batches give different values."""
    env, pooled = tiny_env
    assert pooled.dense_loss.shape == (3,)
    losses = []
    for b in range(3):
        want = env.dense_batch(net["params"], (pooled.inputs[b], pooled.labels[b]))
        got = {
            "snip": jax.tree.map(lambda x: x[b], pooled.snip),
            "grasp": jax.tree.map(lambda x: x[b], pooled.grasp),
            "loss": pooled.dense_loss[b],
            "grad_norm": pooled.dense_grad_norm[b],
        }
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
        losses.append(float(want["loss"]))
    assert len(set(losses)) == 3


def test_a_fresh_step_scores_the_batch_it_draws(net, tiny_env):
    env, _ = tiny_env
    ds = net["dataset"]
    fresh = env.make_params(
        net["params"], ds.train_images, ds.train_labels, rounds=4, scoring="fresh",
        samples_per_class=2,
    )  # fmt: skip
    _, state = env.reset(jax.random.key(0), fresh, target=0.9)
    key = jax.random.key(2)
    _, new, *_ = jax.jit(env.step)(key, state, jnp.array([0.5, -0.2, 0.1]), fresh)
    want = env.dense_batch(net["params"], env.draw(key, fresh)[0])
    for x, y in zip(
        jax.tree.leaves((new.snip, new.grasp, new.loss)),
        jax.tree.leaves((want["snip"], want["grasp"], want["loss"])),
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scoring": "stream"}, "unknown scoring 'stream'"),
        ({"effective": "flow"}, "unknown effective sparsity 'flow'"),
        ({"fusion": "max"}, "unknown fusion 'max'"),
        ({"warmup_batches": 1}, "warmup_batches must be at least 2"),
        ({"scoring": "fresh"}, "scoring 'fresh' takes inputs \\[N"),
    ],
)
def test_bad_environment_options_are_one_clear_error(net, tiny_env, kwargs, message):
    env, params = tiny_env
    with pytest.raises(JPanningError, match=message):
        env.make_params(net["params"], params.inputs, params.labels, **kwargs)


# -- the collapse shield (jpanning's option, on by default; the authors have none) -------------


def _synflow_by_hand(net, sparsities):
    """SynFlow (Tanaka et al. 2020) round by round: the masked |θ|-network's flow, pruned
    weights kept out, the floor top-k; the mask after each round."""

    @jax.jit
    def one_round(masks, s):
        flow = scores.synflow(
            net["eval"], net["params"], net["batch"], masks=masks, prunable=net["prunable"]
        )
        flow = jax.tree.map(lambda f, m: jnp.where(m != 0, f, -jnp.inf), flow, masks)
        return M.global_topk(flow, s, net["prunable"], "floor")

    masks, out = M.ones_like(net["params"]), []
    for s in sparsities:
        masks = one_round(masks, jnp.float32(s))
        out.append(masks)
    return out


def test_the_shield_takes_the_fallback_only_where_a_layer_would_be_empty():
    prunable = {"a": {"kernel": True}, "b": {"kernel": True, "bias": False}}
    fused = {
        "a": {"kernel": jnp.array([1.0, 0.0])},
        "b": {"kernel": jnp.zeros(2), "bias": jnp.ones(1)},
    }
    fallback = {
        "a": {"kernel": jnp.array([0.0, 1.0])},
        "b": {"kernel": jnp.array([1.0, 0.0]), "bias": jnp.ones(1)},
    }
    p = jnp.array([0.2, 0.5, 0.3])
    shield = jax.jit(lambda m, w, f: panning.shield(m, w, f, prunable))  # prunable is static
    masks, weights, shielded = shield(fused, p, fallback)
    assert bool(shielded)
    _same(masks, fallback)
    np.testing.assert_array_equal(weights, [1.0, 0.0, 0.0])
    kept = {
        "a": {"kernel": jnp.array([1.0, 0.0])},
        "b": {"kernel": jnp.array([0.0, 1.0]), "bias": jnp.zeros(1)},
    }
    masks, weights, shielded = panning.shield(kept, p, fallback, prunable)
    assert not bool(shielded)  # a non-prunable leaf of zeros is no empty layer
    _same(masks, kept)
    np.testing.assert_array_equal(weights, p)


def test_a_shielded_panning_empties_no_layer_that_synflow_keeps(net):
    # GraSP alone at 0.99 in 5 rounds empties the classifier; with the shield, the rounds where
    # it would take SynFlow's mask of that round, so the final mask is SynFlow's own.
    grasp_alone = lambda t, s: jnp.array([0.0, 0.0, 1.0])
    run = lambda shield: panning.panning(
        net["train"], net["eval"], net["params"], net["batch"], 0.99, prunable=net["prunable"],
        config=panning.PanningConfig(rounds=5, collapse_shield=shield), weights_fn=grasp_alone,
    )  # fmt: skip
    unshielded, trace_off = run(False)
    assert M.empty_layers(unshielded, net["prunable"]) == ["Dense_0/kernel"]
    assert not np.any(trace_off["shielded"])
    shielded, trace = run(True)
    synflow = _synflow_by_hand(net, np.asarray(trace["sparsity"]))
    assert M.empty_layers(synflow[-1], net["prunable"]) == []
    assert M.empty_layers(shielded, net["prunable"]) == []
    on = np.asarray(trace["shielded"])
    assert on[-1] and 0 < on.sum() < 5
    _same(shielded, synflow[-1])  # the last round was shielded: SynFlow's mask of that round
    np.testing.assert_array_equal(np.asarray(trace["weights"])[on], [[1.0, 0.0, 0.0]] * on.sum())
    np.testing.assert_array_equal(
        np.asarray(trace["weights"])[~on], [[0.0, 0.0, 1.0]] * (~on).sum()
    )


def test_the_environment_shields_a_step_with_the_synflow_trajectory_it_is_given(net, tiny_env):
    env, params = tiny_env
    grasp_alone = jnp.array([-1.0, -1.0, 1.0])  # p = (0, 0, 1)
    step = jax.jit(env.step)

    def episode(shield):
        synflow, trace = M.ones_like(net["params"]), []
        p = params.replace(collapse_shield=shield, shield_masks=synflow if shield else None)
        _, state = env.reset(jax.random.key(0), p, target=0.99)
        for t in range(p.rounds):
            if shield:
                s = M.round_sparsity(state.target, state.round, p.rounds)
                synflow = env.synflow_alone(p.net_params, synflow, s)
                p = p.replace(shield_masks=synflow)
            _, state, _, _, _, info = step(jax.random.key(t), state, grasp_alone, p)
            trace.append(info)
        return state.masks, trace, synflow

    off, trace_off, _ = episode(False)
    assert "shielded" not in trace_off[0]  # a search's metrics keep their shape
    assert M.empty_layers(off, net["prunable"]) == ["Dense_0/kernel"]
    on, trace, synflow = episode(True)
    sparsities = [float(M.round_sparsity(0.99, t, params.rounds)) for t in range(params.rounds)]
    _same(synflow, _synflow_by_hand(net, sparsities)[-1])
    assert M.empty_layers(on, net["prunable"]) == [] and bool(trace[-1]["shielded"])
    _same(on, synflow)
    np.testing.assert_array_equal(trace[-1]["weights"], [1.0, 0.0, 0.0])
