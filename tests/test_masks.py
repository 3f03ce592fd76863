"""Masks: exact top-k counts, deterministic ties, reports, and the masked optimizer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jpanning import masks as M
from jpanning.errors import JPanningError


def _tree(shapes, values):
    """A params-like tree: layer i has a 'kernel' of shapes[i] and a 'bias'."""
    tree, start = {}, 0
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape))
        tree[f"layer{i}"] = {
            "kernel": jnp.asarray(values[start : start + n], jnp.float32).reshape(shape),
            "bias": jnp.zeros(shape[-1]),
        }
        start += n
    return tree


shapes_st = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 6)), min_size=1, max_size=4)


@st.composite
def scored_tree(draw):
    shapes = draw(shapes_st)
    n = sum(a * b for a, b in shapes)
    # Few distinct values, so ties at the threshold are common.
    values = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    sparsity = draw(st.floats(0.0, 0.999))
    return _tree(shapes, values), sparsity


# 5 examples: each new shape compiles the top-k's bisection (27 s for 15 on 2 cores); the
# exact-order tests below compare every k against a stable sort.
@settings(max_examples=5, deadline=None)
@given(scored_tree())
def test_global_topk_is_exact_and_keeps_the_highest(case):
    scores, sparsity = case
    prunable = M.prunable_tree(scores)
    masks = M.global_topk(scores, sparsity, prunable)
    flat_s = np.concatenate([np.ravel(v["kernel"]) for v in scores.values()])
    flat_m = np.concatenate([np.ravel(v["kernel"]) for v in masks.values()])
    n = flat_s.size
    assert set(np.unique(flat_m)) <= {0.0, 1.0}
    assert flat_m.sum() == n - round(sparsity * n)
    if 0 < flat_m.sum() < n:
        assert flat_s[flat_m == 1].min() >= flat_s[flat_m == 0].max()
        # Ties at the threshold: the kept ones come before the pruned ones in flattening order.
        tie = flat_s[flat_m == 1].min()
        kept_tied = np.flatnonzero((flat_s == tie) & (flat_m == 1))
        pruned_tied = np.flatnonzero((flat_s == tie) & (flat_m == 0))
        if len(kept_tied) and len(pruned_tied):
            assert kept_tied.max() < pruned_tied.min()
    for v in masks.values():  # biases are never pruned
        np.testing.assert_array_equal(v["bias"], 1.0)


@settings(max_examples=5, deadline=None)
@given(scored_tree())
def test_layerwise_topk_is_exact_per_layer(case):
    scores, sparsity = case
    masks = M.layerwise_topk(scores, sparsity, M.prunable_tree(scores))
    for name, v in masks.items():
        n = v["kernel"].size
        assert int(v["kernel"].sum()) == n - round(sparsity * n), name
        s, m = np.ravel(scores[name]["kernel"]), np.ravel(v["kernel"])
        if 0 < m.sum() < n:
            assert s[m == 1].min() >= s[m == 0].max()


def test_report_counts_and_matches_hand_computation():
    masks = {
        "a": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]]), "bias": jnp.ones(2)},
        "b": {"kernel": jnp.array([[1.0, 1.0, 1.0]])},
    }
    report = M.sparsity_report(masks, M.prunable_tree(masks))
    assert (report["total"], report["kept"]) == (7, 4)
    assert report["sparsity"] == pytest.approx(3 / 7)
    assert report["layers"]["a/kernel"] == {
        "total": 4,
        "kept": 1,
        "sparsity": 0.75,
        "density": 0.25,
    }
    assert M.empty_layers(masks, M.prunable_tree(masks)) == []
    masks["b"]["kernel"] = jnp.zeros((1, 3))
    assert M.empty_layers(masks, M.prunable_tree(masks)) == ["b/kernel"]


def test_jit_with_traced_sparsity_matches_eager_and_compiles_once():
    scores = _tree([(4, 5), (5, 3)], np.random.default_rng(0).normal(size=35))
    prunable = M.prunable_tree(scores)
    traces = []

    def select(s, sparsity):
        traces.append(1)
        return M.global_topk(s, sparsity, prunable)

    jitted = jax.jit(select)
    for sparsity in (0.1, 0.5, 0.9):
        got = jitted(scores, sparsity)
        want = M.global_topk(scores, sparsity, prunable)
        jax.tree.map(np.testing.assert_array_equal, got, want)
    assert len(traces) == 1


def test_vmap_over_sparsities():
    scores = _tree([(6, 6)], np.arange(36.0))
    prunable = M.prunable_tree(scores)
    masks = jax.vmap(functools.partial(M.global_topk, prunable=prunable), in_axes=(None, 0))(
        scores, jnp.array([0.0, 0.5, 0.75])
    )
    np.testing.assert_array_equal(masks["layer0"]["kernel"].sum(axis=(1, 2)), [36, 18, 9])


def test_nan_scores_rank_last_and_negative_zero_ties_with_zero():
    scores = {"l": {"kernel": jnp.array([[jnp.nan, 1.0, -0.0, 0.0]])}}
    masks = M.global_topk(scores, 0.5, M.prunable_tree(scores))
    np.testing.assert_array_equal(masks["l"]["kernel"], [[0, 1, 1, 0]])


def _reference_keep(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep k: highest first, NaN lowest, -0.0 == 0.0, ties to the earlier index."""
    s = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    order = np.argsort(-s, kind="stable")
    keep = np.zeros(s.size, bool)
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_keep_top_matches_a_stable_sort_for_every_float_kind(dtype):
    # Negative, tied, infinite, NaN and signed-zero scores, every k from 0 to n: the bisection
    # over integer keys must select what a stable sort selects.
    rng = np.random.default_rng(1)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 3.0]
    values = np.concatenate([rng.normal(size=40) * 10.0 ** rng.integers(-3, 4, 40), special])
    values = np.concatenate([values, values[:15]])  # more ties
    rng.shuffle(values)
    with jax.enable_x64(dtype == "float64"):
        x = jnp.asarray(values, dtype)
        stored = np.asarray(x.astype(jnp.float64) if dtype == "float64" else x.astype(jnp.float32))
        every_k = np.arange(values.size + 1)
        got = np.asarray(jax.vmap(M._keep_top, in_axes=(None, 0))(x, every_k))
        want = np.stack([_reference_keep(stored, k) for k in every_k])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["int32", "int8", "bool"])
def test_keep_top_on_integer_scores_matches_a_stable_sort(dtype):
    values = np.random.default_rng(2).integers(-(2**31), 2**31 - 1, 30, dtype=np.int64)
    values[::4] = -5  # ties
    values[1], values[2], values[3] = 2**31 - 1, 2**31 - 1, -(2**31)  # the type's extremes
    x = jnp.asarray(values.astype(dtype))
    every_k = np.arange(values.size + 1)
    got = np.asarray(jax.vmap(M._keep_top, in_axes=(None, 0))(x, every_k))
    want = np.stack([_reference_keep(np.asarray(x).astype(np.float64), k) for k in every_k])
    np.testing.assert_array_equal(got, want)


def test_keep_top_on_a_million_scores_matches_the_sort():
    s = jax.random.normal(jax.random.key(3), (1_000_003,)) ** 3
    for k in (1, 4_321, 500_000, 999_999):
        got = np.asarray(M._keep_top(s, k))
        assert got.sum() == k
        assert np.asarray(s)[got].min() >= np.sort(np.asarray(s))[-k]


def test_bad_sparsity_and_scope_and_empty_prunable_set():
    scores = _tree([(2, 2)], np.arange(4.0))
    with pytest.raises(JPanningError, match="outside"):
        M.global_topk(scores, 1.0, M.prunable_tree(scores))
    with pytest.raises(JPanningError, match="unknown mask scope 'per-layer'"):
        M.topk(scores, 0.5, M.prunable_tree(scores), scope="per-layer")
    with pytest.raises(JPanningError, match="no prunable"):
        M.global_topk({"b": jnp.ones(3)}, 0.5, {"b": False})


def test_filter_selects_conv_and_dense_kernels_only():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
        "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
        "dense": {"kernel": jnp.ones((4, 2))},
        "odd": {"kernel": jnp.ones(3)},
    }
    assert M.prunable_tree(params) == {
        "conv": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
        "dense": {"kernel": True},
        "odd": {"kernel": False},
    }


def test_filter_and_additive_leaves_follow_every_library_names():
    from flax import nnx

    haiku = {
        "conv2_d": {"w": jnp.ones((3, 3, 1, 4)), "b": jnp.ones(4)},
        "layer_norm": {"scale": jnp.ones(4), "offset": jnp.ones(4)},
        "embed": {"embeddings": jnp.ones((5, 4))},
    }
    assert M.prunable_tree(haiku) == {
        "conv2_d": {"w": True, "b": False},
        "layer_norm": {"scale": False, "offset": False},
        "embed": {"embeddings": False},
    }
    assert M.additive_tree(haiku) == {
        "conv2_d": {"w": False, "b": True},
        "layer_norm": {"scale": False, "offset": True},
        "embed": {"embeddings": False},
    }
    # Equinox: attribute paths, weight [out, in, kh, kw], conv bias [out, 1, 1].
    equinox = [{"weight": jnp.ones((4, 1, 3, 3)), "bias": jnp.ones((4, 1, 1))}]
    assert M.prunable_tree(equinox) == [{"weight": True, "bias": False}]
    assert M.additive_tree(equinox) == [{"weight": False, "bias": True}]
    # Flax NNX state: every array sits under `.value`.
    _, state = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    assert [M.path_str(p) for p, _ in flat] == ["bias/value", "kernel/value"]
    assert [M.leaf_name(p) for p, _ in flat] == ["bias", "kernel"]
    assert jax.tree.leaves(M.prunable_tree(state)) == [False, True]
    assert jax.tree.leaves(M.additive_tree(state)) == [True, False]
    # No known name anywhere: every leaf of rank >= 2 is prunable, rank-1 leaves additive.
    plain = [(jnp.ones((3, 4)), jnp.ones(4)), (jnp.ones((4, 2)), jnp.ones(2)), jnp.ones(())]
    assert M.prunable_tree(plain) == [(True, False), (True, False), False]
    assert M.additive_tree(plain) == [(False, True), (False, True), False]
    # A known name anywhere: names decide, an unnamed matrix stays unpruned.
    mixed = {"dense": {"kernel": jnp.ones((3, 4))}, "table": jnp.ones((5, 3))}
    assert M.prunable_tree(mixed) == {"dense": {"kernel": True}, "table": False}


def test_masked_optimizer_keeps_pruned_weights_and_momentum_exactly_zero():
    rng = np.random.default_rng(1)
    params = {
        "l": {
            "kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
        }
    }
    masks = M.global_topk(jax.tree.map(jnp.abs, params), 0.6, M.prunable_tree(params))
    inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    tx = M.masked_optimizer(inner, masks)
    plain = inner
    p, q = M.apply(params, masks), M.apply(params, masks)
    s, t = tx.init(p), plain.init(q)
    for step in range(5):
        # Gradients that are nonzero everywhere, pruned positions included.
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
        u, s = tx.update(grads, s, p)
        p = optax.apply_updates(p, u)
        v, t = plain.update(M.apply(grads, masks), t, q)
        q = optax.apply_updates(q, v)
    pruned = masks["l"]["kernel"] == 0
    assert np.all(np.asarray(p["l"]["kernel"])[pruned] == 0.0)
    momentum = s.inner_state[1][0].trace["l"]["kernel"]
    assert np.all(np.asarray(momentum)[pruned] == 0.0)
    # Kept weights follow plain SGD exactly (masking is elementwise and touches nothing else).
    np.testing.assert_array_equal(p["l"]["kernel"], q["l"]["kernel"])
    np.testing.assert_array_equal(p["l"]["bias"], q["l"]["bias"])
    assert not np.all(np.asarray(p["l"]["bias"]) == np.asarray(params["l"]["bias"]))
