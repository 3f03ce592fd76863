"""Connectivity of a pruned network: the kept weights that still lie on an input-to-output path.

:func:`effective_masks` marks them, :func:`effective_sparsity` counts the rest as pruned and
:func:`collapsed_layers` names the prunable layers left with none (Vysogorets & Kempe 2021,
"Connectivity matters: neural network pruning through the lens of effective sparsity").
Masks and ``apply_fn`` follow :mod:`jpanning.scores`' conventions; ``jpanning.scores``
re-exports these three names.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jpanning import leaves as leaves_lib, masks as masks_lib

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def effective_masks(
    apply_fn: ApplyFn, masks: PyTree, input_shape: Sequence[int], *, prunable=None, dtype=None
) -> PyTree:
    """The kept weights that lie on some input-to-output path of kept weights.

    Vysogorets & Kempe 2021, "Connectivity matters: neural network pruning through the lens
    of effective sparsity". The network is evaluated with every prunable kernel replaced by
    its mask (scaled per layer by its mean gain, as in :func:`jpanning.scores.synflow`) and
    every other leaf (biases, norm scales and shifts) by one. ``D`` is the derivative of the summed outputs
    along the all-ones input, ``D = ∂/∂t Σ f(t·1)``: every term of it is the product of the
    weights along one input-to-output path, all non-negative, so ``∂D/∂m_q ≠ 0`` exactly when
    weight q is on such a path. Differentiating along the input (rather than ``Σ f(1)``
    itself) drops paths that start at a bias, which carry no signal from the data; biases of
    one keep every ReLU strictly active. ``apply_fn`` must be in eval mode, with BatchNorm
    running statistics as at initialization (mean 0, variance 1) or at least non-negative
    affine maps; a max-pool routes the derivative to one element of each window, which is
    exact for weight-shared convolutions fed a constant input.

    Args:
        apply_fn: ``apply_fn(params, x) -> outputs`` (eval mode).
        masks: 0/1 pytree shaped like the params (only shapes and prunable leaves are read).
        input_shape: one example's shape, without the batch axis, e.g. ``(32, 32, 3)``.
        prunable: pytree of bools (default ``jpanning.masks.prunable_tree(masks)``).
        dtype: compute dtype (float64 needs ``jax.enable_x64``); default the masks' dtype, or
            float32 for integer or bool masks.
    Returns:
        A mask pytree like ``masks`` (same dtypes): 1 where a prunable weight is kept and
        effective, 0 elsewhere on prunable leaves, ones on the others.
    """
    flags = leaves_lib.prunable_flags(masks, prunable)
    return _effective_masks(apply_fn, masks, tuple(input_shape), tuple(flags), dtype)


def _effective_masks(apply_fn, masks, input_shape: tuple, flags: tuple, dtype):
    flat, treedef = jax.tree_util.tree_flatten_with_path(masks)
    paths, leaves = [path for path, _ in flat], [x for _, x in flat]
    reference = jnp.asarray(leaves[0])
    if not jnp.issubdtype(reference.dtype, jnp.floating):
        reference = reference.astype(jnp.float32)
    dtype = leaves_lib.compute_dtype(dtype, reference)
    kept = [(jnp.asarray(x) != 0).astype(dtype) for x in leaves]
    scale = [
        leaves_lib.layer_gain(k, leaves_lib.fan_out_axis(path)) if f else None
        for path, k, f in zip(paths, kept, flags)
    ]
    x0 = jnp.ones((1,) + input_shape, dtype)

    def input_flow(kept_leaves):
        weights = treedef.unflatten(
            [k / c if f else jnp.ones_like(k) for k, c, f in zip(kept_leaves, scale, flags)]
        )
        return jax.jvp(lambda x: jnp.sum(apply_fn(weights, x)), (x0,), (x0,))[1]

    flow = jax.grad(input_flow)(kept)
    out = [
        ((g != 0) & (k != 0)).astype(jnp.result_type(x))
        if f
        else jnp.ones(np.shape(x), jnp.result_type(x))
        for g, k, x, f in zip(flow, kept, leaves, flags)
    ]
    return treedef.unflatten(out)


# One compilation per (apply_fn, input shape, prunable flags, dtype), reused across calls.
_effective_masks_jit = jax.jit(_effective_masks, static_argnums=(0, 2, 3, 4))


def effective_sparsity(
    apply_fn: ApplyFn, masks: PyTree, input_shape: Sequence[int], *, prunable=None, dtype=None
) -> jax.Array:
    """Fraction of prunable weights that are pruned **or** on no input-to-output path.

    Args: as :func:`effective_masks`.
    Returns:
        A scalar in [0, 1]; at least the direct sparsity of ``masks``.
    """
    flags = leaves_lib.prunable_flags(masks, prunable)
    effective = effective_masks(apply_fn, masks, input_shape, prunable=prunable, dtype=dtype)
    chosen = [x for x, f in zip(jax.tree.leaves(effective), flags) if f]
    total = sum(math.prod(np.shape(x)) for x in chosen)
    alive = sum(jnp.sum(x != 0) for x in chosen)
    return (total - alive) / total  # exactly 0 when every weight is effective


def collapsed_layers(
    apply_fn: ApplyFn, masks: PyTree, input_shape: Sequence[int], *, prunable=None
) -> list[str]:
    """Paths (``'block1/conv1/kernel'``) of prunable layers with no effective weight left.

    Host-side: runs :func:`effective_masks` under ``jax.jit`` (compiled once per apply_fn,
    input shape and prunable set) and returns Python strings. In a
    chain without skips one collapsed layer disconnects every layer; in a ResNet a collapsed
    residual branch leaves the rest connected through the shortcuts.

    Args: as :func:`effective_masks`.
    Returns:
        Paths in tree-flattening order; empty when every prunable layer keeps a path.
    """
    flags = leaves_lib.prunable_flags(masks, prunable)
    effective = _effective_masks_jit(apply_fn, masks, tuple(input_shape), tuple(flags), None)
    flat, _ = jax.tree_util.tree_flatten_with_path(effective)
    return [
        masks_lib.path_str(path)
        for (path, x), f in zip(flat, flags)
        if f and not np.any(np.asarray(x))
    ]
