"""The Panning environment: one Panning round per step, in gymnax's functional shape.

An agent (RL Panning) picks the fusion weights of each round; the environment prunes with
them, then measures the masked network against the dense one on a new scoring batch and
rewards masks that keep the dense network's loss and gradient norm while reaching the
round's scheduled sparsity. Its observation, reward and episode are the authors' ``PruningEnv``
(Kang, Li, Yao, Li 2022; kangxiatao/RLPanning, ``pruner/panning.py``), term by term
(``docs/rlpanning_env.md`` has the table, with each option that departs from it)::

    env = PanningEnv(train_apply_fn, eval_apply_fn, prunable, input_shape)
    env_params = env.make_params(params, inputs, labels)            # warm-up ranges too
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)
    obs, state = env.reset_after(key, state, env_params)            # next episode

``reset`` and ``step`` are pure: the network's params and scoring data travel in
:class:`EnvParams`, the episode in :class:`EnvState` (both ``flax.struct`` dataclasses), so
each is one jittable function with no host round-trip and ``jax.vmap`` runs a batch of
environments. The normalisation ranges of the loss and ``‖g‖²`` outlive episodes, as in the
authors' code: :meth:`PanningEnv.make_params` starts them from 10 warm-up batches,
every step widens them, and :meth:`PanningEnv.reset_after` carries them into the next
episode (``reset`` starts from the warm-up ranges, or from ``ranges``).

A step (round ``t``, 0-based; ``ρ_t = 1 − (1 − s) ** ((t + 1) / T)``, ``s`` the episode's
target sparsity):

1. prune: fuse the normalised SynFlow/SNIP/GraSP maps scored at the previous step (or at
   reset) with ``p = (clip(a, −1, 1) + 1) / 2`` and keep the top ``max(int(n (1 − ρ_t)), 1)``;
2. draw a scoring batch; the dense network's ``L`` and ``G = ‖g‖²`` on it (loss on
   ``logits / 200``), and its SNIP and GraSP maps for the next step;
3. SynFlow on the ``|θ ⊙ m|``-network for the next step; the effective sparsity ``ρe`` from
   the same pass (a kept weight is alive when ``|θ ⊙ m| · ∂R/∂w ≠ 0``; biases and norm
   parameters are positive, as in the authors' SynFlow network);
4. the masked network's ``Ls`` and ``Gs`` on the same batch (``‖∂L/∂w‖²`` at ``w = θ ⊙ m``
   over whole tensors, pruned positions included);
5. widen the ranges with ``L, Ls`` and ``G, Gs``; ``N(x) = (x − lo) / (hi − lo)``.

Observation (7 values): ``N(L)``, ``N(G)``, ``r_loss = |Ls − L| / (hi − lo)``,
``r_gtg = |Gs − G| / (hi − lo) / 5``, ``ρe``, ``ρ_t``, ``t / T``. ``reset`` observes
``(N(L), N(G), 0, 0, 0, 0, 0)`` on its own batch, with the ranges unwidened.
Reward: ``−100 |ρ_t − ρe| − r_loss − r_gtg``; a step that leaves no weight alive (``ρe = 1``)
loses ``(1 − t / T) · T`` more and ends the episode. Round T ends it too: T is the real
horizon of the process (time is observed), so both are ``terminated`` (no bootstrapping);
``truncated`` is always False.

Scoring batches: ``scoring='pool'`` (the default) draws each step's batch from a pool of P
batches whose dense maps, ``L`` and ``G`` :meth:`PanningEnv.make_params` computed once, so a
step costs SynFlow, the top-k and the masked ``Ls``/``Gs`` pass; ``scoring='fresh'`` draws a
new class-balanced batch from the training data every step and recomputes the dense maps
(GraSP's Hessian-vector product) as the authors do. See ``docs/rlpanning_env.md`` for the
measured comparison.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jpanning import masks as masks_lib, panning, scores
from jpanning.errors import JPanningError

PyTree = Any
OBS_SIZE = 7  # the authors' observation; observe_gap adds one (:func:`obs_size`)
ACTION_SIZE = len(panning.METRICS)
SCORINGS = ("pool", "fresh")
EFFECTIVES = ("authors", "paths")
WARMUP_BATCHES = 10  # the authors' PruningEnv.__init__

# The authors' target distributions: U(0.8, 1) early, then half U(0.9, 1), half U(0.98, 1).
TARGETS_EARLY = ((1.0, 0.8, 1.0),)
TARGETS_LATE = ((0.5, 0.9, 1.0), (0.5, 0.98, 1.0))
MAX_TARGET = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def obs_size(observe_gap: bool = False) -> int:
    """The observation's length: the authors' 7, and the gap's entry with ``observe_gap``."""
    return OBS_SIZE + int(bool(observe_gap))


@flax.struct.dataclass
class Ranges:
    """The normalisation ranges ``[lo, hi]`` of the loss and of ``‖g‖²``; they only widen."""

    loss: jax.Array
    grad_norm: jax.Array

    def widen(self, losses, grad_norms) -> "Ranges":
        return Ranges(_widen(self.loss, losses), _widen(self.grad_norm, grad_norms))


@flax.struct.dataclass
class EnvParams:
    """Everything an episode reads, passed into ``reset``/``step`` (never closed over).

    Attributes:
        net_params: θ, the network at initialization.
        inputs, labels: ``'pool'``: the scoring batches ``[P, B, ...]``, ``[P, B]``;
            ``'fresh'``: the training examples ``[N, ...]``, ``[N]``.
        class_index, class_count: ``'fresh'``: each class's example indices ``[C, M]``
            (padded) and counts ``[C]``.
        snip, grasp: ``'pool'``: normalised dense maps per pool batch (leaves ``[P, ...]``).
        dense_loss, dense_grad_norm: ``'pool'``: ``[P]``, the dense network's ``L`` and ``G``.
        dense_synflow: the normalised signed SynFlow map of the dense network (reset's).
        ranges: the warm-up :class:`Ranges`.
        target_probs, target_low, target_high: ``[K]``, a mixture of uniform distributions
            the episode's target sparsity is drawn from.
        alpha: weight of ``|ρ_t − ρe|`` in the reward (100).
        gtg_scale: divisor of the gradient-norm gap (5).
        rounds: T (static).
        scoring: ``'pool'`` or ``'fresh'`` (static).
        samples_per_class: examples of each class in a fresh batch (static).
        effective: ``'authors'`` (alive in the positive SynFlow network, biases included) or
            ``'paths'`` (on an input-to-output path, :func:`jpanning.scores.effective_sparsity`)
            (static).
        fusion: ``'add'`` or ``'mul'`` (:func:`jpanning.panning.fuse`) (static).
        reset_observes_sparsity: ``reset`` observes ``ρ_0`` (so the first action knows the
            target) instead of the authors' 0 (static).
        shield_masks: with ``collapse_shield``, SynFlow's mask at the coming step's sparsity
            (:meth:`PanningEnv.synflow_alone`), the shield's fallback; None otherwise.
        observe_gap: the observation gains an eighth entry, the step's signed gap
            ``α (ρe − ρ_t)``, whose absolute value is the reward term ``r_sparsity`` (0 at
            reset) (static; a jpanning option, off as in the authors' code, whose observation
            carries ``ρe`` and ``ρ_t`` apart: at 0.99 they differ by about 1e-4, which a
            network reads poorly; ``benchmarks.search_diagnostics``).
        collapse_shield: on a step whose fusion weights would empty a prunable layer, take
            ``shield_masks`` instead (:func:`jpanning.panning.shield`) (static). Off in a
            search (the authors' environment, whose collapse penalty the agent learns from);
            screening with a trained policy turns it on (:func:`jpanning.rlpanning.screen`).
    """

    net_params: PyTree
    inputs: jax.Array
    labels: jax.Array
    class_index: jax.Array
    class_count: jax.Array
    snip: PyTree
    grasp: PyTree
    dense_loss: jax.Array
    dense_grad_norm: jax.Array
    dense_synflow: PyTree
    ranges: Ranges
    target_probs: jax.Array
    target_low: jax.Array
    target_high: jax.Array
    alpha: jax.Array
    gtg_scale: jax.Array
    shield_masks: Optional[PyTree] = None
    # the static settings: make_params gives each (its defaults are the only ones)
    rounds: int = flax.struct.field(pytree_node=False, kw_only=True)
    scoring: str = flax.struct.field(pytree_node=False, kw_only=True)
    samples_per_class: int = flax.struct.field(pytree_node=False, kw_only=True)
    effective: str = flax.struct.field(pytree_node=False, kw_only=True)
    fusion: str = flax.struct.field(pytree_node=False, kw_only=True)
    reset_observes_sparsity: bool = flax.struct.field(pytree_node=False, kw_only=True)
    observe_gap: bool = flax.struct.field(pytree_node=False, kw_only=True)
    collapse_shield: bool = flax.struct.field(pytree_node=False, default=False)

    def with_targets(self, targets: Sequence[tuple[float, float, float]]) -> "EnvParams":
        """The same params with another target distribution ``((prob, low, high), ...)``."""
        probs, low, high = _targets(targets)
        return self.replace(target_probs=probs, target_low=low, target_high=high)

    def options(self) -> dict:
        """The environment's settings as plain values (for results files)."""
        return {
            "rounds": self.rounds,
            "scoring": self.scoring,
            "pool_size": int(self.inputs.shape[0]) if self.scoring == "pool" else None,
            "samples_per_class": self.samples_per_class,
            "effective": self.effective,
            "fusion": self.fusion,
            "reset_observes_sparsity": self.reset_observes_sparsity,
            "observe_gap": self.observe_gap,
            "collapse_shield": self.collapse_shield,
            "alpha": float(self.alpha),
            "gtg_scale": float(self.gtg_scale),
        }


@flax.struct.dataclass
class EnvState:
    """One episode: the masks so far, the maps the next step prunes with, and what the
    observation is made of."""

    masks: PyTree
    round: jax.Array  # t, rounds done
    target: jax.Array  # s, the episode's target sparsity
    synflow: PyTree  # normalised maps scored at the last step (or reset)
    snip: PyTree
    grasp: PyTree
    loss: jax.Array  # L (dense), last batch
    sparse_loss: jax.Array  # Ls
    grad_norm: jax.Array  # G (dense)
    sparse_grad_norm: jax.Array  # Gs
    ranges: Ranges
    effective: jax.Array  # ρe


def _targets(targets) -> tuple[jax.Array, jax.Array, jax.Array]:
    rows = np.asarray(targets, np.float32).reshape(-1, 3)
    probs, low, high = rows[:, 0], rows[:, 1], rows[:, 2]
    if np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
        raise JPanningError(f"target probabilities must be non-negative and sum to 1: {targets}")
    if np.any(low < 0) or np.any(high > 1) or np.any(low > high):
        raise JPanningError(f"target ranges must satisfy 0 <= low <= high <= 1: {targets}")
    return jnp.asarray(probs), jnp.asarray(low), jnp.asarray(high)


def _stack(trees) -> PyTree:
    """Stack a sequence of like-shaped pytrees along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *list(trees))


def _widen(value_range, values):
    values = jnp.asarray(values)
    return jnp.stack(
        [jnp.minimum(value_range[0], jnp.min(values)), jnp.maximum(value_range[1], jnp.max(values))]
    )


def _normalised(x, value_range):
    """``(x − lo) / (hi − lo)``; 0 when the range is empty."""
    width = value_range[1] - value_range[0]
    return jnp.where(width != 0, x / jnp.where(width != 0, width, 1.0), 0.0)


def warmup_ranges(losses, grad_norms) -> Ranges:
    """The authors' starting ranges from K >= 2 warm-up batches (``PruningEnv.__init__``).

    The first batch's value ``x_0`` opens an inverted range ``[100 x_0, x_0 / 100]`` that the
    others widen: ``lo = min(100 x_0, x_1, …)``, ``hi = max(x_0 / 100, x_1, …)``.
    """

    def one(x):
        x = jnp.asarray(x)
        start = jnp.stack([x[0] * 100, x[0] / 100])
        return _widen(start, x[1:])

    return Ranges(one(losses), one(grad_norms))


class PanningEnv:
    """The static part of the environment: the network's functions and shapes.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` for the losses, SNIP and GraSP (train-mode
            BatchNorm for Flax models with BN, as the authors' ``net.train()``).
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow and the effective sparsity.
        prunable: pytree of bools like the params.
        input_shape: one example's shape, e.g. ``(32, 32, 3)``.
        scope: ``'global'`` (the authors') or ``'layer'`` top-k.
        temperature: every loss (the observed ``L``, ``Ls``, the ``‖g‖²`` and SNIP/GraSP)
            is taken at ``logits / temperature`` (the authors' 200).
        chunk_size: see :func:`jpanning.scores.grasp`.
    """

    def __init__(
        self,
        apply_fn: Callable,
        synflow_apply_fn: Callable,
        prunable: PyTree,
        input_shape: Sequence[int],
        *,
        scope: str = "global",
        temperature: float = scores.TEMPERATURE,
        chunk_size: Optional[int] = None,
    ):
        self.apply_fn = apply_fn
        self.synflow_apply_fn = synflow_apply_fn
        self.prunable = prunable
        self.input_shape = tuple(input_shape)
        self.scope = scope
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.flags = [bool(f) for f in jax.tree.leaves(prunable)]
        self._select = functools.partial(
            masks_lib.topk, prunable=prunable, scope=scope, rounding="floor"
        )
        self._loss_fn = functools.partial(scores.cross_entropy, temperature=self.temperature)

    # -- the network's measurements ------------------------------------------------------------

    def dense_batch(self, net_params, batch) -> dict:
        """The dense network on one batch: normalised ``snip``/``grasp``, ``loss``, ``grad_norm``."""
        return panning.dense_metrics(
            self.apply_fn,
            net_params,
            batch,
            prunable=self.prunable,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )

    def dense_loss_and_grad_norm(self, net_params, batch):
        """``(L, ‖g‖²)`` of the dense network (first derivatives only)."""
        return scores.loss_and_grad_norm(
            self.apply_fn,
            net_params,
            batch,
            loss_fn=self._loss_fn,
            prunable=self.prunable,
            chunk_size=self.chunk_size,
        )

    def synflow_maps(self, net_params, masks) -> tuple[PyTree, PyTree]:
        """``(normalised signed SynFlow at masks, alive)``: ``alive`` marks the kept prunable
        weights with ``|θ ⊙ m| · ∂R/∂w ≠ 0`` in the positive network (the authors'
        ``true_masks``), from the same pass."""
        ones = (jnp.ones((1, *self.input_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
        flow = scores.synflow(
            self.synflow_apply_fn, net_params, ones, masks=masks, prunable=self.prunable
        )
        signed = jax.tree.map(lambda f, p: f * jnp.sign(p), flow, net_params)
        alive = jax.tree.map(lambda f, m: (f != 0) & (m != 0), flow, masks)
        return panning.normalise(signed, self.prunable), alive

    def synflow_alone(self, net_params, masks, sparsity) -> PyTree:
        """SynFlow's next mask at ``sparsity`` from its own ``masks``
        (:func:`jpanning.panning.synflow_round`): the collapse shield's trajectory."""
        return panning.synflow_round(
            self.synflow_apply_fn, net_params, masks, sparsity, self.input_shape,
            prunable=self.prunable, select=self._select,
        )  # fmt: skip

    def _alive_fraction(self, alive) -> jax.Array:
        chosen = [x for x, f in zip(jax.tree.leaves(alive), self.flags) if f]
        total = sum(math.prod(x.shape) for x in chosen)
        return sum(jnp.sum(x, dtype=jnp.int32) for x in chosen), total

    # -- building the params ---------------------------------------------------------------

    def make_params(
        self,
        net_params: PyTree,
        inputs: jax.Array,
        labels: jax.Array,
        *,
        targets=TARGETS_EARLY,
        alpha: float = 100.0,
        gtg_scale: float = 5.0,
        rounds: int = 100,
        scoring: str = "pool",
        samples_per_class: int = 10,
        effective: str = "authors",
        fusion: str = "add",
        reset_observes_sparsity: bool = False,
        observe_gap: bool = False,
        warmup_batches: int = WARMUP_BATCHES,
        key: Optional[jax.Array] = None,
    ) -> EnvParams:
        """Score what does not depend on the mask once, and the warm-up ranges.

        Pool batches are scored one jitted call each from a host loop (one batch alive at a
        time); the warm-up ranges come from ``warmup_batches`` batches (pool batches in
        turn, or fresh draws with ``key``).

        Args:
            net_params: θ.
            inputs, labels: ``'pool'``: ``[P, B, ...]`` and ``[P, B]``, the pool;
                ``'fresh'``: ``[N, ...]`` and ``[N]``, the examples to draw batches from.
            targets: ``((prob, low, high), ...)``, the target-sparsity distribution.
            alpha, gtg_scale, rounds, scoring, samples_per_class, effective, fusion,
                reset_observes_sparsity, observe_gap: see :class:`EnvParams`.
            warmup_batches: batches for the starting ranges (the authors' 10; at least 2).
            key: PRNG key of the fresh warm-up draws (default ``jax.random.key(0)``).
        """
        if scoring not in SCORINGS:
            raise JPanningError(f"unknown scoring {scoring!r}; choose from: {', '.join(SCORINGS)}")
        if effective not in EFFECTIVES:
            raise JPanningError(
                f"unknown effective sparsity {effective!r}; choose from: {', '.join(EFFECTIVES)}"
            )
        if fusion not in panning.FUSIONS:
            raise JPanningError(
                f"unknown fusion {fusion!r}; choose from: {', '.join(panning.FUSIONS)}"
            )
        if int(rounds) < 1:
            raise JPanningError(f"rounds must be at least 1, got {rounds}")
        if int(warmup_batches) < 2:
            raise JPanningError(f"warmup_batches must be at least 2, got {warmup_batches}")
        extra = 2 if scoring == "pool" else 1
        if np.ndim(inputs) != len(self.input_shape) + extra or np.ndim(labels) != extra:
            shapes = (
                f"inputs [P, B, *{self.input_shape}] and labels [P, B]"
                if scoring == "pool"
                else f"inputs [N, *{self.input_shape}] and labels [N]"
            )
            raise JPanningError(
                f"scoring {scoring!r} takes {shapes}; got {np.shape(inputs)} and {np.shape(labels)}"
            )
        probs, low, high = _targets(targets)
        inputs, labels = jnp.asarray(inputs), jnp.asarray(labels)
        empty = jax.tree.map(lambda x: jnp.zeros((0,), jnp.float32), net_params)
        params = EnvParams(
            net_params=net_params,
            inputs=inputs,
            labels=labels,
            class_index=jnp.zeros((0, 0), jnp.int32),
            class_count=jnp.zeros((0,), jnp.int32),
            snip=empty,
            grasp=empty,
            dense_loss=jnp.zeros((0,), jnp.float32),
            dense_grad_norm=jnp.zeros((0,), jnp.float32),
            dense_synflow=jax.jit(self.synflow_maps)(net_params, masks_lib.ones_like(net_params))[
                0
            ],
            ranges=Ranges(jnp.zeros(2), jnp.zeros(2)),
            target_probs=probs,
            target_low=low,
            target_high=high,
            alpha=jnp.float32(alpha),
            gtg_scale=jnp.float32(gtg_scale),
            rounds=int(rounds),
            scoring=scoring,
            samples_per_class=int(samples_per_class),
            effective=effective,
            fusion=fusion,
            reset_observes_sparsity=bool(reset_observes_sparsity),
            observe_gap=bool(observe_gap),
        )
        if scoring == "pool":
            score = jax.jit(self.dense_batch)
            dense = _stack(score(net_params, (x, y)) for x, y in zip(inputs, labels))
            params = params.replace(
                snip=dense["snip"],
                grasp=dense["grasp"],
                dense_loss=dense["loss"],
                dense_grad_norm=dense["grad_norm"],
            )
            picks = [i % inputs.shape[0] for i in range(int(warmup_batches))]
            warm = (dense["loss"][np.asarray(picks)], dense["grad_norm"][np.asarray(picks)])
        else:
            index, count = _class_index(np.asarray(labels), int(samples_per_class))
            params = params.replace(class_index=index, class_count=count)
            key = jax.random.key(0) if key is None else key
            measure = jax.jit(
                lambda k, p: self.dense_loss_and_grad_norm(p.net_params, self.draw(k, p)[0])
            )
            warm = _stack(measure(k, params) for k in jax.random.split(key, int(warmup_batches)))
        return params.replace(ranges=warmup_ranges(*warm))

    # -- the door ----------------------------------------------------------------------------

    def assert_params(self, params: EnvParams) -> None:
        """Assert the shapes and dtypes of ``params`` (chex; trace-time, so jit-safe): the
        scoring data ``[P, B, *input_shape]``/``[P, B]`` (``'pool'``, with ``[P, ...]`` maps and
        ``[P]`` dense values) or ``[N, *input_shape]``/``[N]`` (``'fresh'``), integer labels,
        the dense SynFlow map (and, with the collapse shield, ``shield_masks``) shaped like the
        network and ``[K]`` target mixtures."""
        extra = 2 if params.scoring == "pool" else 1
        data = f"EnvParams (scoring {params.scoring!r}): inputs, labels"
        # the images may be smaller than SynFlow's input shape (jpanning.proxy scores pooled
        # images); their rank and channels must match
        chex.assert_rank(params.inputs, extra + len(self.input_shape), custom_message=data)
        chex.assert_axis_dimension(params.inputs, -1, self.input_shape[-1], custom_message=data)
        chex.assert_rank(params.labels, extra, custom_message=data)
        chex.assert_equal_shape_prefix([params.inputs, params.labels], extra, custom_message=data)
        chex.assert_type(params.labels, int, custom_message=data)
        if params.scoring == "pool":
            pool = (params.inputs.shape[0],)
            maps = "EnvParams: snip, grasp, dense_loss, dense_grad_norm"
            chex.assert_tree_shape_prefix((params.snip, params.grasp), pool, custom_message=maps)
            chex.assert_shape(
                [params.dense_loss, params.dense_grad_norm], pool, custom_message=maps
            )
        chex.assert_trees_all_equal_shapes(
            params.dense_synflow, params.net_params, custom_message="EnvParams: dense_synflow"
        )
        if params.collapse_shield:
            chex.assert_trees_all_equal_shapes(
                params.shield_masks, params.net_params, custom_message="EnvParams: shield_masks"
            )
        targets = [params.target_probs, params.target_low, params.target_high]
        chex.assert_rank(targets, 1, custom_message="EnvParams: target_probs, _low, _high")
        chex.assert_equal_shape(targets, custom_message="EnvParams: target_probs, _low, _high")

    # -- the episode -------------------------------------------------------------------------

    def sample_target(self, key, params: EnvParams) -> jax.Array:
        """Draw the episode's target sparsity from the mixture of uniforms in ``params``."""
        k_band, k_value = jax.random.split(key)
        band = jax.random.choice(k_band, params.target_probs.shape[0], p=params.target_probs)
        u = jax.random.uniform(k_value)
        target = params.target_low[band] + u * (params.target_high[band] - params.target_low[band])
        return jnp.minimum(target, MAX_TARGET)  # U(a, 1) must not round to 1 in float32

    def draw(self, key, params: EnvParams):
        """A scoring batch: ``((inputs, labels), index)``; ``index`` is the pool index
        (``'pool'``) or the examples drawn (``'fresh'``: ``samples_per_class`` of each class
        without replacement, grouped by class, like :func:`jpanning.data.scoring_batch`)."""
        if params.scoring == "pool":
            b = jax.random.randint(key, (), 0, params.inputs.shape[0])
            return (params.inputs[b], params.labels[b]), b
        num_classes, width = params.class_index.shape
        u = jax.random.uniform(key, (num_classes, width))
        u = jnp.where(jnp.arange(width) < params.class_count[:, None], u, 2.0)
        _, picks = jax.lax.top_k(-u, params.samples_per_class)
        index = jnp.take_along_axis(params.class_index, picks, axis=1).reshape(-1)
        return (params.inputs[index], params.labels[index]), index

    def _dense_on(self, key, params: EnvParams):
        """Draw a batch; the dense network's maps, L and G on it."""
        batch, index = self.draw(key, params)
        if params.scoring == "pool":
            dense = {
                "snip": jax.tree.map(lambda x: x[index], params.snip),
                "grasp": jax.tree.map(lambda x: x[index], params.grasp),
                "loss": params.dense_loss[index],
                "grad_norm": params.dense_grad_norm[index],
            }
        else:
            dense = self.dense_batch(params.net_params, batch)
        return batch, index, dense

    def observation_at_reset(self, state: EnvState, params: EnvParams) -> jax.Array:
        """``(N(L), N(G), 0, 0, 0, 0, 0)``; ``ρ_0`` in place 5 with ``reset_observes_sparsity``;
        a further 0 (the gap) with ``observe_gap``."""
        zero = jnp.zeros((), jnp.result_type(state.loss))
        fifth = (
            masks_lib.round_sparsity(state.target, 0, params.rounds).astype(zero.dtype)
            if params.reset_observes_sparsity
            else zero
        )
        return jnp.stack(
            [
                _normalised(state.loss - state.ranges.loss[0], state.ranges.loss),
                _normalised(state.grad_norm - state.ranges.grad_norm[0], state.ranges.grad_norm),
                zero,
                zero,
                zero,
                fifth,
                zero,
            ]
            + ([zero] if params.observe_gap else [])
        )

    def reset(
        self, key, params: EnvParams, target=None, ranges: Optional[Ranges] = None
    ) -> tuple[jax.Array, EnvState]:
        """A new episode: dense masks, round 0, a target drawn (or the given ``target``), the
        first batch's dense maps; ``ranges`` (default: the warm-up ranges) are not widened.

        Asserts (chex) ``params`` (:meth:`assert_params`) and a scalar ``target``.
        """
        self.assert_params(params)
        if target is not None:
            chex.assert_rank(jnp.asarray(target), 0, custom_message="reset: target")
        k_target, k_batch = jax.random.split(key)
        target = self.sample_target(k_target, params) if target is None else target
        _, _, dense = self._dense_on(k_batch, params)
        state = EnvState(
            masks=masks_lib.ones_like(params.net_params),
            round=jnp.int32(0),
            target=jnp.asarray(target, jnp.result_type(float)),  # float64 under x64
            synflow=params.dense_synflow,
            snip=dense["snip"],
            grasp=dense["grasp"],
            loss=dense["loss"],
            sparse_loss=dense["loss"],
            grad_norm=dense["grad_norm"],
            sparse_grad_norm=dense["grad_norm"],
            ranges=params.ranges if ranges is None else ranges,
            effective=jnp.zeros((), jnp.result_type(dense["loss"])),
        )
        return self.observation_at_reset(state, params), state

    def reset_after(self, key, state: EnvState, params: EnvParams) -> tuple[jax.Array, EnvState]:
        """The next episode after ``state``'s: :meth:`reset` with ``state``'s ranges."""
        return self.reset(key, params, ranges=state.ranges)

    def step(self, key, state: EnvState, action: jax.Array, params: EnvParams):
        """One Panning round with fusion weights ``p = (clip(a, −1, 1) + 1) / 2``.

        Returns:
            ``(obs, state, reward, terminated, truncated, info)``; ``info`` holds the round's
            sparsity, the fusion weights used (SynFlow's alone on a shielded step), the
            reward's terms, the kept and alive counts, the
            number of revived weights, whether the network collapsed and the ranges after the
            step (``[[loss lo, hi], [‖g‖² lo, hi]]``); with ``params.collapse_shield``, also
            ``shielded``, whether the shield acted.

        Asserts (chex) an action ``[3]``, a state whose masks are shaped like the network and
        whose round and target are scalars (the round an integer), and ``params``
        (:meth:`assert_params`).
        """
        self.assert_params(params)
        chex.assert_shape(jnp.asarray(action), (ACTION_SIZE,), custom_message="step: action")
        chex.assert_trees_all_equal_shapes(
            state.masks, params.net_params, custom_message="step: state.masks"
        )
        chex.assert_rank([state.round, state.target], 0, custom_message="step: round, target")
        chex.assert_type(state.round, int, custom_message="step: state.round")
        weights = (jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0) + 1.0) / 2.0
        net = params.net_params
        t = state.round
        sparsity = masks_lib.round_sparsity(state.target, t, params.rounds)
        maps = {"synflow": state.synflow, "snip": state.snip, "grasp": state.grasp}
        masks = self._select(panning.fuse(maps, weights, params.fusion), sparsity)
        shield = {}  # in info only where the shield is on: a search's metrics keep their shape
        if params.collapse_shield:
            masks, weights, shield["shielded"] = panning.shield(
                masks, weights, params.shield_masks, self.prunable
            )

        batch, _, dense = self._dense_on(key, params)
        synflow, alive = self.synflow_maps(net, masks)
        if params.effective == "paths":
            alive = scores.effective_masks(
                self.synflow_apply_fn, masks, self.input_shape, prunable=self.prunable
            )
        alive_count, total = self._alive_fraction(alive)
        effective = 1.0 - alive_count.astype(jnp.result_type(dense["loss"])) / total
        sparse_loss, sparse_grad_norm = scores.loss_and_grad_norm(
            self.apply_fn,
            net,
            batch,
            masks,
            loss_fn=self._loss_fn,
            prunable=self.prunable,
            chunk_size=self.chunk_size,
            whole_tensors=True,
        )
        loss, grad_norm = dense["loss"], dense["grad_norm"]
        ranges = state.ranges.widen(
            jnp.stack([loss, sparse_loss]), jnp.stack([grad_norm, sparse_grad_norm])
        )
        r_loss = _normalised(jnp.abs(sparse_loss - loss), ranges.loss)
        r_gtg = _normalised(jnp.abs(sparse_grad_norm - grad_norm), ranges.grad_norm) / (
            params.gtg_scale
        )
        dtype = jnp.result_type(loss)
        rounds = jnp.asarray(params.rounds, dtype)
        obs = jnp.stack(
            [
                _normalised(loss - ranges.loss[0], ranges.loss),
                _normalised(grad_norm - ranges.grad_norm[0], ranges.grad_norm),
                r_loss,
                r_gtg,
                effective,
                sparsity.astype(dtype),
                t.astype(dtype) / rounds,
            ]
            + (
                [params.alpha.astype(dtype) * (effective - sparsity.astype(dtype))]
                if params.observe_gap
                else []
            )
        )
        collapsed = alive_count == 0
        r_sparsity = params.alpha.astype(dtype) * jnp.abs(sparsity.astype(dtype) - effective)
        r_done = jnp.where(collapsed, (1.0 - t.astype(dtype) / rounds) * rounds, 0.0)
        reward = -r_sparsity - r_loss - r_gtg - r_done
        terminated = collapsed | (t + 1 >= params.rounds)
        new = EnvState(
            masks=masks,
            round=t + 1,
            target=state.target,
            synflow=synflow,
            snip=dense["snip"],
            grasp=dense["grasp"],
            loss=loss,
            sparse_loss=sparse_loss,
            grad_norm=grad_norm,
            sparse_grad_norm=sparse_grad_norm,
            ranges=ranges,
            effective=effective,
        )
        kept, _ = self._alive_fraction(jax.tree.map(lambda m: m != 0, masks))
        info = {
            "sparsity": sparsity,
            "weights": weights,
            "r_sparsity": r_sparsity,
            "r_loss": r_loss,
            "r_gtg": r_gtg,
            "r_done": r_done,
            "kept": kept,
            "alive": alive_count,
            "revived": masks_lib.revived(state.masks, masks, self.prunable),
            "collapsed": collapsed,
            "ranges": jnp.stack([ranges.loss, ranges.grad_norm]),
            **shield,
        }
        return obs, new, reward, terminated, jnp.zeros((), bool), info


def _class_index(labels: np.ndarray, samples_per_class: int) -> tuple[jax.Array, jax.Array]:
    """Each class's example indices ``[C, M]`` (rows padded by repetition) and counts ``[C]``."""
    if labels.ndim != 1 or labels.size == 0:
        raise JPanningError(f"fresh scoring needs labels [N]; got shape {labels.shape}")
    num_classes = int(labels.max()) + 1
    rows = [np.flatnonzero(labels == c) for c in range(num_classes)]
    short = [(c, len(r)) for c, r in enumerate(rows) if len(r) < samples_per_class]
    if short:
        c, n = short[0]
        raise JPanningError(
            f"fresh scoring batches take {samples_per_class} examples of each class; class {c} "
            f"has {n}"
        )
    width = max(len(r) for r in rows)
    index = np.stack([np.resize(r, width) for r in rows]).astype(np.int32)
    return jnp.asarray(index), jnp.asarray([len(r) for r in rows], jnp.int32)
