"""One Panning environment step in PyTorch, recomputing the dense maps as the authors do.

The cost reference for ``benchmarks/env_step.py``: the passes of
``jpanning.env.PanningEnv.step`` with ``recompute_dense=True`` (the authors' setting in
kangxiatao/RLPanning, where every step scores the dense network again), written the way a
careful PyTorch user writes them (``torch.func.functional_call`` for the masked and |θ|
networks, no model copies):

* dense network, loss on ``logits / temperature``: the gradient with ``create_graph=True``
  and GraSP's ``Hg`` from it; SNIP ``θ ⊙ g`` and GraSP ``θ ⊙ Hg``;
* dense network, plain loss: loss and ``‖g‖²`` (prunable weights);
* SynFlow on the ``|θ ⊙ m|`` network (eval-mode BatchNorm, one all-ones input), times θ's sign;
* each map normalised as ``|s − mean| / std`` over all prunable weights (after dividing by
  the mean |s|), fused with the weights ``p``, a global top-k to the round's sparsity;
* masked network: loss and ``‖m ⊙ g‖²``;
* effective sparsity: one gradient of the mask network (weights = m, eval-mode BatchNorm,
  all-ones input); a weight is effective when it is kept and its gradient is non-zero.

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
    mean, std = flat.mean(), flat.std(unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(m / scale - mean).abs() / std for m in maps]


def global_topk(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    flat = torch.cat([s.reshape(-1) for s in scores])
    keep = flat.numel() - round(sparsity * flat.numel())
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


def env_step(model, masks, x, y, weights, sparsity: float, temperature: float = 200.0) -> dict:
    """One recompute-dense Panning step from ``masks`` (list, prunable-weight order).

    Returns the new masks and the step's observation inputs (losses, ‖g‖², effective sparsity).
    """
    names = _names(model)
    theta = [p.detach() for p in prunable_weights(model)]
    leaves = {n: t.clone().requires_grad_() for n, t in zip(names, theta)}
    # Dense: SNIP and GraSP at the temperature, one gradient with its graph kept.
    _, g = _loss_and_grads(model, _with(model, leaves), names, x, y, temperature, True)
    z = sum((gi * gi.detach()).sum() for gi in g)
    hg = torch.autograd.grad(z, [leaves[n] for n in names])
    snip = normalise([t * gi.detach() for t, gi in zip(theta, g)])
    grasp = normalise([t * h for t, h in zip(theta, hg)])
    # Dense: loss and ‖g‖² for the observation.
    loss, g = _loss_and_grads(model, _with(model, leaves), names, x, y)
    grad_norm = sum((gi * gi).sum() for gi in g)
    # SynFlow on |θ ⊙ m|, with θ's signs.
    absolute = {n: (t * m).abs().requires_grad_() for n, t, m in zip(names, theta, masks)}
    flow = _input_gradient_network(model, absolute, names, x.shape[1:])
    flow = normalise([f * a.detach() * t.sign() for f, a, t in zip(flow, absolute.values(), theta)])
    fused = [weights[0] * a + weights[1] * b + weights[2] * c for a, b, c in zip(flow, snip, grasp)]
    new = global_topk(fused, sparsity)
    # Masked network: loss and ‖m ⊙ g‖².
    masked = {n: (t * m).requires_grad_() for n, t, m in zip(names, theta, new)}
    sparse_loss, g = _loss_and_grads(model, _with(model, masked), names, x, y)
    sparse_grad_norm = sum(((gi * m) ** 2).sum() for gi, m in zip(g, new))
    # Effective sparsity: kept weights on an input-to-output path.
    mask_net = {n: m.clone().requires_grad_() for n, m in zip(names, new)}
    paths = _input_gradient_network(model, mask_net, names, x.shape[1:])
    alive = sum(((p != 0) & (m != 0)).sum() for p, m in zip(paths, new))
    total = sum(m.numel() for m in new)
    return {
        "masks": new,
        "loss": loss.detach(),
        "grad_norm": grad_norm.detach(),
        "sparse_loss": sparse_loss.detach(),
        "sparse_grad_norm": sparse_grad_norm.detach(),
        "effective": 1.0 - float(alive) / total,
    }
