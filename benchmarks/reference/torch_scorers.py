"""SNIP, GraSP (double backward) and SynFlow in PyTorch, as the pruning literature runs them.

Reference computations for ``benchmarks/scorers.py``; they follow the same definitions as
``jpanning.scores`` on a dense network (no masks), with the same signs:

* SNIP (Lee et al. 2019): ``|θ ⊙ ∂L/∂θ|``.
* GraSP (Wang et al. 2020): g = ∂L/∂θ with ``create_graph=True``, then the gradient of
  ``z = Σ g · stop(g)`` is ``H g``; the score is ``θ ⊙ Hg`` (keep the highest), the negative
  of the paper's ``S(−θ)``.
* SynFlow (Tanaka et al. 2020): parameters replaced by their absolute values, BatchNorm in
  eval mode, one all-ones input, ``R = Σ f(1)``, score ``|θ ⊙ ∂R/∂θ|``; float32, no rescaling.

Scores cover the prunable weights only (conv and linear weights), in ``model.modules()``
order. SNIP and GraSP run with BatchNorm in train mode (batch statistics); the running
statistics are left untouched (momentum 0 while scoring), as JAX discards their update.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextlib.contextmanager
def _train_mode_frozen_stats(model: nn.Module):
    """BatchNorm normalises with batch statistics but does not update its running ones."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    weights = prunable_weights(model)
    with _train_mode_frozen_stats(model):
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, weights)
    return [(w * g).abs().detach() for w, g in zip(weights, grads)]


def _grad_and_hvp(model, x, y):
    weights = prunable_weights(model)
    with _train_mode_frozen_stats(model):
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        z = sum((g * g.detach()).sum() for g in grads)
        hg = torch.autograd.grad(z, weights)
    return weights, grads, hg


def grasp(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    weights, _, hg = _grad_and_hvp(model, x, y)
    return [(w * h).detach() for w, h in zip(weights, hg)]


def synflow(model: nn.Module, input_shape) -> list[torch.Tensor]:
    """``input_shape`` is one example's (C, H, W)."""
    params = list(model.parameters())
    signs = [torch.sign(p.detach()) for p in params]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for p in params:
                p.abs_()
        weights = prunable_weights(model)
        ones = torch.ones((1, *input_shape), dtype=params[0].dtype, device=params[0].device)
        grads = torch.autograd.grad(model(ones).sum(), weights)
        scores = [(w * g).abs().detach() for w, g in zip(weights, grads)]
    finally:
        with torch.no_grad():
            for p, s in zip(params, signs):
                p.mul_(s)
        model.train(was_training)
    return scores


def fused(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """All three, sharing GraSP's first gradient for SNIP (what a careful PyTorch user does)."""
    weights, grads, hg = _grad_and_hvp(model, x, y)
    return {
        "snip": [(w * g).abs().detach() for w, g in zip(weights, grads)],
        "grasp": [(w * h).detach() for w, h in zip(weights, hg)],
        "synflow": synflow(model, tuple(x.shape[1:])),
    }


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The bare forward pass SNIP and GraSP start from (train mode, no graph kept)."""
    with _train_mode_frozen_stats(model), torch.no_grad():
        return model(x)
