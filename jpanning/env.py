"""The Panning environment: one Panning round per step, in gymnax's functional shape.

An agent (RL Panning) picks the fusion weights of each round; the environment applies them
(fused score, top-k at the round's sparsity of the exponential schedule), measures the masked
network against the dense one on a scoring batch, and rewards masks that keep the dense
network's loss and gradient norm while reaching the episode's target sparsity::

    env = PanningEnv(train_apply_fn, eval_apply_fn, prunable, input_shape)
    env_params = env.make_params(params, inputs_pool, labels_pool)
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)

``reset`` and ``step`` are pure: the network's params and scoring data travel in
:class:`EnvParams`, the episode in :class:`EnvState` (both ``flax.struct`` dataclasses), so
each is one jittable function with no host round-trip and ``jax.vmap`` runs a batch of
environments. The :class:`PanningEnv` object holds only static things (apply functions, the
prunable set, shapes). It does not auto-reset: the agent's loop decides what an episode end
means (see ``terminated`` vs ``truncated``).

Observation (7 values, float32):

0. ``N(L)``: the dense network's loss on the step's batch, ``N(x) = (x − lo) / (hi − lo)``
   with ``lo, hi`` the running min/max of every loss seen in the episode (dense and masked);
1. ``N(G)``: the dense network's ``‖g‖²`` (prunable leaves), over its own running range;
2. ``|L − Ls| / (hi − lo)``: loss gap between dense and masked network (r_loss);
3. ``|G − Gs| / (hi − lo) / 5``: gradient-norm gap (r_gtg; the divisor is ``gtg_scale``);
4. ``ρe``: effective sparsity of the current mask;
5. ``ρt``: the episode's target sparsity (present from the first observation on);
6. ``t / T``: rounds done over rounds in all.

Reward: ``−α |ρt − ρe| − r_loss − r_gtg``, minus ``T − t`` when the step disconnects the
network (``ρe = 1``), which **terminates** the episode; reaching round T **truncates** it.
The dense SNIP/GraSP maps and the dense loss/‖g‖² do not depend on the mask, so
:meth:`PanningEnv.make_params` computes them once for a pool of scoring batches; a step then
pays only SynFlow, the top-k, the masked loss/‖g‖² and the effective sparsity
(``recompute_dense=True`` recomputes the dense maps every step instead, as the authors' code).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jpanning import cpu, masks as masks_lib, panning, scores
from jpanning.errors import JPanningError

PyTree = Any
OBS_SIZE = 7
ACTION_SIZE = len(panning.METRICS)

# The authors' target distributions: U(0.8, 1) early, then half U(0.9, 1), half U(0.98, 1).
TARGETS_EARLY = ((1.0, 0.8, 1.0),)
TARGETS_LATE = ((0.5, 0.9, 1.0), (0.5, 0.98, 1.0))
MAX_TARGET = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


@flax.struct.dataclass
class EnvParams:
    """Everything an episode reads, passed into ``reset``/``step`` (never closed over).

    Attributes:
        net_params: θ, the network at initialization.
        inputs, labels: the pool of scoring batches, ``[P, B, ...]`` and ``[P, B]``.
        snip, grasp: normalised dense maps per pool batch (leaves ``[P, ...]``).
        dense_loss, dense_grad_norm: ``[P]``, the dense network's loss and ‖g‖².
        target_probs, target_low, target_high: ``[K]``, a mixture of uniform distributions
            the episode's target sparsity is drawn from.
        alpha: weight of ``|ρt − ρe|`` in the reward.
        gtg_scale: divisor of the gradient-norm gap.
        rounds: T (static).
        recompute_dense: recompute the dense maps every step (static).
    """

    net_params: PyTree
    inputs: jax.Array
    labels: jax.Array
    snip: PyTree
    grasp: PyTree
    dense_loss: jax.Array
    dense_grad_norm: jax.Array
    target_probs: jax.Array
    target_low: jax.Array
    target_high: jax.Array
    alpha: jax.Array
    gtg_scale: jax.Array
    rounds: int = flax.struct.field(pytree_node=False, default=100)
    recompute_dense: bool = flax.struct.field(pytree_node=False, default=False)

    def with_targets(self, targets: Sequence[tuple[float, float, float]]) -> "EnvParams":
        """The same params with another target distribution ``((prob, low, high), ...)``."""
        probs, low, high = _targets(targets)
        return self.replace(target_probs=probs, target_low=low, target_high=high)


@flax.struct.dataclass
class EnvState:
    """One episode: the masks so far and what the observation is made of."""

    masks: PyTree
    round: jax.Array  # rounds done, t
    target: jax.Array  # ρt
    batch: jax.Array  # pool index of the last batch
    loss: jax.Array  # L (dense), last step
    sparse_loss: jax.Array  # Ls
    grad_norm: jax.Array  # G (dense)
    sparse_grad_norm: jax.Array  # Gs
    loss_range: jax.Array  # [lo, hi] of every loss seen this episode
    grad_range: jax.Array  # [lo, hi] of every ‖g‖² seen this episode
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


def _scale(x, value_range):
    width = value_range[1] - value_range[0]
    return jnp.where(width > 0, x / jnp.where(width > 0, width, 1.0), 0.0)


def _widen(value_range, *values):
    lo = jnp.minimum(value_range[0], jnp.min(jnp.stack(values)))
    hi = jnp.maximum(value_range[1], jnp.max(jnp.stack(values)))
    return jnp.stack([lo, hi])


def round_sparsity(target, round_index, rounds: int):
    """Sparsity of round ``t`` (0-based): keep fraction ``(1 − ρt) ** ((t + 1) / T)``."""
    t = jnp.asarray(round_index, jnp.float32)
    s = 1.0 - (1.0 - target) ** ((t + 1.0) / rounds)
    return jnp.where(round_index + 1 >= rounds, target, s)


class PanningEnv:
    """The static part of the environment: the network's functions and shapes.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` for the losses, SNIP and GraSP (train-mode
            BatchNorm for Flax models with BN).
        synflow_apply_fn: eval-mode ``apply_fn`` for SynFlow and the effective sparsity.
        prunable: pytree of bools like the params.
        input_shape: one example's shape, e.g. ``(32, 32, 3)``.
        scope: ``'global'`` (the authors') or ``'layer'`` top-k.
        temperature: SNIP/GraSP take the loss at ``logits / temperature``; the observed
            losses use plain cross-entropy.
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
        temperature: float = 200.0,
        chunk_size: Optional[int] = None,
    ):
        self.apply_fn = apply_fn
        self.synflow_apply_fn = synflow_apply_fn
        self.prunable = prunable
        self.input_shape = tuple(input_shape)
        self.scope = scope
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self._select = functools.partial(masks_lib.topk, prunable=prunable, scope=scope)

    # -- the dense network, per scoring batch ------------------------------------------------

    def dense_batch(self, net_params, batch) -> tuple[PyTree, PyTree, jax.Array, jax.Array]:
        """Normalised SNIP and GraSP maps, loss and ‖g‖² of the dense network on one batch."""
        maps = panning.dense_metrics(
            self.apply_fn,
            net_params,
            batch,
            prunable=self.prunable,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )
        loss, grad_norm = scores.loss_and_grad_norm(
            self.apply_fn, net_params, batch, prunable=self.prunable, chunk_size=self.chunk_size
        )
        return maps["snip"], maps["grasp"], loss, grad_norm

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
        recompute_dense: bool = False,
    ) -> EnvParams:
        """Score the pool of scoring batches once: one jitted call per batch from a host loop
        (one batch alive at a time). Not a ``lax.map``: for a network whose convolutions are
        ``lax.conv_general_dilated``, XLA:CPU runs the gradient's convolutions inside a loop
        body without their fast path (one layer's kernel gradient ~60x slower,
        ``python -m benchmarks.loop_body_conv``).

        Args:
            net_params: θ.
            inputs, labels: ``[P, B, ...]`` and ``[P, B]``, a pool of P scoring batches.
            targets: ``((prob, low, high), ...)``, the target-sparsity distribution.
            alpha, gtg_scale, rounds, recompute_dense: see :class:`EnvParams`.
        """
        if np.ndim(inputs) != len(self.input_shape) + 2 or np.ndim(labels) != 2:
            raise JPanningError(
                f"a pool of scoring batches is inputs [P, B, *{self.input_shape}] and labels "
                f"[P, B]; got {np.shape(inputs)} and {np.shape(labels)}"
            )
        if int(rounds) < 1:
            raise JPanningError(f"rounds must be at least 1, got {rounds}")
        probs, low, high = _targets(targets)
        inputs, labels = jnp.asarray(inputs), jnp.asarray(labels)
        if recompute_dense:  # only the loss and ‖g‖² are kept; maps are recomputed per step
            snip = grasp = jax.tree.map(lambda x: jnp.zeros((0,)), net_params)
            score = jax.jit(
                lambda p, x, y: scores.loss_and_grad_norm(
                    self.apply_fn, p, (x, y), prunable=self.prunable, chunk_size=self.chunk_size
                )
            )
            loss, grad_norm = _stack(score(net_params, x, y) for x, y in zip(inputs, labels))
        else:
            score = jax.jit(lambda p, x, y: self.dense_batch(p, (x, y)))
            snip, grasp, loss, grad_norm = _stack(
                score(net_params, x, y) for x, y in zip(inputs, labels)
            )
        return EnvParams(
            net_params=net_params,
            inputs=inputs,
            labels=labels,
            snip=snip,
            grasp=grasp,
            dense_loss=loss,
            dense_grad_norm=grad_norm,
            target_probs=probs,
            target_low=low,
            target_high=high,
            alpha=jnp.float32(alpha),
            gtg_scale=jnp.float32(gtg_scale),
            rounds=int(rounds),
            recompute_dense=bool(recompute_dense),
        )

    # -- the episode -------------------------------------------------------------------------

    def sample_target(self, key, params: EnvParams) -> jax.Array:
        """Draw ρt from the mixture of uniforms in ``params``."""
        k_band, k_value = jax.random.split(key)
        band = jax.random.choice(k_band, params.target_probs.shape[0], p=params.target_probs)
        u = jax.random.uniform(k_value)
        target = params.target_low[band] + u * (params.target_high[band] - params.target_low[band])
        return jnp.minimum(target, MAX_TARGET)  # U(a, 1) must not round to 1 in float32

    def observation(self, state: EnvState, params: EnvParams) -> jax.Array:
        """The 7 values described in the module docstring."""
        lo_l, lo_g = state.loss_range[0], state.grad_range[0]
        return jnp.stack(
            [
                _scale(state.loss - lo_l, state.loss_range),
                _scale(state.grad_norm - lo_g, state.grad_range),
                _scale(jnp.abs(state.loss - state.sparse_loss), state.loss_range),
                _scale(jnp.abs(state.grad_norm - state.sparse_grad_norm), state.grad_range)
                / params.gtg_scale,
                state.effective,
                state.target,
                state.round / params.rounds,
            ]
        ).astype(jnp.float32)

    def reset(self, key, params: EnvParams, target=None) -> tuple[jax.Array, EnvState]:
        """A new episode: dense masks, round 0, a target drawn (or the given ``target``)."""
        k_target, k_batch = jax.random.split(key)
        target = self.sample_target(k_target, params) if target is None else target
        b = jax.random.randint(k_batch, (), 0, params.inputs.shape[0])
        loss, grad_norm = params.dense_loss[b], params.dense_grad_norm[b]
        state = EnvState(
            masks=masks_lib.ones_like(params.net_params),
            round=jnp.int32(0),
            target=jnp.asarray(target, jnp.float32),
            batch=b,
            loss=loss,
            sparse_loss=loss,
            grad_norm=grad_norm,
            sparse_grad_norm=grad_norm,
            loss_range=jnp.stack([loss, loss]),
            grad_range=jnp.stack([grad_norm, grad_norm]),
            effective=jnp.float32(0.0),
        )
        return self.observation(state, params), state

    @staticmethod
    def compiler_options(params: EnvParams) -> dict | None:
        """XLA's ``compiler_options`` for a jitted program around :meth:`step`: in pool mode
        a step takes first derivatives only (:func:`jpanning.cpu.first_order_options`);
        ``recompute_dense`` adds GraSP's Hessian-vector product, which those options slow
        down, so it keeps the process's settings (None)."""
        return None if params.recompute_dense else cpu.first_order_options()

    def step(self, key, state: EnvState, action: jax.Array, params: EnvParams):
        """One Panning round with fusion weights ``p = (clip(a, −1, 1) + 1) / 2``.

        Returns:
            ``(obs, state, reward, terminated, truncated, info)``; ``info`` holds the round's
            sparsity, the fusion weights, the reward's terms and the number of revived weights.
        """
        weights = (jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0) + 1.0) / 2.0
        b = jax.random.randint(key, (), 0, params.inputs.shape[0])
        batch = (params.inputs[b], params.labels[b])
        net = params.net_params
        if params.recompute_dense:
            snip, grasp, loss, grad_norm = self.dense_batch(net, batch)
        else:
            snip = jax.tree.map(lambda x: x[b], params.snip)
            grasp = jax.tree.map(lambda x: x[b], params.grasp)
            loss, grad_norm = params.dense_loss[b], params.dense_grad_norm[b]
        sparsity = round_sparsity(state.target, state.round, params.rounds)
        fused = panning.fused_scores(
            self.synflow_apply_fn,
            net,
            state.masks,
            {"snip": snip, "grasp": grasp},
            weights,
            self.input_shape,
            prunable=self.prunable,
        )
        masks = self._select(fused, sparsity)
        sparse_loss, sparse_grad_norm = scores.loss_and_grad_norm(
            self.apply_fn, net, batch, masks, prunable=self.prunable, chunk_size=self.chunk_size
        )
        effective = scores.effective_sparsity(
            self.synflow_apply_fn, masks, self.input_shape, prunable=self.prunable
        ).astype(jnp.float32)
        t = state.round + 1
        new = EnvState(
            masks=masks,
            round=t,
            target=state.target,
            batch=b,
            loss=loss,
            sparse_loss=sparse_loss,
            grad_norm=grad_norm,
            sparse_grad_norm=sparse_grad_norm,
            loss_range=_widen(state.loss_range, loss, sparse_loss),
            grad_range=_widen(state.grad_range, grad_norm, sparse_grad_norm),
            effective=effective,
        )
        obs = self.observation(new, params)
        terminated = effective >= 1.0
        truncated = (t >= params.rounds) & ~terminated
        r_sparsity = params.alpha * jnp.abs(state.target - effective)
        r_done = jnp.where(terminated, (params.rounds - t).astype(jnp.float32), 0.0)
        reward = -r_sparsity - obs[2] - obs[3] - r_done
        revived = sum(
            jnp.sum((n != 0) & (o == 0))
            for o, n, f in zip(
                jax.tree.leaves(state.masks),
                jax.tree.leaves(masks),
                jax.tree.leaves(self.prunable),
            )
            if f
        )
        info = {
            "sparsity": sparsity,
            "weights": weights,
            "r_sparsity": r_sparsity,
            "r_loss": obs[2],
            "r_gtg": obs[3],
            "r_done": r_done,
            "revived": revived,
        }
        return obs, new, reward, terminated, truncated, info
