"""Per-leaf facts that the scorers and the connectivity analysis share (trace-time Python).

Which leaves of a params (or masks) pytree are prunable, which axis of a weight holds its
outputs, a layer's mean gain on an all-ones input, and the compute dtype: read by
:mod:`jpanning.scores` (SynFlow's rescaling) and :mod:`jpanning.connectivity` (effective
masks) alike, so neither imports the other.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jpanning import masks as masks_lib
from jpanning.errors import JPanningError

PyTree = Any


def prunable_flags(params: PyTree, prunable: Optional[PyTree]) -> list[bool]:
    """The prunable flags as a list aligned with ``jax.tree.leaves(params)``."""
    treedef = jax.tree.structure(params)
    if prunable is None:
        prunable = masks_lib.prunable_tree(params)
    try:
        flags = treedef.flatten_up_to(prunable)
    except (ValueError, TypeError) as e:
        raise JPanningError(f"prunable does not have the params' tree structure: {e}") from None
    flags = [bool(f) for f in flags]
    if not any(flags):
        raise JPanningError(
            "no prunable leaves: the prunable filter selected nothing; name the weights "
            f"{'/'.join(masks_lib.WEIGHT_NAMES)} or pass prunable= (a pytree of bools like params)"
        )
    return flags


def fan_out_axis(path) -> int:
    """The outputs' axis of a weight: 0 for Equinox's ``weight`` [out, in, ...], else the last.

    Flax's ``kernel``, Haiku's ``w`` and plain ``x @ W`` weights have their outputs last.
    """
    return 0 if masks_lib.leaf_name(path) == "weight" else -1


def layer_gain(weights: jax.Array, axis: int = -1) -> jax.Array:
    """Mean output of one layer fed ones: ``sum(|W|) / fan_out`` (``axis`` is the outputs').

    Constant under differentiation; 1 for an empty layer so that dividing by it is safe.
    """
    gain = jnp.sum(jnp.abs(weights)) / weights.shape[axis]
    return jax.lax.stop_gradient(jnp.where(gain > 0, gain, jnp.ones_like(gain)))


def compute_dtype(dtype, reference: jax.Array):
    """``dtype`` checked (float64 needs 64-bit JAX), or ``reference``'s when None."""
    if dtype is None:
        return jnp.result_type(reference)
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise JPanningError(
            "dtype float64 needs 64-bit JAX: wrap the call in "
            "`with jax.enable_x64(True):` or set JAX_ENABLE_X64=1"
        )
    return dtype
