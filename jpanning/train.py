"""Dense and masked training: optimizer, jitted train/eval steps, the epoch loop.

The recipe of the pruning-at-initialization papers: SGD with momentum 0.9, weight decay 5e-4
(added to the gradient before momentum, as PyTorch's SGD does), lr 0.1 with cosine decay to
zero over the run, batch 128. Masked training wraps that optimizer in
:func:`jpanning.masks.masked_optimizer`, so pruned weights stay exactly zero after every step
and their momentum never accumulates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jpanning import masks as masks_lib
from jpanning.data import Dataset, augment_batch, epoch_batches
from jpanning.errors import JPanningError, RunFailed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (serialised into results.json)."""

    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_batch_size: int = 500
    check_every: int = 50  # steps between host-side NaN/inf checks of the loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def make_optimizer(
    config: TrainConfig, total_steps: int, masks: Any | None = None
) -> optax.GradientTransformation:
    """SGD + momentum + weight decay with a cosine schedule; masked when ``masks`` is given."""
    schedule = optax.cosine_decay_schedule(config.lr, max(total_steps, 1))
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )
    return tx if masks is None else masks_lib.masked_optimizer(tx, masks)


def create_train_state(
    variables: dict, tx: optax.GradientTransformation, masks: Any | None = None
) -> TrainState:
    """Initial state; params are multiplied by ``masks`` so pruned weights start at zero.

    The state owns fresh buffers (the train step donates it), so the caller's ``variables``
    and ``masks`` stay valid after training.
    """
    params = variables["params"]
    if masks is not None:
        params = masks_lib.apply(params, masks)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
    )
    return jax.tree.map(jnp.copy, state)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step_fn(model: nn.Module, tx: optax.GradientTransformation, *, augment: bool) -> Callable:
    """The pure ``train_step(state, key, images, labels) -> (state, metrics)`` (not jitted,
    for use inside other jitted code such as PuRL's retraining).

    ``metrics`` holds the batch's mean loss and its number of correct predictions.
    """

    def train_step(state: TrainState, key, images, labels):
        if augment:
            images = augment_batch(key, images)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            return cross_entropy(logits, labels), (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, {"loss": loss, "correct": correct}

    return train_step


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, *, augment: bool
) -> Callable:
    """:func:`train_step_fn` jitted, the state donated."""
    return jax.jit(train_step_fn(model, tx, augment=augment), donate_argnums=0)


def eval_step_fn(model: nn.Module) -> Callable:
    """The pure ``eval_step(params, batch_stats, images, labels, weights) -> (loss_sum,
    correct)``: summed loss and correct predictions with BatchNorm's running statistics.

    ``weights`` is 1 for real examples and 0 for the padding of the last batch, so every batch has
    the same shape and the step compiles once.
    """

    def eval_step(params, batch_stats, images, labels, weights):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) * weights
        return jnp.sum(losses * weights), jnp.sum(correct)

    return eval_step


def make_eval_step(model: nn.Module) -> Callable:
    """:func:`eval_step_fn` jitted."""
    return jax.jit(eval_step_fn(model))


def evaluate(
    eval_step: Callable,
    params,
    batch_stats,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
) -> dict:
    """Mean loss and accuracy over a whole split (the last batch padded, not dropped)."""
    n = len(images)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(x)
        w = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        l, c = eval_step(params, batch_stats, x, y, w)
        loss_sum, correct = loss_sum + float(l), correct + int(c)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def _check_finite(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise RunFailed(
            f"training diverged: loss is {loss} at step {step}; lower --lr "
            f"(now {lr}) or check the data"
        )


def train(
    model: nn.Module,
    variables: dict,
    dataset: Dataset,
    config: TrainConfig,
    key,
    *,
    masks: Any | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[TrainState, list[dict]]:
    """Train ``model`` on ``dataset`` (masked when ``masks`` is given) and evaluate each epoch.

    Args:
        model: a Flax module taking ``(x, train)``.
        variables: ``{'params', 'batch_stats'}`` to start from.
        dataset: a :class:`jpanning.data.Dataset`.
        config: the :class:`TrainConfig`.
        key: PRNG key for shuffling and augmentation.
        masks: mask pytree shaped like the params, or None for dense training.
        progress: show a progress bar per epoch.
        log: where the per-epoch line goes.
    Returns:
        The final :class:`TrainState` and one dict per epoch (train loss/accuracy, test
        loss/accuracy).
    """
    steps_per_epoch = dataset.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise JPanningError(
            f"batch size {config.batch_size} is larger than the training set "
            f"({dataset.num_train} examples)"
        )
    tx = make_optimizer(config, steps_per_epoch * config.epochs, masks)
    state = create_train_state(variables, tx, masks)
    train_step = make_train_step(model, tx, augment=dataset.augment)
    eval_step = make_eval_step(model)
    shuffle_key, aug_key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)))
    history, done = [], 0  # done: steps taken so far (a host counter; no device sync)
    for epoch in range(config.epochs):
        loss_sum, correct, seen, pending = 0.0, 0, 0, []
        batches = epoch_batches(rng, dataset.num_train, config.batch_size)
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="step",
        )
        for idx in bar:
            state, metrics = train_step(
                state,
                jax.random.fold_in(aug_key, done),
                dataset.train_images[idx],
                dataset.train_labels[idx],
            )
            done += 1
            pending.append(metrics)
            if len(pending) == config.check_every:
                loss_sum, correct, seen = _drain(
                    pending, loss_sum, correct, seen, config, done, bar
                )
        loss_sum, correct, seen = _drain(pending, loss_sum, correct, seen, config, done, bar)
        bar.close()
        test = evaluate(
            eval_step,
            state.params,
            state.batch_stats,
            dataset.test_images,
            dataset.test_labels,
            config.eval_batch_size,
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / (seen * config.batch_size),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }
        history.append(record)
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | test loss {test['loss']:.4f} "
            f"acc {test['accuracy']:.4f}"
        )
    return state, history


def _drain(
    pending: list, loss_sum: float, correct: int, seen: int, config: TrainConfig, done: int, bar
) -> tuple[float, int, int]:
    """Fetch queued step metrics (one host sync per ``check_every`` steps) and check them.

    ``done`` counts the steps taken; the queued ones are steps ``done - len(pending) + 1`` to
    ``done`` (1-based), which is how a non-finite loss is reported.
    """
    if not pending:
        return loss_sum, correct, seen
    fetched = jax.device_get(pending)
    first_step = done - len(fetched) + 1
    for i, m in enumerate(fetched):
        _check_finite(float(m["loss"]), first_step + i, config.lr)
    loss_sum += sum(float(m["loss"]) for m in fetched)
    correct += sum(int(m["correct"]) for m in fetched)
    seen += len(fetched)
    pending.clear()
    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    return loss_sum, correct, seen
