"""Scorers against independent computations: finite differences, hand-computed flows, paths."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings, strategies as st
from jax.flatten_util import ravel_pytree

from jpanning import masks as M
from jpanning import scores as S
from jpanning.errors import JPanningError

# ----------------------------------------------------------------------------------------------
# Tiny networks.


def mlp_apply(params, x):
    """3 -> 4 (tanh) -> 3, with biases: smooth, so finite differences are accurate."""
    h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]


def mlp_problem(dtype=jnp.float32, batch_size=6):
    rng = np.random.default_rng(0)
    params = {
        "dense1": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4) * 0.1},
        "dense2": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3) * 0.1},
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    masks = M.ones_like(params)
    masks["dense1"]["kernel"] = jnp.asarray([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1]], dtype)
    masks["dense2"]["kernel"] = jnp.asarray([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 1]], dtype)
    x = jnp.asarray(rng.normal(size=(batch_size, 3)), dtype)
    y = jnp.asarray(np.arange(batch_size) % 3, jnp.int32)
    return params, masks, (x, y)


class TinyFlaxCNN(nn.Module):
    """Conv-BN-ReLU, max-pool, conv with bias, global pool, dense: defined only here."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


@functools.cache
def flax_problem(batch_size=6):
    model = TinyFlaxCNN()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(batch_size, 6, 6, 2)), jnp.float32)
    y = jnp.arange(batch_size) % 3
    variables = jax.jit(model.init)(jax.random.key(0), x)
    stats = variables["batch_stats"]

    def apply_train(p, inputs):
        return model.apply(
            {"params": p, "batch_stats": stats}, inputs, train=True, mutable=["batch_stats"]
        )[0]

    def apply_eval(p, inputs):
        return model.apply({"params": p, "batch_stats": stats}, inputs)

    return variables["params"], (x, y), apply_train, apply_eval


def _mask_like(params, seed, density=0.6):
    """A random 0/1 mask on prunable leaves, ones elsewhere."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    flags = treedef.flatten_up_to(M.prunable_tree(params))
    return treedef.unflatten(
        [
            jnp.asarray(rng.random(x.shape) < density, x.dtype) if f else jnp.ones_like(x)
            for x, f in zip(leaves, flags)
        ]
    )


def assert_trees_close(actual, expected, rtol=1e-6, atol=1e-6):
    chex.assert_trees_all_equal_structs(actual, expected)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), actual, expected
    )


# ----------------------------------------------------------------------------------------------
# Finite-difference references (float64, no autodiff).


def fd_gradient(f, v, h=1e-5):
    eye = jnp.eye(v.size, dtype=v.dtype)
    return (jax.vmap(f)(v + h * eye) - jax.vmap(f)(v - h * eye)) / (2 * h)


def fd_hessian(f, v, h=1e-4):
    n = v.size
    ei = jnp.repeat(jnp.eye(n, dtype=v.dtype), n, axis=0) * h  # row i*n+j: e_i
    ej = jnp.tile(jnp.eye(n, dtype=v.dtype), (n, 1)) * h  # row i*n+j: e_j
    fv = jax.vmap(f)
    hess = (fv(v + ei + ej) - fv(v + ei - ej) - fv(v - ei + ej) + fv(v - ei - ej)) / (4 * h * h)
    return hess.reshape(n, n)


def masked_loss_fns(params, masks, batch):
    """Flat-vector losses: of the mask (θ fixed) and of the weights w."""
    theta, unravel = ravel_pytree(params)
    m0, _ = ravel_pytree(masks)
    loss_w = lambda w: S.cross_entropy(mlp_apply(unravel(w), batch[0]), batch[1])
    return theta, m0, unravel, loss_w, (lambda m: loss_w(theta * m))


# ----------------------------------------------------------------------------------------------
# Data scorers against finite differences.


class DataScorersTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_snip_is_the_mask_derivative_of_the_loss(self):
        with jax.enable_x64(True):
            params, masks, batch = mlp_problem(jnp.float64)
            theta, m0, unravel, _, loss_m = masked_loss_fns(params, masks, batch)
            expected = unravel(jnp.abs(fd_gradient(loss_m, m0)))
            got = self.variant(functools.partial(S.snip, mlp_apply))(params, batch, masks=masks)
            assert_trees_close(got, expected, rtol=1e-7, atol=1e-9)
            # A pruned weight is scored too: what restoring it would be worth.
            self.assertEqual(float(masks["dense1"]["kernel"][0, 1]), 0.0)
            self.assertGreater(float(got["dense1"]["kernel"][0, 1]), 1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grasp_is_theta_times_hessian_gradient_product(self):
        with jax.enable_x64(True):
            params, masks, batch = mlp_problem(jnp.float64)
            theta, m0, unravel, loss_w, _ = masked_loss_fns(params, masks, batch)
            w = theta * m0
            prunable, _ = ravel_pytree(
                jax.tree.map(
                    lambda x, f: jnp.full(x.shape, float(f)), params, M.prunable_tree(params)
                )
            )
            g_p = fd_gradient(loss_w, w) * prunable  # GraSP's g: kernels only
            expected = unravel(theta * (fd_hessian(loss_w, w) @ g_p))
            got = self.variant(functools.partial(S.grasp, mlp_apply))(params, batch, masks=masks)
            assert_trees_close(got, expected, rtol=1e-5, atol=1e-8)
            # grad_norm = |∂‖g_P‖²/∂m| = 2 |θ ⊙ H g_P|.
            norm_scores = self.variant(functools.partial(S.grad_norm, mlp_apply))(
                params, batch, masks=masks
            )
            assert_trees_close(
                norm_scores, jax.tree.map(lambda x: 2 * jnp.abs(x), expected), rtol=1e-5, atol=1e-8
            )
            # Signed: GraSP keeps the top of θ⊙Hg (it removes the top of -θ⊙Hg).
            flat, _ = ravel_pytree(got)
            self.assertTrue(bool(jnp.any(flat > 1e-4)) and bool(jnp.any(flat < -1e-4)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_and_grad_norm_of_the_masked_network(self):
        with jax.enable_x64(True):
            params, masks, batch = mlp_problem(jnp.float64)
            theta, m0, unravel, loss_w, _ = masked_loss_fns(params, masks, batch)
            loss_theta = lambda t: loss_w(t * m0)  # the masked network's loss in θ
            g = unravel(fd_gradient(loss_theta, theta))
            expected = jnp.sum(g["dense1"]["kernel"] ** 2) + jnp.sum(g["dense2"]["kernel"] ** 2)
            loss, norm_sq = self.variant(functools.partial(S.loss_and_grad_norm, mlp_apply))(
                params, batch, masks
            )
            np.testing.assert_allclose(loss, loss_theta(theta), rtol=1e-12)
            np.testing.assert_allclose(norm_sq, expected, rtol=1e-7)
            self.assertAlmostEqual(float(norm_sq), 0.7814968, places=6)  # regression pin


# ----------------------------------------------------------------------------------------------
# SynFlow.

W1 = np.array([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, 0.0, -1.5], [1.2, 0.7, -0.4, 0.9]])
W2 = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0], [0.2, -0.6]])
M1 = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 0]], float)
M2 = np.array([[1, 1], [0, 1], [1, 0], [1, 1]], float)


def two_layer_apply(params, x):
    return nn.relu(x @ params["l1"]["kernel"]) @ params["l2"]["kernel"]


def _flat_scores(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _deep_chain(depth, width, std, seed=1):
    kernels = np.random.default_rng(seed).normal(scale=std, size=(depth, width, width))
    apply = lambda p, x: functools.reduce(
        lambda h, i: nn.relu(h @ p[f"l{i:02d}"]["kernel"]), range(depth), x
    )
    return apply, {
        f"l{i:02d}": {"kernel": jnp.asarray(kernels[i], jnp.float32)} for i in range(depth)
    }


def _deep_residual(blocks, width, seed=2):
    """h <- h + relu(h A_k + a_k) B_k: skip paths skip two kernels, branch paths cross them."""
    rng = np.random.default_rng(seed)
    apply = lambda p, x: functools.reduce(
        lambda h, k: (
            h
            + nn.relu(h @ p[f"b{k:02d}"]["a"]["kernel"] + p[f"b{k:02d}"]["a"]["bias"])
            @ p[f"b{k:02d}"]["b"]["kernel"]
        ),
        range(blocks),
        x,
    )
    return apply, {
        f"b{k:02d}": {
            "a": {
                "kernel": jnp.asarray(rng.normal(size=(width, width)), jnp.float32),
                "bias": jnp.asarray(rng.random(width), jnp.float32),
            },
            "b": {"kernel": jnp.asarray(rng.normal(size=(width, width)), jnp.float32)},
        }
        for k in range(blocks)
    }


def _exact_float64_synflow(apply, params, batch):
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        return _flat_scores(
            jax.jit(functools.partial(S.synflow, apply, rescale="none"))(params64, batch)
        )


def _all_rescalings(apply, params, batch):
    every = jax.jit(lambda p, b: {r: S.synflow(apply, p, b, rescale=r) for r in S.RESCALINGS})
    return {r: _flat_scores(x) for r, x in every(params, batch).items()}


class SynflowTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("none", "layer", "io")
    def test_two_layer_network_by_hand(self, rescale):
        params = {
            "l1": {"kernel": jnp.asarray(W1, jnp.float32)},
            "l2": {"kernel": jnp.asarray(W2, jnp.float32)},
        }
        masks = {
            "l1": {"kernel": jnp.asarray(M1, jnp.float32)},
            "l2": {"kernel": jnp.asarray(M2, jnp.float32)},
        }
        batch = (jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32))  # values never read
        # x = 1, h_j = Σ_i |W1 ⊙ M1|_ij, R = Σ_jk h_j |W2 ⊙ M2|_jk; score = |θ| ⊙ ∂R/∂w.
        a1, a2 = np.abs(W1), np.abs(W2)
        h = (a1 * M1).sum(0)
        expected1 = a1 * (a2 * M2).sum(1)[None, :]
        expected2 = a2 * h[:, None]
        r = float(h @ (a2 * M2).sum(1))
        # 'layer': both kernels divided by their mean gains c1, c2; 'io': input and output
        # cotangent scaled by R^(-1/2) (the probe is exact on a chain), so scores / R.
        factor = {"none": 1.0, "layer": (a1 * M1).sum() / 4 * (a2 * M2).sum() / 2, "io": r}[rescale]
        score = self.variant(functools.partial(S.synflow, two_layer_apply, rescale=rescale))
        got = score(params, batch, masks=masks)
        np.testing.assert_allclose(got["l1"]["kernel"], expected1 / factor, rtol=2e-6)
        np.testing.assert_allclose(got["l2"]["kernel"], expected2 / factor, rtol=2e-6)
        self.assertAlmostEqual(r, 4.505, places=12)  # 0.8*3 + 1.7*.25 + .4*1 + 1.6*.8
        self.assertGreater(float(got["l1"]["kernel"][0, 2]), 0.0)  # pruned, still scored

    @parameterized.parameters((1.0, "overflows"), (2e-4, "underflows"))
    def test_rescaling_keeps_deep_scores_finite_and_exactly_ranked(self, std, naive_fails):
        apply, params = _deep_chain(depth=24, width=64, std=std)  # gain ~51 (~0.01) per layer
        batch = (jnp.zeros((1, 64)), jnp.zeros(1, jnp.int32))
        got = _all_rescalings(apply, params, batch)
        if naive_fails == "overflows":
            self.assertFalse(np.all(np.isfinite(got["none"])))
        else:
            self.assertTrue(np.all(got["none"] == 0))  # every score lost to underflow
        exact = _exact_float64_synflow(apply, params, batch)
        self.assertGreater(abs(np.log10(exact).mean()), 38)  # out of float32's range
        for rescale in ("io", "layer"):  # both exact on a chain: one global factor
            safe = got[rescale]
            self.assertTrue(np.all(np.isfinite(safe)) and np.all(safe > 0))
            log_ratio = np.log(safe) - np.log(exact)
            np.testing.assert_allclose(log_ratio, np.median(log_ratio), atol=1e-4)
            np.testing.assert_array_equal(np.argsort(safe)[-50:], np.argsort(exact)[-50:])

    def test_io_rescaling_is_exact_with_skip_connections_and_biases(self):
        apply, params = _deep_residual(blocks=18, width=16)  # R ~ 1e40
        batch = (jnp.zeros((1, 16)), jnp.zeros(1, jnp.int32))
        exact = _exact_float64_synflow(apply, params, batch)
        # Kernel scores (biases' span 1e0..1e40, beyond any float32 factor; they are ignored).
        kernels = (
            _flat_scores(
                jax.tree.map(lambda x, f: jnp.full(x.shape, f), params, M.prunable_tree(params))
            )
            == 1
        )
        got = _all_rescalings(apply, params, batch)
        self.assertFalse(np.all(np.isfinite(got["none"])))
        log_ratio = np.log(got["io"][kernels]) - np.log(exact[kernels])
        np.testing.assert_allclose(log_ratio, np.median(log_ratio), atol=1e-4)
        # Per-layer normalisation would reweight branches against shortcuts: its Euler check
        # fails and 'layer' falls back to the literal network, beyond float32 here (R ~ 1e40),
        # exact in float64.
        self.assertFalse(np.all(np.isfinite(got["layer"])))
        with jax.enable_x64(True):
            params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
            layer64 = _flat_scores(S.synflow(apply, params64, batch, rescale="layer"))
        log_ratio = np.log(layer64[kernels]) - np.log(exact[kernels])
        np.testing.assert_allclose(log_ratio, np.median(log_ratio), atol=1e-9)

    def test_float64_dtype_option_needs_x64(self):
        params, _, batch = mlp_problem()
        with pytest.raises(JPanningError, match="enable_x64"):
            S.synflow(mlp_apply, params, batch, dtype=jnp.float64)
        with jax.enable_x64(True):
            got = S.synflow(mlp_apply, params, batch, dtype=jnp.float64, rescale="none")
        self.assertEqual(got["dense1"]["kernel"].dtype, jnp.float64)


# ----------------------------------------------------------------------------------------------
# Fused, chunked, vmapped, jitted, any model.


class FusedTest(chex.TestCase):
    @chex.variants(with_jit=True)
    def test_fused_equals_the_individual_scorers_on_flax_with_batchnorm(self):
        params, batch, apply_train, apply_eval = flax_problem()
        masks = _mask_like(params, 3)
        got = self.variant(functools.partial(S.fused, apply_train, synflow_apply_fn=apply_eval))(
            params, batch, masks=masks
        )
        # Every registered data scorer, looked up by name, on a Flax model defined only here.
        names = ("magnitude", "snip", "grasp", "grad_norm", "synflow")
        every = jax.jit(
            lambda p, b, m: {
                name: S.get_scorer(name)(
                    apply_eval if name == "synflow" else apply_train, p, b, masks=m
                )
                for name in names
            }
        )
        expected = every(params, batch, masks)
        for name, scores in expected.items():
            chex.assert_trees_all_equal_shapes(scores, params)
            chex.assert_tree_all_finite(scores)
            self.assertGreater(float(jnp.sum(jnp.abs(scores["Conv_0"]["kernel"]))), 0.0, name)
        assert_trees_close(got, {k: expected[k] for k in got}, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            expected["magnitude"]["Dense_0"]["kernel"], jnp.abs(params["Dense_0"]["kernel"])
        )

    def test_synflow_conservation_on_a_flax_chain(self):
        # SynFlow's conservation law: in a chain, each layer's scores sum to the same R
        # (kernels and BatchNorm scales; not biases, whose paths start inside the network).
        params, batch, _, apply_eval = flax_problem()
        flow = jax.jit(functools.partial(S.synflow, apply_eval))(params, batch)
        sums = [
            float(jnp.sum(x))
            for p, x in jax.tree_util.tree_flatten_with_path(flow)[0]
            if M.path_str(p).split("/")[-1] != "bias"
        ]
        self.assertLen(sums, 4)
        np.testing.assert_allclose(sums, sums[0], rtol=1e-5)

    @parameterized.parameters(2, 4)  # divides the batch of 6, leaves a remainder
    def test_chunked_equals_unchunked(self, chunk_size):
        params, masks, batch = mlp_problem()

        @jax.jit
        def both(p, b, m):
            return [
                (
                    S.fused(mlp_apply, p, b, masks=m, chunk_size=c),
                    S.loss_and_grad_norm(mlp_apply, p, b, m, chunk_size=c),
                )
                for c in (None, chunk_size)
            ]

        whole, chunked = both(params, batch, masks)
        assert_trees_close(chunked, whole, rtol=1e-5, atol=1e-6)
        self.assertGreater(float(whole[1][1]), 0.1)

    def test_second_call_does_not_retrace(self):
        params, masks, batch = mlp_problem()
        traces = []

        def counting_apply(p, x):
            traces.append(1)
            return mlp_apply(p, x)

        for scorer in (S.snip, S.grasp, S.synflow, S.fused):
            score = jax.jit(functools.partial(scorer, counting_apply))
            jax.block_until_ready(score(params, batch, masks=masks))
            first = len(traces)
            self.assertGreater(first, 0)
            other_masks = _mask_like(params, 7)
            jax.block_until_ready(score(params, batch, masks=other_masks))
            self.assertEqual(len(traces), first, scorer.__name__)
            traces.clear()

    @parameterized.parameters("snip", "grasp", "grad_norm", "synflow")
    def test_vmap_over_a_batch_of_masks(self, name):
        params, _, batch = mlp_problem()
        all_masks = [_mask_like(params, i) for i in range(3)]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *all_masks)
        scorer = S.get_scorer(name)
        got = jax.jit(jax.vmap(lambda m: scorer(mlp_apply, params, batch, masks=m)))(stacked)
        single = jax.jit(lambda m: scorer(mlp_apply, params, batch, masks=m))
        for i, m in enumerate(all_masks):
            assert_trees_close(jax.tree.map(lambda x: x[i], got), single(m), rtol=1e-5, atol=1e-7)

    def test_vmap_over_masks_through_the_fused_chunked_scorer(self):
        params, _, batch = mlp_problem()
        all_masks = [_mask_like(params, i) for i in range(2)]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *all_masks)
        got = jax.jit(jax.vmap(lambda m: S.fused(mlp_apply, params, batch, masks=m, chunk_size=4)))(
            stacked
        )
        unchunked = jax.jit(functools.partial(S.fused, mlp_apply))
        for i, m in enumerate(all_masks):
            assert_trees_close(
                jax.tree.map(lambda x: x[i], got),
                unchunked(params, batch, masks=m),
                rtol=1e-5,
                atol=1e-6,
            )


# ----------------------------------------------------------------------------------------------
# Random scores, registry and errors.


def test_random_scores_are_uniform_keyed_and_vmappable():
    params, _, _ = mlp_problem()
    draw = lambda k: S.random(None, params, key=k)
    a, b, c, many = jax.jit(lambda k0, k1, ks: (draw(k0), draw(k0), draw(k1), jax.vmap(draw)(ks)))(
        jax.random.key(0), jax.random.key(1), jax.random.split(jax.random.key(0), 4)
    )
    assert_trees_close(a, b, rtol=0, atol=0)
    flat_a, flat_c = ravel_pytree(a)[0], ravel_pytree(c)[0]
    assert np.all((flat_a >= 0) & (flat_a < 1)) and not np.allclose(flat_a, flat_c)
    assert many["dense1"]["kernel"].shape == (4, 3, 4)


def test_registry_accepts_custom_scorers_and_rejects_unknown_names():
    @S.register_scorer("negative_magnitude")
    def negative_magnitude(apply_fn, params, batch=None, **unused):
        return jax.tree.map(lambda x: -jnp.abs(x), params)

    try:
        params, _, _ = mlp_problem()
        assert S.get_scorer("negative_magnitude") is negative_magnitude
        got = S.get_scorer("negative_magnitude")(None, params)
        np.testing.assert_allclose(got["dense1"]["kernel"], -jnp.abs(params["dense1"]["kernel"]))
    finally:
        S.SCORERS.pop("negative_magnitude")
    with pytest.raises(
        JPanningError,
        match="unknown scorer 'snipp'; choose from: magnitude, "
        "random, snip, grasp, grad_norm, synflow",
    ):
        S.get_scorer("snipp")


def test_bad_inputs_raise_one_line_errors():
    params, masks, batch = mlp_problem()
    with pytest.raises(JPanningError, match="PRNG key"):
        S.random(None, params)
    with pytest.raises(JPanningError, match="tree structure"):
        S.snip(mlp_apply, params, batch, masks={"dense1": masks["dense1"]})
    bad = jax.tree.map(lambda x: x, masks)
    bad["dense1"]["kernel"] = jnp.ones((4, 3))
    with pytest.raises(JPanningError, match="dense1/kernel has shape"):
        S.snip(mlp_apply, params, batch, masks=bad)
    with pytest.raises(JPanningError, match="pair"):
        S.snip(mlp_apply, params, batch[0])
    with pytest.raises(JPanningError, match="chunk_size"):
        S.fused(mlp_apply, params, batch, chunk_size=0)


class DoorTest(chex.TestCase):
    """A wrong input fails at the scorer's door with chex's message, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("snip", "grasp", "grad_norm", "fused", "loss_and_grad_norm")
    def test_data_scorers_assert_integer_label_vectors(self, name):
        params, _, (x, y) = mlp_problem()
        scorer = self.variant(functools.partial(getattr(S, name), mlp_apply))
        with pytest.raises(AssertionError, match=r"assert_type.*integer class indices"):
            scorer(params, (x, y.astype(jnp.float32)))
        one_hot = jax.nn.one_hot(y, 3).astype(jnp.int32)
        with pytest.raises(AssertionError, match=r"assert_rank.*integer class indices"):
            scorer(params, (x, one_hot))

    def test_synflow_reads_no_labels(self):
        params, _, (x, y) = mlp_problem()
        got = S.synflow(mlp_apply, params, (x, y.astype(jnp.float32)))
        assert_trees_close(got, S.synflow(mlp_apply, params, (x, y)), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Effective sparsity.


def three_layer_apply(params, x):
    h = nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    h = nn.relu(h @ params["l2"]["kernel"] + params["l2"]["bias"])
    return h @ params["l3"]["kernel"] + params["l3"]["bias"]


def three_layer_masks(m1, m2, m3):
    f = lambda m: {"kernel": jnp.asarray(m, jnp.float32), "bias": jnp.ones(np.shape(m)[1])}
    return {"l1": f(m1), "l2": f(m2), "l3": f(m3)}


def boolean_paths(m1, m2, m3):
    """Reference: a weight is effective iff reachable from the input and reaching the output."""
    m1, m2, m3 = (np.asarray(m, bool) for m in (m1, m2, m3))
    r1 = m1.any(0)  # hidden-1 units reached from the input
    r2 = (r1[:, None] & m2).any(0)
    b2 = m3.any(1)  # hidden-2 units reaching the output
    b1 = (m2 & b2[None, :]).any(1)
    return (m1 & b1[None, :], m2 & r1[:, None] & b2[None, :], m3 & r2[:, None])


def test_effective_masks_on_a_hand_built_dead_path():
    m1 = np.ones((3, 4))
    m1[:, 0] = 0  # hidden-1 unit 0 receives nothing
    m2 = np.ones((4, 4))
    m2[2, 3] = 0
    m3 = np.ones((4, 2))
    m3[1, :] = 0  # hidden-2 unit 1 sends nothing
    masks = three_layer_masks(m1, m2, m3)
    got = S.effective_masks(three_layer_apply, masks, (3,))
    e2 = m2.copy()
    e2[0, :] = 0
    e2[:, 1] = 0  # by hand: out of unit 0, into unit 1
    np.testing.assert_array_equal(got["l1"]["kernel"], m1)
    np.testing.assert_array_equal(got["l2"]["kernel"], e2)
    np.testing.assert_array_equal(got["l3"]["kernel"], m3)
    np.testing.assert_array_equal(got["l2"]["bias"], 1.0)
    # 12 + 16 + 8 = 36 weights; kept 9 + 15 + 6 = 30; effective 9 + 8 + 6 = 23.
    sparsity = S.effective_sparsity(three_layer_apply, masks, (3,))
    np.testing.assert_allclose(sparsity, 1 - 23 / 36, rtol=1e-6)
    assert S.collapsed_layers(three_layer_apply, masks, (3,)) == []


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 0.7))
def test_effective_masks_match_boolean_path_search(seed, density):
    rng = np.random.default_rng(seed)
    ms = [(rng.random(s) < density).astype(float) for s in ((3, 4), (4, 4), (4, 2))]
    got = _jitted_effective(three_layer_masks(*ms))
    for name, expected in zip(("l1", "l2", "l3"), boolean_paths(*ms)):
        np.testing.assert_array_equal(got[name]["kernel"], expected.astype(float))


_jitted_effective = jax.jit(
    functools.partial(S.effective_masks, three_layer_apply, input_shape=(3,))
)


def residual_apply(params, x):
    h = nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    branch = nn.relu(h @ params["a"]["kernel"] + params["a"]["bias"])
    h = h + branch @ params["b"]["kernel"] + params["b"]["bias"]
    return h @ params["l3"]["kernel"] + params["l3"]["bias"]


def test_a_collapsed_residual_branch_leaves_the_shortcut_alive():
    masks = {
        name: {"kernel": jnp.ones(shape), "bias": jnp.ones(shape[1])}
        for name, shape in (("l1", (3, 4)), ("a", (4, 4)), ("b", (4, 4)), ("l3", (4, 2)))
    }
    masks["a"]["kernel"] = jnp.zeros((4, 4))
    # "b" still has all its weights and is fed by a's bias: no input path, so not effective.
    assert S.collapsed_layers(residual_apply, masks, (3,)) == ["a/kernel", "b/kernel"]
    sparsity = S.effective_sparsity(residual_apply, masks, (3,))
    np.testing.assert_allclose(sparsity, 32 / 52, rtol=1e-6)


def test_effective_sparsity_on_flax_cnn_with_batchnorm_and_max_pool():
    params, _, _, apply_eval = flax_problem()
    dense = M.ones_like(params)
    sparsity = jax.jit(lambda m: S.effective_sparsity(apply_eval, m, (6, 6, 2)))
    np.testing.assert_allclose(sparsity(dense), 0.0)
    # Remove every input of the first conv's output channel 1: the second conv's weights
    # reading channel 1 lose their paths, nothing else does.
    masks = jax.tree.map(lambda x: x, dense)
    masks["Conv_0"]["kernel"] = dense["Conv_0"]["kernel"].at[..., 1].set(0)
    got = jax.jit(lambda m: S.effective_masks(apply_eval, m, (6, 6, 2)))(masks)
    np.testing.assert_array_equal(got["Conv_1"]["kernel"][:, :, 1, :], 0)
    assert int(got["Conv_1"]["kernel"].sum()) == 9 * 3 * 6
    np.testing.assert_array_equal(got["Dense_0"]["kernel"], 1)
    assert S.collapsed_layers(apply_eval, masks, (6, 6, 2)) == []
    masks["Conv_1"]["kernel"] = jnp.zeros_like(dense["Conv_1"]["kernel"])
    assert S.collapsed_layers(apply_eval, masks, (6, 6, 2)) == [
        "Conv_0/kernel",
        "Conv_1/kernel",
        "Dense_0/kernel",
    ]
    np.testing.assert_allclose(sparsity(masks), 1.0)
