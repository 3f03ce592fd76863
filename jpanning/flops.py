"""FLOPs of one forward pass through the prunable layers, dense and as left by a mask.

A kernel weight is used once per output position of its layer: a 3x3 convolution weight in a
layer with a 16x16 output map takes part in 256 multiply-adds per image, a dense weight in one.
Pruning a weight removes those multiply-adds, so the FLOPs a mask leaves are
``sum over layers of 2 * kept weights * output positions`` (a multiply-add counted as 2
FLOPs). BatchNorm, biases, activations, pooling and parameter-free shortcuts are not counted:
they cost well under 1% of a ResNet's or VGG's convolutions and pruning does not change them.

Output shapes come from Flax's ``capture_intermediates`` under ``jax.eval_shape``: nothing is
computed, and any Flax model whose kernels live in Conv/Dense-like modules named in the params
tree works.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jpanning.errors import JPanningError


def output_positions(
    model: nn.Module, variables: dict, input_shape: Sequence[int], **apply_kwargs: Any
) -> dict[tuple, int]:
    """Output positions per image of every module: ``{module path: prod(out.shape[1:-1])}``.

    Args:
        model: a Flax module.
        variables: its variables (only shapes are used).
        input_shape: one example's shape, e.g. ``(32, 32, 3)``.
        **apply_kwargs: passed to ``model.apply`` (default ``train=False``).
    Returns:
        Module path (a tuple of names, as in the params tree) to the number of positions at
        which the module's output is computed per example: H*W for a conv, 1 for a dense layer.
    """
    apply_kwargs = {"train": False} | apply_kwargs
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def capture(v, x):
        _, state = model.apply(
            v, x, capture_intermediates=True, mutable=["intermediates"], **apply_kwargs
        )
        return state["intermediates"]

    flat = traverse_util.flatten_dict(jax.eval_shape(capture, variables, x))
    return {
        path[:-1]: int(np.prod(out[0].shape[1:-1]))
        for path, out in flat.items()
        if path[-1] == "__call__" and hasattr(out[0], "shape")
    }


def forward_flops(
    model: nn.Module,
    variables: dict,
    masks: Any,
    prunable: Any,
    input_shape: Sequence[int],
    **apply_kwargs: Any,
) -> dict:
    """FLOPs per image through each prunable kernel, dense and with ``masks`` applied.

    Args:
        model, variables: the Flax model and its variables (``variables['params']`` gives the
            tree that ``masks`` and ``prunable`` are shaped like).
        masks: 0/1 pytree shaped like the params (the dense network: all ones).
        prunable: the bool pytree of :func:`jpanning.masks.prunable_tree`.
        input_shape: one example's shape.
    Returns:
        ``{'dense', 'remaining', 'fraction', 'layers': {path: {'positions', 'dense',
        'remaining'}}}`` with integer FLOP counts per image (multiply-add = 2 FLOPs).
    Raises:
        JPanningError: a prunable kernel whose module output cannot be found.
    """
    positions = output_positions(model, variables, input_shape, **apply_kwargs)
    flat = traverse_util.flatten_dict(masks)
    flags = traverse_util.flatten_dict(prunable)
    layers = {}
    for path, mask in flat.items():
        if not flags.get(path, False):
            continue
        module = path[:-1]
        if module not in positions:
            raise JPanningError(
                f"no module output found for prunable kernel {'/'.join(path)}; FLOPs are "
                "counted for kernels of Flax modules (Conv, Dense)"
            )
        per_weight = 2 * positions[module]
        layers["/".join(path)] = {
            "positions": positions[module],
            "dense": per_weight * int(np.size(mask)),
            "remaining": per_weight * int(np.count_nonzero(np.asarray(mask))),
        }
    dense = sum(v["dense"] for v in layers.values())
    remaining = sum(v["remaining"] for v in layers.values())
    return {
        "dense": dense,
        "remaining": remaining,
        "fraction": remaining / dense if dense else float("nan"),
        "layers": layers,
    }


def module_call_order(
    model: nn.Module, variables: dict, input_shape: Sequence[int], **apply_kwargs: Any
) -> list[tuple]:
    """Module paths in the order a forward pass first calls them (input to output).

    The params tree is sorted by name (``BasicBlock_10`` before ``BasicBlock_2``, the stem
    after the blocks); layer-by-layer methods such as PuRL walk the network in this order
    instead. Traced with ``jax.eval_shape``: nothing is computed.
    """
    apply_kwargs = {"train": False} | apply_kwargs
    order: list[tuple] = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            path = tuple(context.module.path)
            if path not in order:
                order.append(path)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
    return order


def prunable_layer_order(
    model: nn.Module, variables: dict, prunable: Any, input_shape: Sequence[int]
) -> list[str]:
    """Paths (``'block/conv/kernel'``) of the prunable kernels in forward order."""
    order = {path: i for i, path in enumerate(module_call_order(model, variables, input_shape))}
    flags = traverse_util.flatten_dict(prunable)
    kernels = [path for path, flag in flags.items() if flag]
    missing = [p for p in kernels if p[:-1] not in order]
    if missing:
        raise JPanningError(
            f"no module call found for prunable kernel {'/'.join(missing[0])}; layers are "
            "ordered by the Flax modules a forward pass calls"
        )
    return ["/".join(p) for p in sorted(kernels, key=lambda p: order[p[:-1]])]
