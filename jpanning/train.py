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

from jpanning import checkpoint as checkpoint_lib, masks as masks_lib, parallel, scores
from jpanning.checkpoint import Checkpoints
from jpanning.data import Dataset, augment_batch, epoch_batches
from jpanning.errors import JPanningError, RunFailed
from jpanning.resumable import Resumable


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
            return scores.cross_entropy(logits, labels), (logits, updates.get("batch_stats", {}))

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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, augment: bool):
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
    *,
    mesh=None,
) -> dict:
    """Mean loss and accuracy over a whole split (the last batch padded, not dropped); with a
    ``mesh`` each batch is split over its devices (``batch_size`` a multiple of their number)."""
    n = len(images)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(x)
        w = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        l, c = eval_step(params, batch_stats, *parallel.put_batch(mesh, (x, y, w)))
        loss_sum, correct = loss_sum + float(l), correct + int(c)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def _check_finite(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise RunFailed(
            f"training diverged: loss is {loss} at step {step}; lower --lr "
            f"(now {lr}) or check the data"
        )


@dataclasses.dataclass
class EpochSums:
    """The running sums of the step metrics over the epoch so far (host-side numbers).

    A new metric of :func:`train_step_fn` is summed in :meth:`add` and reported in
    :meth:`record`; checkpoints carry every field (:class:`Position`).
    """

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0  # steps summed

    def add(self, fetched: list[dict]) -> None:
        """Add the fetched metrics of ``len(fetched)`` steps."""
        self.loss_sum += sum(float(m["loss"]) for m in fetched)
        self.correct += sum(int(m["correct"]) for m in fetched)
        self.seen += len(fetched)

    def record(self, batch_size: int) -> dict:
        """The epoch's ``train_loss`` and ``train_accuracy``."""
        return {
            "train_loss": self.loss_sum / self.seen,
            "train_accuracy": self.correct / (self.seen * batch_size),
        }


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the epoch loop stands (the ``meta`` of a checkpoint).

    Attributes:
        epoch, batch: ``batch`` batches of epoch ``epoch`` (0-based) are done.
        rng: the shuffling generator's state when that epoch began.
        sums: the epoch's running sums so far.
        history: the finished epochs' records.
        key: the run's PRNG key data, and ``run`` the training settings: what must match to
            resume.
    """

    epoch: int
    batch: int
    rng: dict
    sums: EpochSums = dataclasses.field(default_factory=EpochSums)
    history: list = dataclasses.field(default_factory=list)
    key: list = dataclasses.field(default_factory=list)
    run: dict = dataclasses.field(default_factory=dict)

    def meta(self) -> dict:
        """As JSON: the fields, with the sums' inline (the layout of every checkpoint)."""
        meta = dataclasses.asdict(self)
        sums = meta.pop("sums")
        return meta | sums

    @classmethod
    def from_meta(cls, meta: dict) -> "Position":
        """The position :meth:`meta` wrote. Raises TypeError on other fields."""
        meta = dict(meta)
        names = [f.name for f in dataclasses.fields(EpochSums)]
        sums = EpochSums(**{name: meta.pop(name) for name in names if name in meta})
        return cls(sums=sums, **meta)


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
    mesh=None,
    checkpoints: "Checkpoints | None" = None,
    stop: Callable[[], str | None] = checkpoint_lib.never,
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
        mesh: a :func:`jpanning.parallel.make_mesh` mesh: batches are split over its devices,
            the state replicated (None: the default device).
        checkpoints: a :class:`jpanning.checkpoint.Checkpoints`; training continues from its
            newest checkpoint when there is one and writes one at every epoch end, every
            ``checkpoints.every`` steps and on a stop request. Resumed, a run ends with the
            same params, batch statistics and history as an uninterrupted one.
        stop: polled after every step but an epoch's last (whose checkpoint follows the
            evaluation, and the poll with it); when it returns a signal name the loop writes a
            checkpoint and raises :class:`jpanning.checkpoint.Interrupted`. A stop during the
            last epoch lets the run finish. (:class:`jpanning.resumable.Resumable` does both.)
    Returns:
        The final :class:`TrainState` and one dict per epoch (train loss/accuracy, test
        loss/accuracy).
    Raises:
        RunFailed: a NaN or inf loss, or params that are not finite when a checkpoint is due
            (the message names the step and the last good checkpoint, which is kept).
    """
    steps_per_epoch = dataset.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise JPanningError(
            f"batch size {config.batch_size} is larger than the training set "
            f"({dataset.num_train} examples)"
        )
    parallel.check_divisible(config.batch_size, mesh, "--batch-size")
    n_dev = parallel.mesh_size(mesh)
    eval_batch_size = -(-config.eval_batch_size // n_dev) * n_dev
    tx = make_optimizer(config, steps_per_epoch * config.epochs, masks)
    state = create_train_state(variables, tx, masks)
    train_step = make_train_step(model, tx, augment=dataset.augment)
    eval_step = make_eval_step(model)
    shuffle_key, aug_key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)))
    run = dataclasses.asdict(config) | {"steps_per_epoch": steps_per_epoch}
    pos = Position(epoch=0, batch=0, rng=rng.bit_generator.state, key=_key_list(key), run=run)
    saved = {"masks": masks if masks is not None else {}}
    loop = Resumable(checkpoints, stop)
    restored = loop.restore({"train": state, **saved}, log=log)
    if restored is not None:
        state, pos = _resume(loop, restored, saved, pos, log)
        rng.bit_generator.state = pos.rng
    state = parallel.replicate(mesh, state)

    def save(position: Position) -> None:
        if checkpoints is None:
            return
        finite = jax.tree.map(lambda p: jnp.all(jnp.isfinite(p)), state.params)
        if not all(bool(f) for f in jax.tree.leaves(finite)):  # never a bad "last good" one
            raise RunFailed(
                f"training diverged: the params are not finite after step {done}; lower --lr "
                f"(now {config.lr}); the last good checkpoint (step {checkpoints.latest()}) "
                f"is kept in {checkpoints.directory}"
            )
        loop.save(done, {"train": state, **saved}, position.meta())

    done = pos.epoch * steps_per_epoch + pos.batch  # steps taken (a host counter, no sync)
    history = pos.history
    for epoch in range(pos.epoch, config.epochs):
        resumed_here = epoch == pos.epoch
        epoch_rng = rng.bit_generator.state
        skip = pos.batch if resumed_here else 0
        sums = dataclasses.replace(pos.sums) if resumed_here else EpochSums()
        pending = []

        def drain() -> None:
            _drain_checked(pending, sums, config, done, bar, checkpoints)

        def checkpoint(batch: int) -> None:
            drain()
            save(Position(epoch, batch, epoch_rng, sums, history, pos.key, run))

        batches = epoch_batches(rng, dataset.num_train, config.batch_size)
        with tqdm(
            total=steps_per_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="step",
        ) as bar:
            for i, idx in enumerate(batches):
                if i < skip:
                    continue
                images, labels = parallel.put_batch(
                    mesh, (dataset.train_images[idx], dataset.train_labels[idx])
                )
                key_t = jax.random.fold_in(aug_key, done)
                state, metrics = train_step(state, key_t, images, labels)
                done += 1
                bar.update()
                pending.append(metrics)
                if len(pending) == config.check_every:
                    drain()
                # The epoch's last step checkpoints after the evaluation (the boundary below).
                last = i + 1 == steps_per_epoch
                loop.after(done - 1, done, lambda: checkpoint(i + 1), last=last)
            drain()
        test = evaluate(
            eval_step,
            state.params,
            state.batch_stats,
            dataset.test_images,
            dataset.test_labels,
            eval_batch_size,
            mesh=mesh,
        )
        record = (
            {"epoch": epoch + 1}
            | sums.record(config.batch_size)
            | {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
        )
        history = history + [record]
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | test loss {test['loss']:.4f} "
            f"acc {test['accuracy']:.4f}"
        )
        end = Position(epoch + 1, 0, rng.bit_generator.state, history=history, key=pos.key, run=run)
        loop.boundary(done, lambda: save(end), final=epoch + 1 == config.epochs)
    return state, history


def _key_list(key) -> list:
    return np.asarray(jax.random.key_data(key)).tolist()


def _resume(loop: Resumable, restored: tuple, saved: dict, pos: Position, log):
    """The restored checkpoint's state and position, checked against this run's settings,
    key and masks (``pos``, ``saved``)."""
    step, restored, meta = restored
    try:
        position = Position.from_meta(meta)
    except TypeError as e:
        raise loop.refuse(f"was not written by this training loop ({e})") from None
    if position.run != pos.run:
        diff = sorted(k for k in pos.run if position.run.get(k) != pos.run[k])
        raise loop.refuse(
            f"was written with other training settings ({', '.join(diff) or 'unknown'})"
        )
    if position.key != pos.key:
        raise loop.refuse("was written by a run with another seed or key")
    same_masks = jax.tree.all(
        jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), restored["masks"], saved["masks"])
    )
    if not same_masks:
        raise loop.refuse("holds other masks than this run's")
    loop.resumed(step, log=log, where=f" (epoch {position.epoch + 1}, batch {position.batch})")
    return restored["train"], position


def _drain_checked(pending, sums, config, done, bar, checkpoints) -> None:
    """:func:`_drain`, with the last good checkpoint named when the loss is not finite."""
    try:
        _drain(pending, sums, config, done, bar)
    except RunFailed as e:
        if checkpoints is None or checkpoints.latest() is None:
            raise
        raise RunFailed(
            f"{e}; the last good checkpoint (step {checkpoints.latest()}) is kept in "
            f"{checkpoints.directory}"
        ) from None


def _drain(pending: list, sums: EpochSums, config: TrainConfig, done: int, bar) -> None:
    """Fetch queued step metrics (one host sync per ``check_every`` steps), check them and
    add them to ``sums``.

    ``done`` counts the steps taken; the queued ones are steps ``done - len(pending) + 1`` to
    ``done`` (1-based), which is how a non-finite loss is reported.
    """
    if not pending:
        return
    fetched = jax.device_get(pending)
    first_step = done - len(fetched) + 1
    for i, m in enumerate(fetched):
        _check_finite(float(m["loss"]), first_step + i, config.lr)
    sums.add(fetched)
    pending.clear()
    bar.set_postfix(loss=f"{sums.loss_sum / sums.seen:.4f}")
