"""One Panning environment step in PyTorch, with a fresh scoring batch as the authors'.

The cost reference for ``benchmarks/env_step.py``: the passes of
``jpanning.env.PanningEnv.step`` with ``scoring='fresh'`` (the authors' ``PruningEnv.step``
in kangxiatao/RLPanning, where every step scores the dense network on a new batch), written
the way a careful PyTorch user writes them (``torch.func.functional_call`` for the masked and
|θ| networks, no model copies):

* prune: fuse the normalised maps of the previous step with the weights ``p``, keep the top
  ``int(n (1 − s))`` over all prunable weights;
* dense network, loss on ``logits / temperature``: the gradient with ``create_graph=True``,
  ``‖g‖²`` and GraSP's ``∂‖g‖²/∂w = 2 H g`` from it; SNIP ``θ ⊙ g`` and GraSP ``θ ⊙ 2Hg``;
* SynFlow on the ``|θ ⊙ m|`` network (eval-mode BatchNorm, one all-ones input), times the
  signed θ; the effective sparsity from the same pass (``|θ ⊙ m| · ∂R/∂w ≠ 0``);
* each map normalised as ``|s − mean| / std`` over all prunable weights (``torch.std``);
* masked network, loss on ``logits / temperature``: loss and ``‖∂L/∂w‖²`` at ``w = θ ⊙ m``
  over whole tensors.

BatchNorm runs in train mode (batch statistics) for the losses and leaves the running
statistics untouched, as ``jpanning`` does. Prunable weights are conv and linear weights in
``model.modules()`` order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmarks.reference.torch_scorers import _train_mode_frozen_stats, prunable_weights


def _names(model: torch.nn.Module) -> list[str]:
    ids = {id(w) for w in prunable_weights(model)}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def _with(model, replaced: dict) -> dict:
    """All parameters and buffers of ``model``, some parameters replaced."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    tensors.update(replaced)
    return tensors


def _loss_and_grads(model, tensors: dict, names, x, y, temperature=1.0, create_graph=False):
    with _train_mode_frozen_stats(model):
        logits = functional_call(model, tensors, (x,))
    loss = F.cross_entropy(logits / temperature, y)
    grads = torch.autograd.grad(loss, [tensors[n] for n in names], create_graph=create_graph)
    return loss, grads


def normalise(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    flat = torch.cat([m.reshape(-1) for m in maps])
    scale = flat.abs().mean()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    flat = flat / scale
    mean, std = flat.mean(), flat.std()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(m / scale - mean).abs() / std for m in maps]


def global_topk(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    flat = torch.cat([s.reshape(-1) for s in scores])
    keep = max(int(flat.numel() * (1.0 - sparsity)), 1)
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    return [m.view_as(s) for m, s in zip(mask.split([s.numel() for s in scores]), scores)]


def _input_gradient_network(model, weights: dict, names, input_shape) -> list[torch.Tensor]:
    """``∂ Σ f(1) / ∂w`` of the eval-mode network with the prunable weights ``weights``."""
    was_training = model.training
    model.eval()
    try:
        tensors = _with(model, weights)
        ones = torch.ones((1, *input_shape), device=next(iter(weights.values())).device)
        out = functional_call(model, tensors, (ones,)).sum()
        return list(torch.autograd.grad(out, [tensors[n] for n in names]))
    finally:
        model.train(was_training)


def env_step(model, maps, x, y, weights, sparsity: float, temperature: float) -> dict:
    """One fresh-batch Panning step from ``maps`` (``(synflow, snip, grasp)``, each a list in
    prunable-weight order, normalised: what the previous step scored), its losses at
    ``logits / temperature`` (the authors' 200: ``jpanning.scores.TEMPERATURE``).

    Returns the new masks, the next step's maps and the step's observation inputs (losses,
    ‖g‖², effective sparsity).
    """
    names = _names(model)
    theta = [p.detach() for p in prunable_weights(model)]
    fused = [weights[0] * a + weights[1] * b + weights[2] * c for a, b, c in zip(*maps)]
    new = global_topk(fused, sparsity)
    # Dense: loss, ‖g‖², SNIP and GraSP at the temperature, one gradient with its graph kept.
    leaves = {n: t.clone().requires_grad_() for n, t in zip(names, theta)}
    loss, g = _loss_and_grads(model, _with(model, leaves), names, x, y, temperature, True)
    grad_norm = sum((gi * gi).sum() for gi in g)
    hg = torch.autograd.grad(grad_norm, [leaves[n] for n in names])
    snip = normalise([t * gi.detach() for t, gi in zip(theta, g)])
    grasp = normalise([t * h for t, h in zip(theta, hg)])
    # SynFlow on |θ ⊙ m| with the signed θ; alive where |θ ⊙ m| · ∂R/∂w ≠ 0.
    absolute = {n: (t * m).abs().requires_grad_() for n, t, m in zip(names, theta, new)}
    flow = _input_gradient_network(model, absolute, names, x.shape[1:])
    synflow = normalise([f * t for f, t in zip(flow, theta)])
    alive = sum(((f * a.detach()) != 0).sum() for f, a in zip(flow, absolute.values()))
    # Masked network: loss and ‖∂L/∂w‖² over whole tensors.
    masked = {n: (t * m).requires_grad_() for n, t, m in zip(names, theta, new)}
    sparse_loss, g = _loss_and_grads(model, _with(model, masked), names, x, y, temperature)
    sparse_grad_norm = sum((gi**2).sum() for gi in g)
    total = sum(m.numel() for m in new)
    return {
        "masks": new,
        "maps": (synflow, snip, grasp),
        "loss": loss.detach(),
        "grad_norm": grad_norm.detach(),
        "sparse_loss": sparse_loss.detach(),
        "sparse_grad_norm": sparse_grad_norm.detach(),
        "effective": 1.0 - float(alive) / total,
    }
