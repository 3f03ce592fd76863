"""Training: pruned weights stay exactly zero, learning happens, determinism, divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import data, masks as M, models, pruning, scores, train
from jpanning.errors import JPanningError


@pytest.fixture(scope="module")
def setup():
    dataset = data.load_dataset("synthetic", seed=0)
    model = models.create_model("tinycnn", dataset.num_classes)
    variables = models.init_variables(model, jax.random.key(0), dataset.input_shape)
    prunable = M.prunable_tree(variables["params"])
    problem = pruning.PruneProblem(
        model=model,
        variables=variables,
        batch=None,
        sparsity=0.7,
        prunable=prunable,
        key=jax.random.key(1),
    )
    masks = pruning.prune("random", problem)
    return dataset, model, variables, masks


def _train(setup, masks, epochs=2, seed=0, lr=0.05):
    dataset, model, variables, _ = setup
    config = train.TrainConfig(epochs=epochs, batch_size=32, lr=lr, check_every=7)
    return train.train(
        model,
        variables,
        dataset,
        config,
        jax.random.key(seed),
        masks=masks,
        progress=False,
        log=lambda s: None,
    )


def test_pruned_weights_stay_exactly_zero_and_momentum_never_builds(setup):
    _, _, variables, masks = setup
    state, history = _train(setup, masks)
    for p, m, p0 in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(masks), jax.tree.leaves(variables["params"])
    ):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[m == 0] == 0.0)
        if m.min() == 0:  # pruned layers still learn in their kept weights
            assert np.any(p[m == 1] != np.asarray(p0)[m == 1])
    momentum = state.opt_state.inner_state[1][0].trace
    for t, m in zip(jax.tree.leaves(momentum), jax.tree.leaves(masks)):
        assert np.all(np.asarray(t)[np.asarray(m) == 0] == 0.0)
    # The synthetic task is learnable: far above chance (1/num_classes) after 2 epochs.
    assert history[-1]["test_accuracy"] > 0.6
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_dense_training_learns(setup):
    dataset = setup[0]
    state, history = _train(setup, None)
    assert history[-1]["test_accuracy"] > 2.0 / dataset.num_classes


def test_same_seed_same_result_bit_for_bit(setup):
    masks = setup[3]
    a, _ = _train(setup, masks, epochs=1, seed=3)
    b, _ = _train(setup, masks, epochs=1, seed=3)
    c, _ = _train(setup, masks, epochs=1, seed=4)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params))
    )


def test_divergence_names_the_step(setup):
    with pytest.raises(JPanningError, match=r"training diverged: loss is (nan|inf) at step \d+"):
        _train(setup, setup[3], epochs=1, lr=1e30)


def test_evaluate_pads_the_last_batch_instead_of_dropping_it(setup):
    dataset, model, variables, _ = setup
    eval_step = train.make_eval_step(model)
    n = 77
    x, y = dataset.test_images[:n], dataset.test_labels[:n]
    got = train.evaluate(eval_step, variables["params"], variables["batch_stats"], x, y, 20)
    logits = model.apply(variables, jnp.asarray(x), train=False)
    want_acc = float(np.mean(np.argmax(logits, -1) == y))
    want_loss = float(scores.cross_entropy(logits, jnp.asarray(y)))
    assert got["accuracy"] == pytest.approx(want_acc)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_cosine_schedule_reaches_zero_and_weight_decay_is_coupled():
    config = train.TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.5)
    tx = train.make_optimizer(config, total_steps=4)
    params = {"w": jnp.array([2.0])}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    # step 0: lr 0.1, gradient 1 + 0.5 * 2 (decay added to the gradient) = 2 -> update -0.2
    np.testing.assert_allclose(updates["w"], [-0.2], rtol=1e-6)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    np.testing.assert_allclose(updates["w"], [0.0], atol=1e-8)  # past the end: lr 0


def _stop_at(step: int):
    """A stop poll that asks for SIGTERM once ``step`` polls have been made."""
    calls = []

    def stop():
        calls.append(1)
        return "SIGTERM" if len(calls) >= step else None

    return stop


@pytest.mark.parametrize(
    "stop_after", [5, pytest.param(31, marks=pytest.mark.slow)]
)  # mid-epoch; at the end of epoch 1 (slow: 7 s)
def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(setup, tmp_path, stop_after):
    from jpanning import checkpoint

    dataset, model, variables, masks = setup
    config = train.TrainConfig(epochs=2, batch_size=32, lr=0.05, check_every=7)
    args = (model, variables, dataset, config, jax.random.key(5))
    kw = dict(masks=masks, progress=False, log=lambda s: None)
    want_state, want_history = train.train(*args, **kw)

    with checkpoint.opened(str(tmp_path / "ckpt"), every=3) as ckpt:
        with pytest.raises(checkpoint.Interrupted, match="stopped by SIGTERM at step") as info:
            train.train(*args, **kw, checkpoints=ckpt, stop=_stop_at(stop_after))
        assert info.value.exit_code == 143
        # 1000 // 32 = 31 steps per epoch; the stop is polled after steps 1-30 and after the
        # epoch's evaluation, so poll 31 stops at the end of epoch 1, after step 31
        assert ckpt.latest() == stop_after
    with checkpoint.opened(str(tmp_path / "ckpt"), every=3) as ckpt:
        got_state, got_history = train.train(*args, **kw, checkpoints=ckpt)
    assert got_history == want_history
    jax.tree.map(np.testing.assert_array_equal, got_state.params, want_state.params)
    jax.tree.map(np.testing.assert_array_equal, got_state.batch_stats, want_state.batch_stats)
    jax.tree.map(np.testing.assert_array_equal, got_state.opt_state, want_state.opt_state)
    assert int(got_state.step) == int(want_state.step) == 62


def test_a_checkpoint_of_another_seed_settings_or_masks_is_refused(setup, tmp_path):
    from jpanning import checkpoint

    dataset, model, variables, masks = setup
    config = train.TrainConfig(epochs=1, batch_size=32, lr=0.05)
    with checkpoint.opened(str(tmp_path / "c")) as ckpt:

        def run(seed, masks, config=config):
            return train.train(model, variables, dataset, config, jax.random.key(seed),
                               masks=masks, checkpoints=ckpt, progress=False, log=lambda s: None)  # fmt: skip

        run(0, masks)
        with pytest.raises(JPanningError, match="another seed"):
            run(1, masks)
        with pytest.raises(JPanningError, match=r"other training settings \(epochs, lr\)"):
            run(0, masks, train.TrainConfig(epochs=2, batch_size=32, lr=0.1))
        with pytest.raises(JPanningError, match="other masks"):
            run(0, jax.tree.map(lambda m: 1.0 - m, masks))


def test_divergence_keeps_the_last_good_checkpoint(setup, tmp_path):
    from jpanning import checkpoint

    dataset, model, variables, masks = setup
    config = train.TrainConfig(epochs=3, batch_size=32, lr=1e30, check_every=1)
    with checkpoint.opened(str(tmp_path / "c"), every=1) as ckpt:
        with pytest.raises(
            JPanningError, match=r"(at|after) step \d+.*last good checkpoint \(step"
        ):
            train.train(
                model,
                variables,
                dataset,
                config,
                jax.random.key(0),
                masks=masks,
                checkpoints=ckpt,
                progress=False,
                log=lambda s: None,
            )
        good = ckpt.latest()
        assert good is not None
        state = train.create_train_state(variables, train.make_optimizer(config, 93, masks), masks)
        _, restored, _ = ckpt.restore({"train": state, "masks": masks})
        for leaf in jax.tree.leaves(restored["train"].params):
            assert np.all(np.isfinite(np.asarray(leaf)))
