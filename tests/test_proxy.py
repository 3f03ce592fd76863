"""The proxy environment (jpanning.proxy), policy_eval's range widening, and the maths of
benchmarks.proxy's faithfulness check and benchmarks.search_diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import policy_eval, policy_variants, search_diagnostics
from benchmarks import proxy as proxy_bench
from jpanning import data, models, proxy, pruning, rlpanning
from jpanning import env as env_lib
from jpanning import masks as M
from jpanning.errors import JPanningError

CONFIG = rlpanning.RLPanningConfig(rounds=3, scoring="pool")
SMALL = proxy.ProxyConfig(downsample=4, samples_per_class=1, pool_size=2)


def test_downsample_averages_blocks_by_hand():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    pooled = proxy.downsample(images, 2)
    assert pooled.shape == (2, 2, 2, 1) and pooled.dtype == np.float32
    # top-left block of image 0: pixels 0, 1, 4, 5
    assert pooled[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert pooled[1, 1, 1, 0] == pytest.approx(np.mean([26, 27, 30, 31]))
    assert proxy.downsample(images, 1) is images or np.array_equal(
        proxy.downsample(images, 1), images
    )
    with pytest.raises(JPanningError, match="does not divide"):
        proxy.downsample(images, 3)


def test_proxy_settings_are_named_and_checked():
    assert proxy.proxy("proxy") == proxy.PROXIES["proxy"]
    with pytest.raises(JPanningError, match="unknown proxy"):
        proxy.proxy("nope")
    with pytest.raises(JPanningError, match="synflow"):
        proxy.ProxyConfig(synflow="half").validate()
    with pytest.raises(JPanningError, match="samples_per_class"):
        proxy.ProxyConfig(samples_per_class=0).validate()


def test_resnet20_keeps_its_prunable_weights_on_proxy_inputs():
    """The proxy scores the real network: ResNet-20 built for Fashion-MNIST's 28x28x1 has
    268,048 prunable weights, and the same params take the pooled 7x7 images (it ends in a
    global average pool)."""
    model = models.create_model("resnet20", 10)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (28, 28, 1)))
    prunable = M.prunable_tree(variables["params"])
    count = sum(
        int(np.prod(x.shape))
        for x, f in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(prunable))
        if f
    )
    assert count == 268_048  # 268,336 on CIFAR: the first conv has 3 input channels there
    d = proxy.PROXIES["proxy"].downsample
    logits = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((20, 28 // d, 28 // d, 1))
    )
    assert logits.shape == (20, 10)


@pytest.fixture(scope="module")
def resnet_problem():
    """A ResNet-8 of width 4 (global average pool, like ResNet-20) on the synthetic data."""
    dataset = data.load_dataset("synthetic", seed=0)
    model = models.CifarResNet(depth=8, width=4, num_classes=dataset.num_classes)
    variables = models.init_variables(model, jax.random.key(0), dataset.input_shape)
    problem = pruning.PruneProblem(
        model=model,
        variables=variables,
        batch=data.scoring_batch(dataset, 2, seed=0),
        sparsity=0.5,
        prunable=M.prunable_tree(variables["params"]),
        key=jax.random.key(1),
        options={},
    )
    return problem, dataset


@pytest.mark.slow  # a ResNet-20 environment: minutes on 2 cores
def test_proxy_env_scores_pooled_batches_and_runs_synflow_at_the_real_shape(resnet_problem):
    problem, dataset = resnet_problem
    h, w, c = dataset.input_shape  # 16x16x1
    inputs, labels = proxy.proxy_pool(dataset, SMALL, seed=0)
    classes = dataset.num_classes
    assert inputs.shape == (2, classes, h // 4, w // 4, c) and labels.shape == (2, classes)
    full, full_params = proxy.build_env(problem, dataset, CONFIG, SMALL, 0)
    low, low_params = proxy.build_env(
        problem, dataset, CONFIG, SMALL.__class__(**{**SMALL.__dict__, "synflow": "proxy"}), 0
    )
    assert full.input_shape == (h, w, c) and low.input_shape == (h // 4, w // 4, c)
    assert full_params.inputs.shape == (2, classes, h // 4, w // 4, c)
    assert full_params.options()["pool_size"] == 2 and full_params.scoring == "pool"
    # the real pool's batches, pooled: the same examples as the real environment's
    real_inputs, real_labels = rlpanning.score_pool(dataset, 1, 2, 0)
    np.testing.assert_array_equal(labels, real_labels)
    np.testing.assert_allclose(inputs, proxy.downsample(real_inputs, 4))
    obs, state = full.reset(jax.random.key(0), full_params, target=0.9)
    obs, state, reward, *_, info = full.step(
        jax.random.key(1), state, jnp.array([1.0, -1.0, -1.0]), full_params
    )
    leaves = zip(jax.tree.leaves(problem.params), jax.tree.leaves(problem.prunable))
    total = sum(int(np.size(x)) for x, f in leaves if f)
    assert int(info["kept"]) == max(int(total * (1 - float(info["sparsity"]))), 1)
    assert np.isfinite(float(reward)) and obs.shape == (7,)


@pytest.mark.slow  # a ResNet-20 environment: minutes on 2 cores
def test_widen_ranges_is_the_env_s_own_widening_over_the_episodes(resnet_problem):
    problem, dataset = resnet_problem
    env, env_params = proxy.build_env(problem, dataset, CONFIG, SMALL, 0)
    step, reset = jax.jit(env.step), jax.jit(env.reset)
    act = lambda t, obs: jnp.array([0.0, 0.0, 0.0])  # noqa: E731
    ranges, targets = policy_eval.widen_ranges(
        env, env_params, step, reset, act, 0, jax.random.key(2)
    )
    assert targets == [] and ranges is env_params.ranges
    ranges, targets = policy_eval.widen_ranges(
        env, env_params, step, reset, act, 2, jax.random.key(2)
    )
    assert len(targets) == 2 and all(0.9 <= s < 1.0 for s in targets)
    # by hand: the warm-up range widened by every step's L, Ls (and G, Gs)
    lo, hi = np.asarray(env_params.ranges.loss)
    ranges_seen = None
    for i, target in enumerate(targets):
        k_episode = jax.random.split(jax.random.fold_in(jax.random.key(2), i))[1]
        for _, _, _, _, state in policy_eval.rounds(
            env, env_params, step, reset, act, target, k_episode, ranges_seen
        ):
            lo = min(lo, float(state.loss), float(state.sparse_loss))
            hi = max(hi, float(state.loss), float(state.sparse_loss))
        ranges_seen = state.ranges
    np.testing.assert_allclose(np.asarray(ranges.loss), [lo, hi], rtol=1e-6)


def test_rescore_widens_the_ranges_round_by_round_by_hand():
    ranges = env_lib.Ranges(loss=np.array([1.0, 3.0]), grad_norm=np.array([2.0, 4.0]))
    raw = [  # L, Ls, G, Gs, r_sparsity, r_done
        [2.0, 2.5, 3.0, 3.5, 0.1, 0.0],  # inside the ranges: widths 2 and 2
        [2.0, 5.0, 3.0, 7.0, 0.2, 4.0],  # widens them to [1, 5] and [2, 7]
    ]
    got = policy_eval.rescore(raw, ranges, gtg_scale=2.0)
    r_loss = 0.5 / 2 + 3.0 / 4
    r_gtg = (0.5 / 2 + 4.0 / 5) / 2.0
    assert got["r_loss"] == pytest.approx(r_loss) and got["r_gtg"] == pytest.approx(r_gtg)
    assert got["r_sparsity"] == pytest.approx(0.3) and got["r_done"] == 4.0
    assert got["return"] == pytest.approx(-(0.3 + r_loss + r_gtg + 4.0))
    empty = env_lib.Ranges(loss=np.array([2.0, 2.0]), grad_norm=np.array([3.0, 3.0]))
    assert policy_eval.rescore([[2.0, 2.0, 3.0, 3.0, 0.0, 0.0]], empty, 1.0)["return"] == 0.0


@pytest.mark.slow  # a ResNet-20 environment: minutes on 2 cores
def test_rescored_fixed_controller_returns_equal_replayed_ones(resnet_problem):
    problem, dataset = resnet_problem
    env, env_params = proxy.build_env(problem, dataset, CONFIG, SMALL, 0)
    step, reset = jax.jit(env.step), jax.jit(env.reset)
    act = lambda t, obs: jnp.array([1.0, -1.0, 0.5])  # noqa: E731 (ignores obs: a fixed one)
    key = jax.random.key(3)
    first = policy_eval.play(env, env_params, step, reset, act, 0.9, key, None)
    wide, _ = policy_eval.widen_ranges(env, env_params, step, reset, act, 1, jax.random.key(4))
    assert not np.allclose(np.asarray(wide.loss), np.asarray(env_params.ranges.loss))
    again = policy_eval.play(env, env_params, step, reset, act, 0.9, key, wide)
    rescored = policy_eval.rescore(first["raw"], wide, float(env_params.gtg_scale))
    for name in ("return", *policy_eval.TERMS):
        assert rescored[name] == pytest.approx(again[name], rel=1e-5, abs=1e-6), name
    assert first["raw"] == again["raw"]  # the episode itself did not change
    same = policy_eval.rescore(first["raw"], env_params.ranges, float(env_params.gtg_scale))
    assert same["return"] == pytest.approx(first["return"], rel=1e-5)


def test_variant_margins_and_table_by_hand():
    def ep(c, t, seed, ret):
        return {"controller": c, "target": t, "seed": seed, "return": ret}

    episodes = [ep("policy", 0.9, 10, -5.0), ep("policy", 0.9, 11, -7.0),  # mean -6
                ep("synflow", 0.9, 10, -6.0), ep("synflow", 0.9, 11, -8.0),  # mean -7: best
                ep("random", 0.9, 10, -9.0), ep("random", 0.9, 11, -9.0),
                ep("policy", 0.99, 10, -14.0), ep("staircase", 0.99, 10, -12.5)]  # fmt: skip
    assert policy_variants.margins(episodes) == {0.9: 1.0, 0.99: -1.5}
    table = {"demo": {"seeds": {0: {0.9: 1.0, 0.99: -1.5}, 1: {0.9: 3.0, 0.99: 0.5}},
                      "seconds": [2000.0, None], "machines": {"AMD EPYC, 2 cores"}}}  # fmt: skip
    row = policy_variants.markdown(table, "the proxy", "runs").splitlines()[-1]
    assert row == ("| demo | 2 | +2.00 ± 1.00 | -0.50 ± 1.00 | 3/4 | 2000 | AMD EPYC, 2 cores |")


def test_faithfulness_ranks_by_hand():
    real = [
        {"controller": c, "target": s, "seed": 0, "return": r}
        for (c, s), r in {("a", 0.9): -1.0, ("b", 0.9): -2.0, ("c", 0.9): -3.0,
                          ("a", 0.99): -5.0, ("b", 0.99): -4.0, ("c", 0.99): -6.0}.items()
    ]  # fmt: skip
    same_order = [e | {"return": e["return"] * 10} for e in real]
    pairs = proxy_bench.paired_returns(real, same_order)
    result = proxy_bench.faithfulness(pairs)
    assert result["spearman_episodes"] == pytest.approx(1.0)
    assert result["per_target"]["0.99"]["best_real"] == "b"
    assert result["per_target"]["0.9"]["spearman"] == pytest.approx(1.0)
    flipped = [e | {"return": -e["return"]} for e in real]
    result = proxy_bench.faithfulness(proxy_bench.paired_returns(real, flipped))
    assert result["per_target"]["0.9"]["spearman"] == pytest.approx(-1.0)
    # a, b swapped at 0.99 only: ranks (2, 3, 1) vs (3, 2, 1) -> 1 - 6*2/(3*8) = 0.5
    swapped = [e | {"return": {"a": -4.0, "b": -5.0}.get(e["controller"], e["return"])}
               if e["target"] == 0.99 else e for e in real]  # fmt: skip
    result = proxy_bench.faithfulness(proxy_bench.paired_returns(real, swapped))
    assert result["per_target"]["0.99"]["spearman"] == pytest.approx(0.5)


def test_diagnostics_near_counts_and_uniform_expectation_by_hand():
    points = np.array([[1.0, -1.0, -1.0]])
    actions = np.array([[0.9, -0.9, -0.85], [0.9, -0.9, -0.7], [1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    assert search_diagnostics.near_counts(actions, points, 0.2) == 2  # L∞ 0.15, 0.3, 0, 1
    # a corner's box of radius 0.2 inside the cube is 0.2^3 of volume 8: 0.001 of the cube
    assert search_diagnostics.uniform_expected(points, 0.2, 2000) == pytest.approx(2.0)
    centre = np.zeros((1, 3))
    assert search_diagnostics.uniform_expected(centre, 0.2, 1000) == pytest.approx(8.0)
    stairs = search_diagnostics.controller_actions()["staircase"]
    assert stairs.shape[1] == 3 and len(stairs) == 5  # the five rows of the add staircase
    # the windows after the warm-up: cut at 10k, 20k, ... up to the search's length
    edges = [(2000, 10_000), (10_000, 20_000), (20_000, 30_000), (30_000, 40_000)]
    assert search_diagnostics.windows_after(2000, 50_000) == edges + [(40_000, 50_000)]
    assert search_diagnostics.windows_after(2000, 4000) == [(2000, 4000)]
    assert search_diagnostics.windows_after(2000, 2000) == []


def test_diagnostics_r2_ridge_features_and_split_by_hand():
    y = np.array([1.0, 2.0, 3.0])
    assert search_diagnostics.r2(y, y) == 1.0
    assert search_diagnostics.r2(y, np.full(3, 2.0)) == 0.0
    assert search_diagnostics.r2(y, np.array([1.0, 2.0, 4.0])) == pytest.approx(1 - 1 / 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    target = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    predict = search_diagnostics.ridge_fit(x, target, l2=0.0, clip=None)
    np.testing.assert_allclose(predict(x), target, atol=1e-9)
    obs = np.zeros((2, 7))
    obs[:, 4], obs[:, 5] = [0.5, 0.8], [0.49, 0.8]
    feats = search_diagnostics.features(obs, np.ones((2, 3)), gap=True)
    assert feats.shape == (2, 11)
    np.testing.assert_allclose(feats[:, -1], [1.0, 0.0], atol=1e-12)
    assert search_diagnostics.features(obs, np.ones((2, 3)), gap=False).shape == (2, 10)
    done = np.array([0, 0, 1, 0, 1, 0, 0, 1, 0, 1], bool)  # 4 episodes
    test = search_diagnostics.episode_split(done, held_out=0.25)
    episode = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    assert len(set(episode[test])) == 1  # one whole episode held out
    assert set(np.flatnonzero(test)) == set(np.flatnonzero(episode == episode[test][0]))


def test_range_trace_reads_the_ranges_after_each_step():
    n = 150
    ranges = np.zeros((n, 2, 2))
    ranges[:, 0, 1] = np.arange(n)  # loss hi grows with the steps
    metrics = {"info": {"ranges": ranges}, "obs": np.zeros((n, 7))}
    trace = search_diagnostics.range_trace(metrics, window=100)
    assert trace["after_step"]["100"]["loss"] == [0.0, 99.0]
    assert trace["after_step"]["150"]["loss"] == [0.0, 149.0]
    assert [w["steps"] for w in trace["windows"]] == [[0, 100], [100, 150]]
