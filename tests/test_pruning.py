"""Pruning procedures: exact sparsity, the exponential schedule, revival, and the wiring of
each method to an independent computation of its score."""

import dataclasses
import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jpanning import masks as M, pruning, scores
from jpanning.errors import JPanningError

METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "iter_snip", "force", "panning"]


@pytest.fixture(scope="module")
def problem(make_tiny_problem):
    return make_tiny_problem(0.8, {"rounds": 4})[0]


def _kept_per_layer(masks, prunable):
    return {
        M.path_str(p): int(np.sum(np.asarray(m)))
        for (p, m), f in zip(
            jax.tree_util.tree_flatten_with_path(masks)[0], jax.tree.leaves(prunable)
        )
        if f
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_method_hits_the_sparsity_exactly(problem, method, scope):
    prob = dataclasses.replace(problem, scope=scope)
    masks = pruning.prune(method, prob)
    kept = _kept_per_layer(masks, prob.prunable)
    sizes = {
        M.path_str(p): int(np.size(x))
        for (p, x), f in zip(
            jax.tree_util.tree_flatten_with_path(prob.params)[0], jax.tree.leaves(prob.prunable)
        )
        if f
    }
    rounding = "floor" if method == "panning" else "nearest"  # the Panning authors' int()
    if scope == "global":
        total = sum(sizes.values())
        assert sum(kept.values()) == M.num_to_keep(total, 0.8, rounding)
    else:
        assert kept == {k: M.num_to_keep(n, 0.8, rounding) for k, n in sizes.items()}
    # Non-prunable leaves (biases, BatchNorm) are never masked.
    for m, f in zip(jax.tree.leaves(masks), jax.tree.leaves(prob.prunable)):
        if not f:
            assert np.all(np.asarray(m) == 1)
    # Same problem, same key: the same masks.
    again = pruning.prune(method, prob)
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_exponential_schedule_removes_a_constant_fraction_each_round():
    s = M.exponential_schedule(0.99, 5)
    density = 1.0 - s.astype(np.float64)
    assert s[-1] == np.float32(0.99)
    np.testing.assert_allclose(density[1:] / density[:-1], 0.01**0.2, rtol=1e-5)
    np.testing.assert_allclose(density[0], 0.01**0.2, rtol=1e-6)
    # the same schedule, traced round by round in float32 (the Panning environment's)
    traced = jax.jit(M.round_sparsity, static_argnums=2)(jnp.float32(0.99), jnp.arange(5), 5)
    np.testing.assert_allclose(traced, s, rtol=1e-6)
    assert traced[-1] == s[-1]
    with pytest.raises(JPanningError, match="rounds must be at least 1"):
        M.exponential_schedule(0.5, 0)


def _toy_problem(sparsity=0.5):
    params = {"layer": {"kernel": jnp.arange(1.0, 11.0).reshape(2, 5)}}
    return pruning.PruneProblem(
        model=None,
        variables={"params": params, "batch_stats": {}},
        batch=None,
        sparsity=sparsity,
        prunable=M.prunable_tree(params),
        key=jax.random.key(0),
    )


def test_revival_only_when_pruned_weights_may_come_back():
    # The score rewards a weight for being pruned: a pruned weight outranks every kept one.
    # Schedule for T=2, s=0.5: keep 7 of 10 after round 1 (sparsity 0.2929), then 5.
    prob = _toy_problem()

    def score_fn(params, masks):
        return jax.tree.map(lambda p, m: p + 100.0 * (1.0 - m), params, masks)

    stay = pruning.iterative_masks(score_fn, prob, 2, keep_pruned=True)
    back = pruning.iterative_masks(score_fn, prob, 2, keep_pruned=False)
    # Round 1 keeps weights 4..10 (values); pruned 1, 2, 3 stay pruned: keep the top 5 of 4..10.
    np.testing.assert_array_equal(
        np.asarray(stay["layer"]["kernel"]).ravel(), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    )
    # With revival, 1, 2, 3 score 101..103 and come back, plus the two largest kept (9, 10).
    np.testing.assert_array_equal(
        np.asarray(back["layer"]["kernel"]).ravel(), [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    )


def test_iterative_with_one_round_is_single_shot(problem):
    apply_fn = pruning.eval_apply_fn(problem)
    one = pruning.prune("synflow", dataclasses.replace(problem, options={"rounds": 1}))
    direct = scores.synflow(apply_fn, problem.params, problem.batch, prunable=problem.prunable)
    expected = M.topk(direct, 0.8, prunable=problem.prunable)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_snip_method_keeps_the_top_of_an_independent_saliency(problem):
    # |θ ⊙ ∂L/∂θ| by plain jax.grad through the Flax model in train mode (batch statistics).
    images, labels = problem.batch

    def loss(params):
        logits = problem.model.apply(
            {"params": params, "batch_stats": problem.variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    g = jax.grad(loss)(problem.params)
    saliency = jax.tree.map(lambda p, x: jnp.abs(p * x), problem.params, g)
    expected = M.topk(saliency, 0.8, prunable=problem.prunable)
    got = pruning.prune("snip", problem)
    flat_e = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(expected)])
    flat_g = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(got)])
    # Float reductions may order near-ties differently; allow a handful of swaps.
    assert np.sum(flat_e != flat_g) <= 4


def test_grasp_method_uses_the_temperature_of_the_reference(problem):
    assert scores.TEMPERATURE == 200.0  # GraSP's reference code: logits / 200
    got = pruning.prune("grasp", problem)
    loss_fn = functools.partial(scores.cross_entropy, temperature=scores.TEMPERATURE)
    s = scores.grasp(
        pruning.train_apply_fn(problem),
        problem.params,
        problem.batch,
        loss_fn=loss_fn,
        prunable=problem.prunable,
    )
    expected = M.topk(s, 0.8, prunable=problem.prunable)
    plain = M.topk(
        scores.grasp(
            pruning.train_apply_fn(problem),
            problem.params,
            problem.batch,
            prunable=problem.prunable,
        ),
        0.8,
        prunable=problem.prunable,
    )
    diff = lambda a, b: sum(
        int(np.sum(np.asarray(x) != np.asarray(y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
    assert diff(got, expected) <= 4
    assert diff(got, plain) > 4  # the temperature changes which weights GraSP keeps


def test_force_revives_weights_that_iter_snip_cannot(problem):
    # Both score every weight at the pruned network; iter_snip pins the pruned ones at -inf.
    # Over several rounds at high sparsity some pruned weight regains a top score, so the
    # two procedures must end with different masks (the toy test above pins down how).
    prob = dataclasses.replace(problem, sparsity=0.95, options={"rounds": 6})
    force = pruning.prune("force", prob)
    iter_snip = pruning.prune("iter_snip", prob)
    differ = sum(
        int(np.sum(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree.leaves(force), jax.tree.leaves(iter_snip))
    )
    assert differ > 0


def test_unknown_method_names_the_choices(problem):
    with pytest.raises(JPanningError, match="unknown method 'snipp'; choose from: dense"):
        pruning.prune("snipp", problem)


def test_a_method_reads_its_options_typed_from_a_dict_or_another_methods_options():
    """options_of: a method's own options dataclass, whatever form problem.options takes."""
    of = pruning.options_of
    one = SimpleNamespace(options={"rounds": 3, "panning_weights": None, "agent_steps": 9})
    assert of(one, pruning.SynFlowOptions) == pruning.SynFlowOptions(rounds=3)  # the rest ignored
    panning = SimpleNamespace(options=pruning.PanningOptions(rounds=4, chunk_size=8))
    assert of(panning, pruning.IterativeSNIPOptions) == pruning.IterativeSNIPOptions(4, 8)
    assert of(SimpleNamespace(options=None), pruning.GraSPOptions).temperature == 200.0
    with pytest.raises(JPanningError, match="must be a SynFlowOptions or a dict"):
        of(SimpleNamespace(options=[("rounds", 3)]), pruning.SynFlowOptions)
