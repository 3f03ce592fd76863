"""Neural Network Panning (Kang, Li, Yao, Li 2022): multi-metric, multi-round screening.

Over T rounds the sparsity rises on the exponential schedule (keep fraction at round t is
``(1 - s) ** ((t + 1) / T)``). Each round every prunable weight, pruned ones included, gets a
fused score of three normalised metrics, and the round's mask is the global top-k of it, so a
pruned weight wins its place back whenever its fused score rises ("revival"). As in the
authors' code (kangxiatao/RLPanning, ``pruner/panning.py``, ``Panning``):

* ``snip = θ ⊙ g`` and ``grasp = θ ⊙ H g`` are taken on the **dense** network (they never
  see the mask), with the loss on ``logits / temperature`` (200), on a **fresh** scoring batch
  every round (``batches``: one per round; a smaller stack is cycled through, and one batch
  scores every round, jpanning's cheaper option);
* ``synflow = θ ⊙ ∂R/∂w`` is taken every round on the ``|θ ⊙ m|``-network fed all ones and
  multiplied by the original, signed θ, so pruned weights score too (what restoring them is
  worth) and the map is signed like SNIP's and GraSP's;
* every map is normalised over all prunable weights as ``|s − mean| / std`` (signs dropped,
  ``std`` with Bessel's correction like ``torch.std``);
* the fusion is ``Σ_i p_i · metric_i`` (``'add'``) or ``Π_i metric_i ** p_i`` (``'mul'``,
  the authors' second fusion), with ``p = (p_synflow, p_snip, p_grasp)`` from a hand
  staircase over the round's sparsity (:class:`PanningConfig`) or from an agent (RL Panning);
* each round keeps ``int(n · keep)`` weights (the authors' floor).

jpanning adds one named deviation, on by default (``collapse_shield``): on a round where the
fused scores would empty a prunable layer, that round's mask is the one SynFlow alone reaches
at that round (SynFlow's own trajectory, carried beside the fused one; :func:`shield`). The
SNIP and GraSP shares can empty whole residual stages at high sparsity, so the trained
network is shallower than the one asked for; SynFlow conserves synaptic flow and avoids that
collapse (Tanaka et al. 2020), and the shield borrows exactly that. It costs one more SynFlow
pass per round. The authors have no such rule (``collapse_shield=False`` is their method).

The authors score in train mode, so their BatchNorm running statistics drift with every
scoring batch and reach their SynFlow network (a copy of the model); that is a side effect of
their code, not of the method, and jpanning does not reproduce it (SynFlow's network uses the
statistics at initialization). Their masks keep every weight tied with the k-th score
(``>=``); jpanning keeps exactly k (ties are measure-zero for real-valued scores).

Everything here is a pure function over pytrees; :func:`panning` runs each round as one
jitted call (compiled once) in a host loop.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jpanning import data, masks as masks_lib, scores
from jpanning.errors import JPanningError

PyTree = Any
METRICS = ("synflow", "snip", "grasp")


FUSIONS = ("add", "mul")
# Where SNIP and GraSP score by default: the authors' draw a new class-balanced batch every round
# (Panning) or agent step (RL Panning); 'pool' scores a pool of batches once.
SCORING = "fresh"
# The collapse shield's fusion weights: SynFlow's alone.
SYNFLOW_ALONE = (1.0, 0.0, 0.0)
# The authors' staircases (``Panning``): the sum's, and the product's ('mul' in their debug flags).
ADD_WEIGHTS = ((0.2, 0.5, 0.3), (0.2, 0.4, 0.4), (0.2, 0.3, 0.5), (0.4, 0.2, 0.4), (0.5, 0.0, 0.5))
MUL_WEIGHTS = ((0.3, 1.0, 0.2), (0.3, 1.0, 0.4), (0.5, 0.5, 0.6), (0.8, 0.0, 1.0), (1.0, 0.0, 1.0))


@flax.struct.dataclass
class PanningConfig:
    """Hand-scheduled Panning.

    Attributes:
        rounds: T, the number of rounds.
        temperature: SNIP and GraSP take the loss at ``logits / temperature``.
        thresholds: sparsity bounds of the staircase's steps (ascending). As in the authors'
            code the step advances by at most one per round, when the round's sparsity
            exceeds the current step's bound (:func:`schedule_bands`).
        weights: fusion weights ``(synflow, snip, grasp)`` of each step, one more row than
            ``thresholds``; None: the authors' staircase for ``fusion``.
        fusion: ``'add'`` (``Σ p_i m_i``, the authors' default) or ``'mul'`` (``Π m_i^p_i``).
        collapse_shield: on a round whose fused mask would empty a prunable layer, keep
            SynFlow's own mask instead (:func:`shield`); True by default (jpanning's,
            not the authors': their method is ``False``).
    """

    rounds: int = flax.struct.field(pytree_node=False, default=100)
    temperature: float = flax.struct.field(pytree_node=False, default=scores.TEMPERATURE)
    thresholds: tuple = flax.struct.field(pytree_node=False, default=(0.8, 0.9, 0.98, 0.99))
    weights: Optional[tuple] = flax.struct.field(pytree_node=False, default=None)
    fusion: str = flax.struct.field(pytree_node=False, default="add")
    collapse_shield: bool = flax.struct.field(pytree_node=False, default=True)

    @property
    def staircase(self) -> tuple:
        """The fusion weights of each step (``weights``, or the authors' for ``fusion``)."""
        if self.weights is not None:
            return tuple(map(tuple, self.weights))
        return MUL_WEIGHTS if self.fusion == "mul" else ADD_WEIGHTS

    def validate(self) -> "PanningConfig":
        """Raise a one-line error for an inconsistent configuration; return self."""
        if int(self.rounds) < 1:
            raise JPanningError(f"panning rounds must be at least 1, got {self.rounds}")
        if self.fusion not in FUSIONS:
            raise JPanningError(
                f"unknown panning fusion {self.fusion!r}; choose from: {', '.join(FUSIONS)}"
            )
        if list(self.thresholds) != sorted(self.thresholds):
            raise JPanningError(f"panning thresholds must ascend, got {self.thresholds}")
        weights = self.staircase
        if len(weights) != len(self.thresholds) + 1:
            raise JPanningError(
                f"panning needs {len(self.thresholds) + 1} rows of weights for "
                f"{len(self.thresholds)} thresholds, got {len(weights)}"
            )
        if any(len(row) != len(METRICS) or min(row) < 0 for row in weights):
            raise JPanningError(
                f"each row of panning weights needs {len(METRICS)} non-negative values "
                f"({', '.join(METRICS)}), got {weights}"
            )
        return self


def scheduled_weights(sparsity, config: PanningConfig) -> jax.Array:
    """The staircase's fusion weights for a round at ``sparsity`` reached from below without
    skipping a step (traceable): the row of ``count(sparsity > thresholds)``."""
    band = jnp.sum(jnp.asarray(sparsity) > jnp.asarray(config.thresholds, jnp.float32))
    return jnp.asarray(config.staircase, jnp.float32)[band]


def schedule_bands(schedule, thresholds) -> np.ndarray:
    """The staircase step of each round, as the authors advance it (host-side).

    ``Panning`` in kangxiatao/RLPanning starts at step 0 and, before scoring each round,
    moves up one step when the round's sparsity exceeds the current step's bound: at most one
    step per round, so a short schedule that jumps over a bound lags behind
    :func:`scheduled_weights` (for T = 100 the two agree).
    """
    bands, band = [], 0
    for s in np.asarray(schedule, np.float64):
        if band < len(thresholds) and thresholds[band] < s:
            band += 1
        bands.append(band)
    return np.asarray(bands, np.int32)


def normalise(tree: PyTree, prunable: PyTree) -> PyTree:
    """``|s − mean| / std`` over all prunable entries together; zeros on the other leaves.

    The authors' ``normalization`` (kangxiatao/RLPanning, ``pruner/panning.py``): they divide
    by the signed mean first, which the z-score cancels up to sign, and take ``torch.std``
    (Bessel-corrected, ``ddof=1``), as here. Each map is first divided by its mean absolute
    value (a positive constant, which the normalisation cancels exactly), so raw SynFlow
    scores of 1e23–1e26 do not overflow float32 when squared. A constant map normalises to
    zeros.
    """
    leaves, treedef = jax.tree.flatten(tree)
    flags = jax.tree.leaves(prunable)
    chosen = jnp.concatenate([jnp.ravel(x) for x, f in zip(leaves, flags) if f])
    scale = jnp.mean(jnp.abs(chosen))
    scale = jnp.where(scale > 0, scale, 1.0)
    chosen = chosen / scale
    mean = jnp.mean(chosen)
    std = jnp.std(chosen, ddof=1) if chosen.size > 1 else jnp.zeros((), chosen.dtype)
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
    temperature: float = scores.TEMPERATURE,
    chunk_size: Optional[int] = None,
) -> dict:
    """Normalised SNIP ``θ ⊙ g`` and GraSP ``θ ⊙ Hg`` of the dense network (mask-free), with
    its loss and ``‖g‖²``, from one forward-over-reverse pass.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (train-mode BatchNorm, as the authors).
        params: the network's parameters θ.
        batch: the scoring batch ``(inputs, labels)``.
        prunable: pytree of bools.
        temperature: the loss is taken at ``logits / temperature``.
        chunk_size: see :func:`jpanning.scores.grasp`.
    Returns:
        ``{'snip', 'grasp'}`` (each normalised by :func:`normalise`), ``'loss'`` (at the
        temperature) and ``'grad_norm'`` (``Σ g²`` over the prunable leaves; the authors'
        ``_gtg`` over every conv/linear weight).
    """
    loss_fn = functools.partial(scores.cross_entropy, temperature=temperature)
    loss, g, hg = scores.loss_grad_hvp(
        apply_fn, params, batch, loss_fn=loss_fn, prunable=prunable, chunk_size=chunk_size
    )
    snip = jax.tree.map(jnp.multiply, params, g)
    grasp = jax.tree.map(jnp.multiply, params, hg)
    flags = jax.tree.leaves(prunable)
    grad_norm = sum(jnp.sum(jnp.square(x)) for x, f in zip(jax.tree.leaves(g), flags) if f)
    return {
        "snip": normalise(snip, prunable),
        "grasp": normalise(grasp, prunable),
        "loss": loss,
        "grad_norm": grad_norm,
    }


def signed_synflow(synflow_apply_fn, params, masks, input_shape: tuple, prunable) -> PyTree:
    """``θ ⊙ ∂R/∂w`` at ``w = |θ ⊙ m|``: :func:`jpanning.scores.synflow` with θ's signs."""
    ones = (jnp.ones((1, *input_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
    flow = scores.synflow(synflow_apply_fn, params, ones, masks=masks, prunable=prunable)
    return jax.tree.map(lambda f, p: f * jnp.sign(p), flow, params)


def fuse(maps: dict, weights: jax.Array, fusion: str = "add") -> PyTree:
    """``Σ_i p_i · maps_i`` (``'add'``) or ``Π_i maps_i ** p_i`` (``'mul'``) over
    :data:`METRICS`; the maps are normalised (non-negative), and ``0 ** 0 = 1`` as in torch."""
    if fusion not in FUSIONS:
        raise JPanningError(f"unknown panning fusion {fusion!r}; choose from: {', '.join(FUSIONS)}")
    if fusion == "mul":
        combine = lambda a, b, c: a ** weights[0] * b ** weights[1] * c ** weights[2]
    else:
        combine = lambda a, b, c: weights[0] * a + weights[1] * b + weights[2] * c
    return jax.tree.map(combine, *(maps[m] for m in METRICS))


def fused_scores(
    synflow_apply_fn: Callable,
    params: PyTree,
    masks: PyTree,
    dense: dict,
    weights: jax.Array,
    input_shape: tuple,
    *,
    prunable: PyTree,
    fusion: str = "add",
) -> PyTree:
    """:func:`fuse` of the normalised signed SynFlow at ``masks`` with the dense maps.

    Args:
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow.
        params: θ.
        masks: the current masks (SynFlow is taken on the ``|θ ⊙ m|``-network).
        dense: :func:`dense_metrics` (already normalised).
        weights: ``[3]`` fusion weights in :data:`METRICS` order.
        input_shape: one example's shape (SynFlow feeds a single all-ones example).
        prunable: pytree of bools.
        fusion: ``'add'`` or ``'mul'`` (:func:`fuse`).
    """
    flow = normalise(
        signed_synflow(synflow_apply_fn, params, masks, input_shape, prunable), prunable
    )
    return fuse({"synflow": flow, "snip": dense["snip"], "grasp": dense["grasp"]}, weights, fusion)


def shield(masks: PyTree, weights: jax.Array, synflow_masks: PyTree, prunable: PyTree):
    """The collapse shield of one round: where ``masks`` empties a prunable layer, the mask
    SynFlow reaches at this round instead (traceable).

    SynFlow here is the method of Tanaka et al. 2020 (:func:`synflow_round`: the masked
    network's flow, pruned weights stay pruned), run as its own trajectory beside the fused
    one. Falling back to its mask, rather than to SynFlow scored at the fused mask, keeps
    the guarantee that a shielded screen empties a layer only where SynFlow would: once the
    fused rounds have starved a residual stage, scoring at that mask (Panning's own signed
    SynFlow, with revival, included) empties it too.

    Args:
        masks: the round's mask from the fused scores.
        weights: ``[3]`` the fusion weights that chose it.
        synflow_masks: SynFlow's mask at this round (same structure).
        prunable: pytree of bools.
    Returns:
        ``(masks, weights, shielded)``: ``shielded`` is a bool scalar; when it is set,
        ``masks`` is ``synflow_masks`` and ``weights`` :data:`SYNFLOW_ALONE`.
    """
    shielded = masks_lib.any_empty(masks, prunable)
    masks = jax.tree.map(lambda a, b: jnp.where(shielded, a, b), synflow_masks, masks)
    weights = jnp.where(shielded, jnp.asarray(SYNFLOW_ALONE, weights.dtype), weights)
    return masks, weights, shielded


def synflow_round(synflow_apply_fn, params, masks, sparsity, input_shape: tuple, *, prunable,
                  select: Callable) -> PyTree:  # fmt: skip
    """One round of SynFlow (Tanaka et al. 2020; ``run.py --method synflow``): the flow of
    the masked ``|θ|``-network fed all ones, pruned weights kept out, then ``select`` at
    ``sparsity`` (what :func:`shield` falls back to)."""
    ones = (jnp.ones((1, *input_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
    flow = scores.synflow(synflow_apply_fn, params, ones, masks=masks, prunable=prunable)
    flow = jax.tree.map(lambda x, m: jnp.where(m != 0, x, -jnp.inf), flow, masks)
    return select(flow, sparsity)


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
    batches=None,
) -> tuple[PyTree, dict]:
    """Hand-scheduled Panning: T rounds of fused scoring and top-k, with revival.

    Args:
        apply_fn: train-mode ``apply_fn`` for SNIP and GraSP.
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow.
        params: θ at initialization.
        batch: the scoring batch ``(inputs, labels)`` of every round when ``batches`` is None.
        sparsity: final fraction of prunable weights removed, in [0, 1).
        prunable: pytree of bools.
        config: :class:`PanningConfig`.
        scope: ``'global'`` (the authors') or ``'layer'``.
        chunk_size: see :func:`jpanning.scores.grasp`.
        weights_fn: ``weights_fn(round, sparsity) -> [3]`` overrides the hand schedule.
        batches: ``(inputs [P, B, ...], labels [P, B])``: round t scores SNIP and GraSP on
            batch ``t mod P``. ``P = T`` fresh batches are the authors' setting (a new batch
            every round); each distinct batch is scored once.
    Returns:
        ``(masks, trace)``: the final masks at ``sparsity`` (``int(n (1 − s))`` kept, the
        authors' floor), and per round the sparsity, the fusion weights used (SynFlow's
        alone on a shielded round), whether the collapse shield acted and the number of
        weights revived (kept now, pruned before).
    """
    config.validate()
    schedule = masks_lib.exponential_schedule(sparsity, config.rounds)
    if batches is None:
        batches = tuple(jnp.asarray(x)[None] for x in batch)
    num_batches = int(np.shape(batches[0])[0])
    input_shape = tuple(np.shape(batches[0])[2:])
    select = functools.partial(masks_lib.topk, prunable=prunable, scope=scope, rounding="floor")
    staircase = jnp.asarray(config.staircase, jnp.float32)
    bands = schedule_bands(schedule, config.thresholds)

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
    def one_round(params, dense, masks, synflow_masks, t, s, band):
        p = staircase[band] if weights_fn is None else weights_fn(t, s)
        fused = fused_scores(
            synflow_apply_fn,
            params,
            masks,
            dense,
            p,
            input_shape,
            prunable=prunable,
            fusion=config.fusion,
        )
        new = select(fused, s)
        shielded = jnp.zeros((), bool)
        if config.collapse_shield:  # SynFlow's own trajectory, the shield's fallback
            synflow_masks = synflow_round(
                synflow_apply_fn, params, synflow_masks, s, input_shape, prunable=prunable,
                select=select,
            )  # fmt: skip
            new, p, shielded = shield(new, p, synflow_masks, prunable)
        return (
            new,
            synflow_masks,
            {
                "sparsity": s,
                "weights": p,
                "shielded": shielded,
                "revived": masks_lib.revived(masks, new, prunable),
            },
        )

    # Rounds are separate jitted calls in a host loop (masks stay on the device), as in
    # jpanning.pruning.iterative_masks (a user's model with lax's convolution would run many
    # times slower in a lax.scan body on XLA:CPU).
    cached = {}
    masks, trace = masks_lib.ones_like(params), []
    synflow_masks = masks if config.collapse_shield else None
    for t, s in enumerate(schedule):
        b = t % num_batches
        dense = cached.get(b)
        if dense is None:
            maps = dense_fn(params, (batches[0][b], batches[1][b]))
            dense = {"snip": maps["snip"], "grasp": maps["grasp"]}
            if num_batches < config.rounds:  # scored again in a later round: keep it
                cached[b] = dense
        masks, synflow_masks, info = one_round(
            params, dense, masks, synflow_masks, jnp.int32(t), s, jnp.int32(bands[t])
        )
        trace.append(info)
    return masks, jax.tree.map(lambda *xs: jnp.stack(xs), *trace)


def score_pool(dataset, samples_per_class: int, pool_size: int, seed: int):
    """``pool_size`` class-balanced scoring batches, stacked: ``[P, B, ...]`` and ``[P, B]``.

    Batch ``i`` is :func:`jpanning.data.scoring_batch` with seed ``seed + i``, so batch 0 is
    the one the other methods score on.
    """

    batches = [
        data.scoring_batch(dataset, samples_per_class, seed=seed + i) for i in range(pool_size)
    ]
    return np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
