"""Pruning methods: a registry mapping ``run.py --method NAME`` to a function returning masks.

A method is ``method(problem: PruneProblem) -> masks``: everything it may need (the model, its
initial variables, a scoring batch, the target sparsity, the prunable set, a key) comes in
one :class:`PruneProblem`, so adding a method never changes the CLI. Register your own with
``register_method('name', fn)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jpanning import masks as masks_lib
from jpanning.errors import JPanningError


@dataclasses.dataclass(frozen=True)
class PruneProblem:
    """What a pruning method is given.

    Attributes:
        model: the Flax module.
        variables: ``{'params', 'batch_stats'}`` at initialization.
        batch: the scoring batch ``(images, labels)`` (see ``jpanning.data.scoring_batch``).
        sparsity: fraction of prunable weights to remove, in (0, 1).
        prunable: pytree of bools from ``jpanning.masks.prunable_tree``.
        key: PRNG key for methods that draw random numbers.
        scope: 'global' (one ranking over all layers) or 'layer' (same sparsity per layer).
        options: method-specific settings (e.g. the number of rounds).
    """
    model: nn.Module
    variables: dict
    batch: tuple
    sparsity: float
    prunable: Any
    key: jax.Array
    scope: str = "global"
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self):
        return self.variables["params"]


Method = Callable[[PruneProblem], Any]
METHODS: dict[str, Method] = {}


def register_method(name: str, fn: Method | None = None):
    """Register ``fn`` under ``name``; usable as a decorator ``@register_method('x')``."""
    if fn is None:
        return functools.partial(register_method, name)
    METHODS[name] = fn
    return fn


def prune(name: str, problem: PruneProblem):
    """Run method ``name`` and return its masks (computed, on the host side of ``jit``)."""
    if name not in METHODS:
        raise JPanningError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return jax.block_until_ready(METHODS[name](problem))


def masks_from_scores(scores, problem: PruneProblem):
    """Top-k masks of a score pytree at the problem's sparsity and scope (jitted once)."""
    select = jax.jit(functools.partial(masks_lib.topk, prunable=problem.prunable,
                                                                          scope=problem.scope))
    return select(scores, problem.sparsity)


@register_method("dense")
def dense(problem: PruneProblem):
    """No pruning: the all-ones mask (the dense baseline, trained with the same recipe)."""
    return masks_lib.ones_like(problem.params)


@register_method("random")
def random(problem: PruneProblem):
    """Uniformly random masks: i.i.d. uniform scores, then the exact top-k."""
    leaves, treedef = jax.tree.flatten(problem.params)
    keys = jax.random.split(problem.key, len(leaves))
    scores = treedef.unflatten([jax.random.uniform(k, x.shape) for k, x in zip(keys, leaves)])
    return masks_from_scores(scores, problem)


@register_method("magnitude")
def magnitude(problem: PruneProblem):
    """Keep the largest |θ| at initialization."""
    return masks_from_scores(jax.tree.map(jnp.abs, problem.params), problem)
