"""Scorers on every JAX model library's params: Flax linen, Flax NNX, Haiku, Equinox, plain.

Each style builds the same network (dense 3 -> 5, affine norm, ReLU, dense 5 -> 4, ReLU,
dense 4 -> 3) with non-zero biases and norm shifts, by hand where the library is not
installed: Haiku's ``{'linear': {'w', 'b'}}`` dicts, Equinox's modules (dataclass pytrees
with ``weight`` [out, in] and ``bias`` attributes), a plain list of ``(W, b)`` pairs. The
scorers, with their default prunable filter and SynFlow's default rescaling, are checked
against the literal computation on the flattened float64 parameter vector.
"""

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from jpanning import masks as M
from jpanning import scores as S
from jpanning.errors import JPanningError

SIZES = (3, 5, 4, 3)


def _draws(seed=0):
    """Weights [in, out], biases, and the norm's scale and shift, all non-zero."""
    rng = np.random.default_rng(seed)
    w = [rng.normal(size=(a, b)) / np.sqrt(a) for a, b in itertools.pairwise(SIZES)]
    b = [rng.normal(size=n) * 0.3 for n in SIZES[1:]]
    scale, shift = 1 + 0.2 * rng.normal(size=SIZES[1]), 0.3 * rng.normal(size=SIZES[1])
    return w, b, scale, shift


# ----------------------------------------------------------------------------------------------
# The five styles: (params, apply_fn, the prunable leaves by hand).


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=True, epsilon=0.0)(nn.Dense(SIZES[1])(x))
        x = nn.relu(nn.Dense(SIZES[2])(nn.relu(x)))
        return nn.Dense(SIZES[3])(x)


def linen_style():
    model = LinenMLP()
    variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    w, b, scale, shift = _draws()
    params = {
        "Dense_0": {"kernel": w[0], "bias": b[0]},
        "BatchNorm_0": {"scale": scale, "bias": shift},
        "Dense_1": {"kernel": w[1], "bias": b[1]},
        "Dense_2": {"kernel": w[2], "bias": b[2]},
    }
    assert jax.tree.structure(params) == jax.tree.structure(variables["params"])
    stats = variables["batch_stats"]  # mean 0, var 1: the norm is the affine map
    apply = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x)
    return params, apply, jax.tree.map(lambda x: x.ndim == 2, params)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(SIZES[0], SIZES[1], rngs=rngs)
        self.norm = nnx.BatchNorm(SIZES[1], use_running_average=True, epsilon=0.0, rngs=rngs)
        self.dense2 = nnx.Linear(SIZES[1], SIZES[2], rngs=rngs)
        self.dense3 = nnx.Linear(SIZES[2], SIZES[3], rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.dense1(x)))
        return self.dense3(nnx.relu(self.dense2(x)))


def _nnx_model():
    model = NNXMLP(nnx.Rngs(0))
    w, b, scale, shift = _draws()
    for layer, k, v in ((model.dense1, w[0], b[0]), (model.dense2, w[1], b[1])):
        layer.kernel.value, layer.bias.value = jnp.asarray(k), jnp.asarray(v)
    model.dense3.kernel.value, model.dense3.bias.value = jnp.asarray(w[2]), jnp.asarray(b[2])
    model.norm.scale.value, model.norm.bias.value = jnp.asarray(scale), jnp.asarray(shift)
    return model


def nnx_full_state_style():
    """``nnx.split(model)``: one State with the params and the BatchNorm statistics."""
    graphdef, state = nnx.split(_nnx_model())
    apply = lambda s, x: nnx.merge(graphdef, s)(x)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    prunable = treedef.unflatten([M.leaf_name(p) == "kernel" for p, _ in flat])
    return state, apply, prunable


def nnx_params_style():
    """``nnx.split(model, nnx.Param, ...)``: the params alone, the statistics closed over."""
    graphdef, params, rest = nnx.split(_nnx_model(), nnx.Param, ...)
    apply = lambda p, x: nnx.merge(graphdef, p, rest)(x)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    prunable = treedef.unflatten([M.leaf_name(p) == "kernel" for p, _ in flat])
    return params, apply, prunable


def haiku_style(bias_name="b"):
    """What ``hk.transform`` gives: ``{'module/~/name': {'w', 'b'}}``, norms ``scale/offset``."""
    w, b, scale, shift = _draws()
    params = {
        "mlp/~/linear_0": {"w": w[0], bias_name: b[0]},
        "mlp/~/batch_norm": {"scale": scale, "offset": shift},
        "mlp/~/linear_1": {"w": w[1], bias_name: b[1]},
        "mlp/~/linear_2": {"w": w[2], bias_name: b[2]},
    }

    def apply(p, x, act=jax.nn.relu):
        h = x @ p["mlp/~/linear_0"]["w"] + p["mlp/~/linear_0"][bias_name]
        h = act(h * p["mlp/~/batch_norm"]["scale"] + p["mlp/~/batch_norm"]["offset"])
        h = act(h @ p["mlp/~/linear_1"]["w"] + p["mlp/~/linear_1"][bias_name])
        return h @ p["mlp/~/linear_2"]["w"] + p["mlp/~/linear_2"][bias_name]

    return params, apply, jax.tree.map(lambda x: x.ndim == 2, params)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weight", "bias"], meta_fields=[])
@dataclasses.dataclass
class Linear:
    """Equinox's ``eqx.nn.Linear``: ``weight`` [out, in], ``bias`` [out], unbatched call."""

    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return self.weight @ x + self.bias


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weight", "bias"], meta_fields=[])
@dataclasses.dataclass
class Affine:
    """Equinox's norms' elementwise affine: ``weight`` and ``bias`` [features]."""

    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return x * self.weight + self.bias


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers", "norm"], meta_fields=[])
@dataclasses.dataclass
class MLP:
    layers: list
    norm: Affine

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.layers[0](x)))
        return self.layers[2](jax.nn.relu(self.layers[1](x)))


def equinox_style():
    w, b, scale, shift = _draws()
    model = MLP([Linear(k.T, v) for k, v in zip(w, b)], Affine(scale, shift))
    apply = lambda m, x: jax.vmap(m)(x)  # Equinox modules act on one example
    prunable = MLP([Linear(True, False) for _ in w], Affine(False, False))
    return model, apply, prunable


def plain_style():
    """A list of ``(W, b)`` pairs and a hand-written forward pass: no names at all."""
    w, b, _, _ = _draws()
    params = [(k, v) for k, v in zip(w, b)]

    def apply(p, x):
        for k, v in p[:-1]:
            x = jax.nn.relu(x @ k + v)
        return x @ p[-1][0] + p[-1][1]

    return params, apply, [(True, False)] * len(w)


STYLES = {
    "linen": linen_style,
    "nnx_split": nnx_full_state_style,
    "nnx_params": nnx_params_style,
    "haiku": haiku_style,
    "equinox": equinox_style,
    "plain": plain_style,
}


# ----------------------------------------------------------------------------------------------
# The literal computation on the flat parameter vector.


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _problem(style, dtype):
    params, apply, prunable = STYLES[style]()
    params = _cast(params, dtype)
    rng = np.random.default_rng(1)
    leaves, treedef = jax.tree.flatten(params)
    flags = treedef.flatten_up_to(prunable)
    masks = treedef.unflatten(
        [
            jnp.asarray(rng.random(x.shape) < 0.7, dtype) if f else jnp.ones_like(x)
            for x, f in zip(leaves, flags)
        ]
    )
    x = jnp.asarray(rng.normal(size=(6, 3)), dtype)
    y = jnp.arange(6) % 3
    return params, apply, prunable, masks, (x, y)


def literal_scores(apply, params, masks, batch, prunable):
    """SNIP ``|θ ⊙ g|``, GraSP ``θ ⊙ H g_P``, SynFlow ``|θ ⊙ ∇R(|θ ⊙ m|)|``, magnitude."""
    theta, unravel = ravel_pytree(params)
    m, _ = ravel_pytree(masks)
    p, _ = ravel_pytree(
        jax.tree.map(lambda x, f: jnp.full(jnp.shape(x), float(f), x.dtype), params, prunable)
    )
    loss = lambda w: S.cross_entropy(apply(unravel(w), batch[0]), batch[1])
    w = theta * m
    g = jax.grad(loss)(w)
    flow = lambda v: jnp.sum(apply(unravel(v), jnp.ones((1, 3), theta.dtype)))
    return {
        "snip": jnp.abs(theta * g),
        "grasp": theta * (jax.hessian(loss)(w) @ (g * p)),
        "synflow": jnp.abs(theta * jax.grad(flow)(jnp.abs(w))),
        "magnitude": jnp.abs(theta),
    }


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _scored(apply, params, masks, batch, **synflow_options):
    return {
        "snip": _flat(S.snip(apply, params, batch, masks=masks)),
        "grasp": _flat(S.grasp(apply, params, batch, masks=masks)),
        "synflow": _flat(S.synflow(apply, params, batch, masks=masks, **synflow_options)),
        "magnitude": _flat(S.magnitude(apply, params, batch, masks=masks)),
    }


def assert_positive_multiple(got, expected, rtol):
    """``got = c · expected`` for one constant c > 0 (what top-k ignores)."""
    expected = np.asarray(expected)
    c = got.sum() / expected.sum()
    assert c > 0
    np.testing.assert_allclose(got, c * expected, rtol=rtol, atol=rtol * np.abs(got).max())


@pytest.mark.parametrize("style", list(STYLES))
def test_default_filter_finds_every_library_weights(style):
    params, _, prunable = STYLES[style]()
    assert jax.tree.leaves(M.prunable_tree(params)) == jax.tree.leaves(prunable)


# linen in the default suite; each other library's float64 compile takes 15-22 s on 2 cores
@pytest.mark.slow  # 43 s for linen alone; the float32 ranking test below keeps haiku's case
@pytest.mark.parametrize("style", list(STYLES))
def test_scorers_equal_the_literal_computation_in_float64(style):
    with jax.enable_x64(True):
        params, apply, prunable, masks, batch = _problem(style, jnp.float64)
        expected = literal_scores(apply, params, masks, batch, prunable)
        got = _scored(apply, params, masks, batch)  # default filter and rescaling
        for name in ("snip", "grasp", "magnitude"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-13)
        assert_positive_multiple(got["synflow"], expected["synflow"], rtol=1e-10)


@pytest.mark.slow  # 7-30 s each: the first pays the float64 literal's compilation
@pytest.mark.parametrize("style", list(STYLES))
def test_float32_synflow_ranks_like_the_float64_literal(style):
    with jax.enable_x64(True):
        params, apply, prunable, masks, batch = _problem(style, jnp.float64)
        expected = literal_scores(apply, params, masks, batch, prunable)["synflow"]
    params, apply, prunable, masks, batch = _problem(style, jnp.float32)
    for rescale in S.RESCALINGS:
        score = jax.jit(functools.partial(S.synflow, apply, rescale=rescale))
        got = _flat(score(params, batch, masks=masks))
        assert_positive_multiple(got.astype(np.float64), expected, rtol=2e-5)


# ----------------------------------------------------------------------------------------------
# SynFlow's rescalings: a broken assumption is detected, never a silently different ranking.


def _synflow_cases():
    """Networks on which the default 'io' was silently wrong before its check (now 'io'
    holds on the first, falls back on the others); 'layer' fails on all (non-zero biases)."""
    named_b = haiku_style("b")  # 'io' scaled only leaves named 'bias': up to 4x off before
    unknown = haiku_style("shift")  # a bias name no library uses: not scaled with the input
    params, apply, prunable = haiku_style("b")
    tanh = (params, functools.partial(apply, act=jnp.tanh), prunable)  # not homogeneous
    return {"named_b": named_b, "unknown_bias_name": unknown, "tanh": tanh}


@pytest.mark.slow  # 15-30 s each: the first pays the float64 literal scores' compilation
@pytest.mark.parametrize("case", ["named_b", "unknown_bias_name", "tanh"])
# "io" in the default suite, "layer" among the slow tests (each case compiles for 10-22 s)
@pytest.mark.parametrize("rescale", ["io", pytest.param("layer", marks=pytest.mark.slow)])
def test_a_failed_rescaling_assumption_falls_back_to_the_exact_scores(case, rescale):
    params, apply, prunable = _synflow_cases()[case]
    with jax.enable_x64(True):
        params64 = _cast(params, jnp.float64)
        masks = M.ones_like(params64)
        batch = (jnp.ones((2, 3), jnp.float64), jnp.zeros(2, jnp.int32))
        expected = literal_scores(apply, params64, masks, batch, prunable)["synflow"]
    params32 = _cast(params, jnp.float32)
    batch = (jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))
    score = jax.jit(functools.partial(S.synflow, apply, rescale=rescale))
    got = _flat(score(params32, batch))
    assert_positive_multiple(got.astype(np.float64), expected, rtol=2e-5)
    # Also under vmap, where the check's lax.cond becomes a select per mask.
    stacked = jax.tree.map(lambda x: jnp.stack([jnp.ones_like(x)] * 2), params32)
    many = jax.vmap(lambda m: score(params32, batch, masks=m))(stacked)
    np.testing.assert_array_equal(_flat(jax.tree.map(lambda x: x[1], many)), got)


@pytest.mark.slow  # 7.5 s
def test_io_stays_exact_and_finite_on_a_deep_residual_net_with_haiku_names():
    """Haiku's ``b`` biases scale with the input: the check holds, no fallback to the literal
    float32 network, which overflows here (R ~ 1e42)."""
    rng = np.random.default_rng(3)
    width, blocks = 8, 30
    params = {
        f"block_{k}": {
            "w": jnp.asarray(rng.normal(size=(width, width)) * 4, jnp.float32),
            "b": jnp.asarray(rng.random(width), jnp.float32),
        }
        for k in range(blocks)
    }

    def apply(p, x):
        for k in range(blocks):
            x = x + jax.nn.relu(x @ p[f"block_{k}"]["w"] + p[f"block_{k}"]["b"])
        return x

    batch = (jnp.ones((1, width)), jnp.zeros(1, jnp.int32))
    literal = _flat(S.synflow(apply, params, batch, rescale="none"))
    assert not np.all(np.isfinite(literal))
    got = _flat(jax.jit(functools.partial(S.synflow, apply))(params, batch))
    with jax.enable_x64(True):
        exact = _flat(S.synflow(apply, _cast(params, jnp.float64), batch, rescale="none"))
    # Weights only: the biases' scores span 1e0..1e42, beyond any one float32 factor.
    weights = _flat(jax.tree.map(lambda x: jnp.full(x.shape, x.ndim == 2), params))
    got, exact = got[weights], exact[weights]
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    log_ratio = np.log(got) - np.log(exact)
    np.testing.assert_allclose(log_ratio, np.median(log_ratio), atol=1e-4)


def test_non_float_leaves_and_empty_filters_raise_one_line_errors():
    params, apply, _ = haiku_style()
    with_count = dict(params, rng={"count": jnp.zeros((), jnp.uint32)})
    batch = (jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))
    with pytest.raises(JPanningError, match=r"rng/count has dtype uint32.*nnx.Param"):
        S.snip(lambda p, x: apply(params, x), with_count, batch)
    with pytest.raises(JPanningError, match="kernel/w/weight or pass prunable="):
        S.synflow(lambda p, x: x * p["scale"], {"scale": jnp.ones(3)}, batch)
