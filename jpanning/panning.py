"""Neural Network Panning (Kang, Li, Yao, Li 2022): multi-metric, multi-round screening.

Over T rounds the sparsity rises on the exponential schedule (keep fraction at round t is
``(1 - s) ** ((t + 1) / T)``). Each round every prunable weight, pruned ones included, gets a
fused score ``Σ_i p_i · norm(metric_i)`` over three metrics, and the round's mask is the
global top-k of it, so a pruned weight wins its place back whenever its fused score rises
("revival"). As in the authors' code (kangxiatao/RLPanning):

* ``snip = θ ⊙ g`` and ``grasp = θ ⊙ H g`` are taken once, on the **dense** network, with the
  loss on ``logits / temperature`` (200); they never see the mask;
* ``synflow = θ ⊙ ∂R/∂w`` is taken every round on the ``|θ ⊙ m|``-network fed all ones and
  multiplied by the original, signed θ, so pruned weights score too (what restoring them is
  worth) and the map is signed like SNIP's and GraSP's;
* every map is normalised over all prunable weights as ``|s − mean| / std`` (signs dropped);
* the fusion weights ``p = (p_synflow, p_snip, p_grasp)`` follow a hand schedule of the
  round's sparsity (:class:`PanningConfig`), or are chosen by an agent (RL Panning).

Everything here is a pure function over pytrees; :func:`panning` runs each round as one
jitted call (compiled once) in a host loop.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from jpanning import masks as masks_lib, scores
from jpanning.errors import JPanningError

PyTree = Any
METRICS = ("synflow", "snip", "grasp")


@flax.struct.dataclass
class PanningConfig:
    """Hand-scheduled Panning.

    Attributes:
        rounds: T, the number of rounds.
        temperature: SNIP and GraSP take the loss at ``logits / temperature``.
        thresholds: sparsity bounds of the schedule's bands (ascending); band ``i`` holds the
            sparsities ``thresholds[i-1] < s <= thresholds[i]``, and one band lies above all.
        weights: fusion weights ``(synflow, snip, grasp)`` of each band, one more row than
            ``thresholds``. The defaults are the authors' hand schedule.
    """

    rounds: int = flax.struct.field(pytree_node=False, default=100)
    temperature: float = flax.struct.field(pytree_node=False, default=200.0)
    thresholds: tuple = flax.struct.field(pytree_node=False, default=(0.8, 0.9, 0.98, 0.99))
    weights: tuple = flax.struct.field(
        pytree_node=False,
        default=(
            (0.2, 0.5, 0.3),
            (0.2, 0.4, 0.4),
            (0.2, 0.3, 0.5),
            (0.4, 0.2, 0.4),
            (0.5, 0.0, 0.5),
        ),
    )

    def validate(self) -> "PanningConfig":
        """Raise a one-line error for an inconsistent configuration; return self."""
        if int(self.rounds) < 1:
            raise JPanningError(f"panning rounds must be at least 1, got {self.rounds}")
        if list(self.thresholds) != sorted(self.thresholds):
            raise JPanningError(f"panning thresholds must ascend, got {self.thresholds}")
        if len(self.weights) != len(self.thresholds) + 1:
            raise JPanningError(
                f"panning needs {len(self.thresholds) + 1} rows of weights for "
                f"{len(self.thresholds)} thresholds, got {len(self.weights)}"
            )
        if any(len(row) != len(METRICS) or min(row) < 0 for row in self.weights):
            raise JPanningError(
                f"each row of panning weights needs {len(METRICS)} non-negative values "
                f"({', '.join(METRICS)}), got {self.weights}"
            )
        return self


def scheduled_weights(sparsity, config: PanningConfig) -> jax.Array:
    """The hand schedule's fusion weights ``(synflow, snip, grasp)`` at ``sparsity`` (traceable)."""
    band = jnp.sum(jnp.asarray(sparsity) > jnp.asarray(config.thresholds, jnp.float32))
    return jnp.asarray(config.weights, jnp.float32)[band]


def normalise(tree: PyTree, prunable: PyTree) -> PyTree:
    """``|s − mean| / std`` over all prunable entries together; zeros on the other leaves.

    Each map is first divided by its mean absolute value (a positive constant, which the
    normalisation cancels exactly), so raw SynFlow scores of 1e23–1e26 do not overflow
    float32 when squared. A constant map normalises to zeros.
    """
    leaves, treedef = jax.tree.flatten(tree)
    flags = jax.tree.leaves(prunable)
    chosen = jnp.concatenate([jnp.ravel(x) for x, f in zip(leaves, flags) if f])
    scale = jnp.mean(jnp.abs(chosen))
    scale = jnp.where(scale > 0, scale, 1.0)
    chosen = chosen / scale
    mean = jnp.mean(chosen)
    std = jnp.std(chosen)
    std = jnp.where(std > 0, std, 1.0)
    out = [
        jnp.abs(x / scale - mean) / std if f else jnp.zeros_like(x) for x, f in zip(leaves, flags)
    ]
    return treedef.unflatten(out)


def dense_metrics(
    apply_fn: Callable,
    params: PyTree,
    batch,
    *,
    prunable: PyTree,
    temperature: float = 200.0,
    chunk_size: Optional[int] = None,
) -> dict:
    """Normalised SNIP ``θ ⊙ g`` and GraSP ``θ ⊙ Hg`` of the dense network (mask-free).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (train-mode BatchNorm, as the authors).
        params: the network's parameters θ.
        batch: the scoring batch ``(inputs, labels)``.
        prunable: pytree of bools.
        temperature: the loss is taken at ``logits / temperature``.
        chunk_size: see :func:`jpanning.scores.grasp`.
    Returns:
        ``{'snip': ..., 'grasp': ...}``, each normalised by :func:`normalise`.
    """
    loss_fn = functools.partial(scores.cross_entropy, temperature=temperature)
    _, g, hg = scores.loss_grad_hvp(
        apply_fn, params, batch, loss_fn=loss_fn, prunable=prunable, chunk_size=chunk_size
    )
    snip = jax.tree.map(jnp.multiply, params, g)
    grasp = jax.tree.map(jnp.multiply, params, hg)
    return {"snip": normalise(snip, prunable), "grasp": normalise(grasp, prunable)}


def signed_synflow(synflow_apply_fn, params, masks, input_shape: tuple, prunable) -> PyTree:
    """``θ ⊙ ∂R/∂w`` at ``w = |θ ⊙ m|``: :func:`jpanning.scores.synflow` with θ's signs."""
    ones = (jnp.ones((1, *input_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
    flow = scores.synflow(synflow_apply_fn, params, ones, masks=masks, prunable=prunable)
    return jax.tree.map(lambda f, p: f * jnp.sign(p), flow, params)


def fused_scores(
    synflow_apply_fn: Callable,
    params: PyTree,
    masks: PyTree,
    dense: dict,
    weights: jax.Array,
    input_shape: tuple,
    *,
    prunable: PyTree,
) -> PyTree:
    """``p_synflow · norm(signed synflow at masks) + p_snip · snip + p_grasp · grasp``.

    Args:
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow.
        params: θ.
        masks: the current masks (SynFlow is taken on the ``|θ ⊙ m|``-network).
        dense: :func:`dense_metrics` (already normalised).
        weights: ``[3]`` fusion weights in :data:`METRICS` order.
        input_shape: one example's shape (SynFlow feeds a single all-ones example).
        prunable: pytree of bools.
    """
    flow = normalise(
        signed_synflow(synflow_apply_fn, params, masks, input_shape, prunable), prunable
    )
    return jax.tree.map(
        lambda a, b, c: weights[0] * a + weights[1] * b + weights[2] * c,
        flow,
        dense["snip"],
        dense["grasp"],
    )


def panning(
    apply_fn: Callable,
    synflow_apply_fn: Callable,
    params: PyTree,
    batch,
    sparsity: float,
    *,
    prunable: PyTree,
    config: PanningConfig = PanningConfig(),
    scope: str = "global",
    chunk_size: Optional[int] = None,
    weights_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
) -> tuple[PyTree, dict]:
    """Hand-scheduled Panning: T rounds of fused scoring and top-k, with revival.

    Args:
        apply_fn: train-mode ``apply_fn`` for SNIP and GraSP.
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow.
        params: θ at initialization.
        batch: the scoring batch ``(inputs, labels)``.
        sparsity: final fraction of prunable weights removed, in [0, 1).
        prunable: pytree of bools.
        config: :class:`PanningConfig`.
        scope: ``'global'`` (the authors') or ``'layer'``.
        chunk_size: see :func:`jpanning.scores.grasp`.
        weights_fn: ``weights_fn(round, sparsity) -> [3]`` overrides the hand schedule.
    Returns:
        ``(masks, trace)``: the final masks at exactly ``sparsity``, and per round the
        sparsity, fusion weights and number of weights revived (kept now, pruned before).
    """
    config.validate()
    schedule = masks_lib.exponential_schedule(sparsity, config.rounds)
    input_shape = tuple(jnp.shape(batch[0])[1:])
    select = functools.partial(masks_lib.topk, prunable=prunable, scope=scope)
    flags = jax.tree.leaves(prunable)

    def revived(old, new):
        return sum(
            jnp.sum((n != 0) & (o == 0))
            for o, n, f in zip(jax.tree.leaves(old), jax.tree.leaves(new), flags)
            if f
        )

    dense_fn = jax.jit(
        functools.partial(
            dense_metrics,
            apply_fn,
            prunable=prunable,
            temperature=config.temperature,
            chunk_size=chunk_size,
        )
    )

    @jax.jit
    def one_round(params, dense, masks, t, s):
        p = scheduled_weights(s, config) if weights_fn is None else weights_fn(t, s)
        fused = fused_scores(
            synflow_apply_fn, params, masks, dense, p, input_shape, prunable=prunable
        )
        new = select(fused, s)
        return new, {"sparsity": s, "weights": p, "revived": revived(masks, new)}

    # Rounds are separate jitted calls in a host loop (masks stay on the device), as in
    # jpanning.pruning.iterative_masks (a user's model with lax's convolution would run many
    # times slower in a lax.scan body on XLA:CPU).
    dense = dense_fn(params, batch)
    masks, trace = masks_lib.ones_like(params), []
    for t, s in enumerate(schedule):
        masks, info = one_round(params, dense, masks, jnp.int32(t), s)
        trace.append(info)
    return masks, jax.tree.map(lambda *xs: jnp.stack(xs), *trace)
