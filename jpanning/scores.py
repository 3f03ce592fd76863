"""Saliency scores for pruning at initialization, as pure functions over params pytrees.

Scorers (in :data:`SCORERS`; add yours with :func:`register_scorer`): :func:`magnitude`,
:func:`random`, :func:`snip`, :func:`grasp`, :func:`grad_norm`, :func:`synflow`.
:func:`fused` computes SNIP, GraSP and SynFlow in one call (optionally chunked);
:func:`loss_and_grad_norm` gives the masked network's loss and ``‖g‖²``. The connectivity
analysis (:func:`effective_masks`, :func:`effective_sparsity`, :func:`collapsed_layers`: the
weights and layers cut off from every input-to-output path) lives in
:mod:`jpanning.connectivity`; its names are re-exported here.

Every scorer has one signature::

    scorer(apply_fn, params, batch, *, masks=None, key=None, loss_fn=cross_entropy,
           prunable=None, ...) -> scores

* ``apply_fn(params, x) -> logits`` is any pure function (a Flax ``model.apply`` wrapped by
  the caller, or plain ``jnp``); ``batch = (inputs, labels)`` with integer labels.
  ``params`` is any pytree of float arrays: Flax linen params, Flax NNX state from
  ``nnx.split``, Haiku or Equinox params, a plain pytree (``docs/scoring.md`` shows each).
* ``masks`` has the params' tree structure (0/1 leaves, ones where never pruned); ``None``
  means dense. ``prunable`` is a pytree of Python bools (default
  ``jpanning.masks.prunable_tree(params)``: weights named ``kernel``/``w``/``weight`` of
  rank >= 2, or every leaf of rank >= 2 in a tree without such names) that says which
  leaves can be pruned.
* ``scores`` is a pytree shaped like ``params``. **Higher means more important**: every
  scorer here is meant to be fed to ``jpanning.masks.global_topk``, which keeps the highest.
  Scores of non-prunable leaves are computed but carry no meaning.
* Data scores are derivatives with respect to the **mask**, evaluated at the masked network
  ``w = θ ⊙ m``: ``∂f/∂m = θ ⊙ ∂f/∂w``. A pruned weight therefore gets a score too: what
  restoring it would be worth. Multiply by ``masks`` if pruned weights must stay pruned
  (as in iterative SynFlow).

Nothing here is jitted: wrap the call in your own ``jax.jit`` with ``apply_fn`` (and
``loss_fn``) bound by ``functools.partial``; ``jax.vmap`` over masks or keys works too::

    score = jax.jit(functools.partial(scores.snip, apply_fn))
    s = score(params, batch, masks=masks)
    many = jax.vmap(lambda m: scores.snip(apply_fn, params, batch, masks=m))(stacked_masks)

BatchNorm: scores follow whatever ``apply_fn`` does. PyTorch pruning code scores SNIP/GraSP
with batch statistics (``jpanning.models.make_apply_fn(..., train=True)``); SynFlow and the
effective-sparsity functions feed a single all-ones input and need running statistics
(``train=False``), since a one-example batch has zero variance.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jpanning import leaves as leaves_lib, masks as masks_lib
from jpanning.connectivity import (  # noqa: F401 (re-exported: scores.effective_masks etc.)
    collapsed_layers,
    effective_masks,
    effective_sparsity,
)
from jpanning.errors import JPanningError

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Scorer = Callable[..., PyTree]


# GraSP's reference code (Wang et al. 2020) and the Panning authors' divide the logits by 200
# before the loss they score and observe: the default of every ``temperature`` in jpanning.
TEMPERATURE = 200.0


def cross_entropy(logits: jax.Array, labels: jax.Array, *, temperature: float = 1.0):
    """Mean softmax cross-entropy with integer labels, the default ``loss_fn``.

    GraSP's and Panning's reference code divide the logits by :data:`TEMPERATURE` (200)
    before the loss; pass ``functools.partial(cross_entropy, temperature=TEMPERATURE)`` to
    reproduce that.

    Args:
        logits: [B, num_classes].
        labels: [B] integers.
        temperature: logits are divided by it.
    Returns:
        A scalar, the mean over the batch (chunked scoring relies on it being a mean).
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits / temperature, labels).mean()


# ----------------------------------------------------------------------------------------------
# Checks and small pytree helpers (trace-time Python only).


def _masks_or_ones(params: PyTree, masks: Optional[PyTree]) -> PyTree:
    """``masks`` cast to the params' dtypes, or ones; checks structure and shapes."""
    if masks is None:
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            _check_float(path, p)
        return masks_lib.ones_like(params)
    if jax.tree.structure(masks) != jax.tree.structure(params):
        raise JPanningError(
            "masks must have exactly the params' tree structure; got "
            f"{jax.tree.structure(masks)} for {jax.tree.structure(params)}"
        )
    for (path, p), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(masks)
    ):
        _check_float(path, p)
        if np.shape(m) != np.shape(p):
            raise JPanningError(
                f"mask {masks_lib.path_str(path)} has shape {np.shape(m)}, "
                f"its param has {np.shape(p)}"
            )
    return jax.tree.map(lambda p, m: jnp.asarray(m).astype(p.dtype), params, masks)


def _check_float(path, leaf) -> None:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise JPanningError(
            f"params leaf {masks_lib.path_str(path)} has dtype {dtype}: pass only the float "
            "parameters (Flax NNX: the params of nnx.split(model, nnx.Param, ...))"
        )


def _check_batch(batch, *, integer_labels: bool = True) -> tuple:
    """``batch`` as ``(inputs [B, ...], labels [B])``; with ``integer_labels`` (the data
    scorers' door) the labels are asserted (chex) a vector of integers, as the loss takes them."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise JPanningError(f"batch must be a pair (inputs, labels); got {type(batch).__name__}")
    inputs, labels = batch
    if np.ndim(inputs) < 1 or np.ndim(labels) < 1 or np.shape(inputs)[0] != np.shape(labels)[0]:
        raise JPanningError(
            f"inputs {np.shape(inputs)} and labels {np.shape(labels)} must share "
            "a leading batch dimension"
        )
    if integer_labels:
        message = "batch labels: integer class indices [B]"
        array = labels if hasattr(labels, "dtype") else np.asarray(labels)  # chex reads a list
        chex.assert_rank(array, 1, custom_message=message)  # as several inputs
        chex.assert_type(array, int, custom_message=message)
    return inputs, labels


def _only_prunable(tree: PyTree, flags: list[bool]) -> PyTree:
    """``tree`` with its non-prunable leaves set to zero."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([x if f else jnp.zeros_like(x) for x, f in zip(leaves, flags)])


def _sum_squares(tree: PyTree, flags: list[bool]) -> jax.Array:
    leaves = [x for x, f in zip(jax.tree.leaves(tree), flags) if f]
    return sum(jnp.sum(jnp.square(x)) for x in leaves)


# ----------------------------------------------------------------------------------------------
# Loss, gradient and Hessian-gradient products of the masked network, optionally chunked.


def _loss(weights: PyTree, apply_fn: ApplyFn, loss_fn: LossFn, batch) -> jax.Array:
    inputs, labels = batch
    return loss_fn(apply_fn(weights, inputs), labels)


def _chunked_mean(fn: Callable[[Any], PyTree], batch, chunk_size: Optional[int]) -> PyTree:
    """``fn(batch)`` for a function linear in a mean over examples, computed in chunks.

    The batch is cut into ``chunk_size`` pieces (the last one may be smaller); ``fn`` of each
    is weighted by its share of the examples and summed with ``lax.scan``, so only one chunk's
    activations are alive at a time (unrolled, XLA keeps every chunk's activations alive).
    On XLA:CPU the scan body keeps the convolutions' fast path only for
    ``jpanning.cpu.conv_general_dilated`` (the models' convolution), whose custom derivatives
    do what XLA does not do in a loop body (``python -m benchmarks.archive.loop_body_conv``); a
    model built on ``lax.conv_general_dilated`` pays up to ~60x for its backward
    convolutions here. Exact when ``fn`` is a mean over independent
    examples (the default loss with an ``apply_fn`` in eval mode); with train-mode BatchNorm
    each chunk is normalised with its own statistics, as a smaller batch would be.
    """
    n = np.shape(batch[0])[0]
    if chunk_size is None or chunk_size >= n:
        return fn(batch)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise JPanningError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    num_full, rest = divmod(n, chunk_size)
    head = jax.tree.map(
        lambda a: a[: num_full * chunk_size].reshape((num_full, chunk_size) + a.shape[1:]),
        tuple(batch),
    )
    first = jax.tree.map(lambda a: a[0], head)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first))

    def body(total, chunk):
        return jax.tree.map(lambda t, x: t + x * (chunk_size / n), total, fn(chunk)), None

    total, _ = jax.lax.scan(body, zeros, head)
    if rest:
        tail = jax.tree.map(lambda a: a[num_full * chunk_size :], tuple(batch))
        total = jax.tree.map(lambda t, x: t + x * (rest / n), total, fn(tail))
    return total


def _loss_and_grad(apply_fn, weights, batch, loss_fn, chunk_size):
    """(L, ∇_w L) at ``weights`` over the whole batch."""
    value_and_grad = jax.value_and_grad(_loss)
    return _chunked_mean(lambda b: value_and_grad(weights, apply_fn, loss_fn, b), batch, chunk_size)


def _grad_and_hvp(apply_fn, weights, batch, loss_fn, flags, chunk_size):
    """(L, g, H g_P) at ``weights``: g = ∇_w L, g_P its prunable part, H = ∇²_w L.

    Unchunked, ``jax.linearize`` of the gradient yields g and the linear map v -> Hv from one
    forward-over-reverse pass, so g and Hg share their work. (Reverse over reverse, the
    double backward of PyTorch GraSP code, measured twice as slow under XLA on CPU.)
    Chunked, Hg needs the full-batch g first: one scan for g, then a second scan of
    ``H_chunk g_P`` products.
    """
    n = np.shape(batch[0])[0]
    if chunk_size is None or chunk_size >= n:

        def grad_with_loss(w):
            loss, g = jax.value_and_grad(_loss)(w, apply_fn, loss_fn, batch)
            return g, loss

        g, hvp, loss = jax.linearize(grad_with_loss, weights, has_aux=True)
        return loss, g, hvp(_only_prunable(g, flags))
    loss, g = _loss_and_grad(apply_fn, weights, batch, loss_fn, chunk_size)
    tangent = jax.lax.stop_gradient(_only_prunable(g, flags))

    def chunk_hvp(b):
        grad_fn = lambda w: jax.grad(_loss)(w, apply_fn, loss_fn, b)
        return jax.jvp(grad_fn, (weights,), (tangent,))[1]

    return loss, g, _chunked_mean(chunk_hvp, batch, chunk_size)


# ----------------------------------------------------------------------------------------------
# Scorers.


def magnitude(
    apply_fn: ApplyFn,
    params: PyTree,
    batch=None,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
) -> PyTree:
    """Weight magnitude ``|θ|`` (Han et al. 2015, applied at initialization).

    Args:
        apply_fn, batch, key, loss_fn, prunable: unused (kept for the common signature).
        params: pytree of arrays.
        masks: unused: a pruned weight keeps its magnitude as its score.
    Returns:
        ``|θ|``, a pytree shaped like ``params``.
    """
    del apply_fn, batch, masks, key, loss_fn, prunable
    return jax.tree.map(jnp.abs, params)


def random(
    apply_fn: ApplyFn,
    params: PyTree,
    batch=None,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
) -> PyTree:
    """I.i.d. **uniform** [0, 1) scores: top-k of them is a uniformly random mask.

    Uniform rather than normal so that scores are non-negative like the others (top-k only
    reads their order, so both give the same distribution of masks). Floating leaves draw in
    their own dtype, others in float32.

    Args:
        key: a PRNG key (required); leaf ``i`` uses ``jax.random.split(key, n_leaves)[i]``.
        params: pytree whose shapes the scores take.
        apply_fn, batch, masks, loss_fn, prunable: unused.
    Returns:
        A pytree shaped like ``params``.
    """
    del apply_fn, batch, masks, loss_fn, prunable
    if key is None:
        raise JPanningError("the random scorer needs a PRNG key: pass key=jax.random.key(seed)")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draw = lambda k, x: jax.random.uniform(
        k, np.shape(x), x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    )
    return treedef.unflatten([draw(k, x) for k, x in zip(keys, leaves)])


def snip(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
) -> PyTree:
    """SNIP connection sensitivity ``|∂L/∂m| = |θ ⊙ ∇_w L(w)|`` at ``w = θ ⊙ m``.

    Lee et al. 2019, "SNIP: single-shot network pruning based on connection sensitivity",
    eq. (6) (before their normalisation by the sum, which top-k does not need).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: pytree of arrays θ.
        batch: ``(inputs [B, ...], labels [B])``.
        masks: 0/1 pytree like ``params`` or None (dense).
        loss_fn: ``loss_fn(logits, labels) -> scalar`` mean loss.
        chunk_size: examples per chunk for bounded memory (None: the whole batch at once).
        key, prunable: unused.
    Returns:
        ``|θ ⊙ g|``, a pytree shaped like ``params`` (pruned weights scored too).
    """
    del key, prunable
    batch = _check_batch(batch)
    m = _masks_or_ones(params, masks)
    _, g = _loss_and_grad(apply_fn, masks_lib.apply(params, m), batch, loss_fn, chunk_size)
    return jax.tree.map(lambda p, x: jnp.abs(p * x), params, g)


def grasp(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
) -> PyTree:
    """GraSP gradient-signal score, signed so that **keeping the highest** follows GraSP.

    Wang et al. 2020, "Picking winning tickets before training by preserving gradient flow",
    eq. (8): ``S(−θ) = −θ ⊙ Hg`` with g the gradient and H the Hessian of the loss. Their
    Algorithm 1 removes the weights with the **highest** ``S(−θ)`` (mask = ``S < τ``). This
    function returns ``θ ⊙ Hg = −S(−θ)`` so that, like every jpanning scorer, the top-k of it
    is what GraSP keeps (the sign Synaptic-Flow's GraSP also uses). Equivalently it is
    ``½ ∂‖g_P‖²/∂m``: to first order, removing weight q changes ``½‖g_P‖²`` by ``−score_q``,
    so the top-k keeps the weights whose removal would reduce the gradient norm the most
    and prunes those whose removal would raise it.

    g and H are taken at ``w = θ ⊙ m``; as in the reference code, g is restricted to the
    prunable leaves (conv/dense kernels): ``Hg`` means ``H[:, P] g_P``. Hg is a
    Hessian-vector product; the Hessian is never formed.

    Args: as :func:`snip`; ``prunable`` (pytree of bools, default
        ``jpanning.masks.prunable_tree(params)``) selects the leaves of g.
    Returns:
        ``θ ⊙ H g_P``, a pytree shaped like ``params`` (signed).
    """
    del key
    batch = _check_batch(batch)
    flags = leaves_lib.prunable_flags(params, prunable)
    m = _masks_or_ones(params, masks)
    _, _, hg = _grad_and_hvp(
        apply_fn, masks_lib.apply(params, m), batch, loss_fn, flags, chunk_size
    )
    return jax.tree.map(lambda p, x: p * x, params, hg)


def loss_grad_hvp(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
) -> tuple[jax.Array, PyTree, PyTree]:
    """The raw ingredients of SNIP and GraSP: ``(L, g, H g_P)`` at ``w = θ ⊙ m``.

    For procedures that combine them in their own way (Panning's signed ``θ ⊙ g``, for
    example). One forward-over-reverse pass, as in :func:`grasp`.

    Args: as :func:`grasp`.
    Returns:
        The loss, the gradient ``g = ∇_w L`` and the Hessian-vector product ``H g_P``
        (gradient restricted to the prunable leaves), both pytrees like ``params``.
    """
    batch = _check_batch(batch)
    flags = leaves_lib.prunable_flags(params, prunable)
    m = _masks_or_ones(params, masks)
    return _grad_and_hvp(apply_fn, masks_lib.apply(params, m), batch, loss_fn, flags, chunk_size)


def grad_norm(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
) -> PyTree:
    """Gradient-norm sensitivity ``|∂‖g_P‖²/∂m| = 2 |θ ⊙ H g_P|`` (= 2 |grasp|).

    Keeps the weights whose removal would change the squared gradient norm the most, in
    either direction (the gradient-norm-preserving view of Lubana & Dick 2021, "A gradient
    flow framework for analyzing network pruning"). ``g_P`` is the gradient over the
    prunable leaves, as in GraSP and the Panning authors' ``grad_l2``. (Their signed term
    ``−θ ⊙ ∂‖g‖²/∂θ``, pruned from the top, ranks on one batch exactly like :func:`grasp`.)

    Args, Returns: as :func:`grasp` (non-negative scores).
    """
    hg_theta = grasp(
        apply_fn,
        params,
        batch,
        masks=masks,
        key=key,
        loss_fn=loss_fn,
        prunable=prunable,
        chunk_size=chunk_size,
    )
    return jax.tree.map(lambda x: 2 * jnp.abs(x), hg_theta)


def loss_and_grad_norm(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    masks=None,
    *,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
    whole_tensors: bool = False,
):
    """Loss and squared gradient norm of the masked network, from one gradient.

    ``g = ∇_θ L(θ ⊙ m) = m ⊙ ∇_w L``: the gradient the masked optimizer sees, so pruned
    weights contribute nothing, and the norm runs over the **prunable** leaves only
    (conv/dense kernels, as in GraSP's and Panning's ``‖g‖²``). With ``masks=None`` this is
    the ``‖g_P‖²`` whose sensitivity :func:`grad_norm` scores. ``whole_tensors=True`` sums
    ``∇_w L`` at ``w = θ ⊙ m`` over the whole tensors, pruned positions included: the
    Panning authors' ``get_loss_gtg`` (kangxiatao/RLPanning, ``pruner/panning.py``).

    Args:
        apply_fn, params, batch, loss_fn, chunk_size: as :func:`snip`.
        masks: 0/1 pytree like ``params`` or None.
        prunable: pytree of bools (default ``jpanning.masks.prunable_tree(params)``).
        whole_tensors: see above.
    Returns:
        ``(loss, grad_norm_sq)``, two scalars.
    """
    batch = _check_batch(batch)
    flags = leaves_lib.prunable_flags(params, prunable)
    m = _masks_or_ones(params, masks)
    loss, g = _loss_and_grad(apply_fn, masks_lib.apply(params, m), batch, loss_fn, chunk_size)
    return loss, _sum_squares(g if whole_tensors else masks_lib.apply(g, m), flags)


RESCALINGS = ("io", "layer", "none")
# SynFlow's homogeneity check accepts |R' - Euler sum| <= _EULER_RTOL * sqrt(eps) * R'
# (float32: 3e-3 relative); the rounding of a float32 ResNet-56 at init reaches 2.3e-4.
_EULER_RTOL = 10.0


def synflow(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    rescale: str = "io",
    dtype=None,
) -> PyTree:
    """SynFlow synaptic saliency ``∂R/∂m = |θ| ⊙ ∂R/∂w`` at ``w = |θ ⊙ m|`` (data-free).

    Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
    synaptic flow", eq. (3)/Algorithm 1: every parameter (kernels, biases, norm scales) is
    replaced by its absolute value, the input is one all-ones example of the batch's input
    shape, ``R = 1ᵀ f(1)`` is the sum of the outputs and the score is ``|θ ⊙ ∂R/∂θ|``. Labels
    and data values are never read. Pruned weights get the flow they would carry if restored;
    the iterative SynFlow loop (``jpanning.pruning``) ranks them last so they stay pruned.

    Numerical range. R is a product of layer gains: at initialization about 1e31 for
    VGG-19 and 1e71 for ResNet-56, so float32 (max 3e38) overflows on deep nets, and
    shrinking gains underflow. ``rescale`` picks the remedy; all scores come out multiplied
    by one positive constant, which top-k (global or per layer) ignores:

    * ``'io'`` (default): a ReLU |θ|-network is positively homogeneous of degree one in its
      input and its additive parameters b (``jpanning.masks.additive_tree``: leaves named
      ``bias``/``b``/``offset``/``beta``, or the rank-1 leaves of a plain pytree; BatchNorm
      in eval mode with zero running mean): ``R(s·1, s·b) = s·R(1, b)``, for any topology,
      skip connections included. The input and b are scaled by ``s`` and the output
      cotangent by ``λ``, ``s = λ = R̂^(-1/2)``, where ``log R̂`` comes from a probe forward
      pass with per-layer normalised kernels. Activations then stay within ``R^(±1/2)``:
      float32 covers ``1e-76 < R < 1e76``. Scores are the exact ones times ``s·λ``.
    * ``'layer'``: each prunable kernel is divided by its mean gain ``c_l = Σ|θ_l ⊙ m_l| /
      fan_out_l``; never overflows, but exact (scores / ∏ c_l) only when R has degree one in
      every prunable kernel: every input-output path crosses each layer once (no skip
      connections) and the biases are zero.
    * ``'none'``: the literal computation (for ``dtype=jnp.float64`` under
      ``jax.enable_x64``, or shallow nets).

    Checked rescaling. ``'io'`` and ``'layer'`` verify their assumption on the same gradient
    by Euler's identity for homogeneous functions: ``⟨x, ∂R'/∂x⟩ + Σ_b ⟨b, ∂R'/∂b⟩ = R'``
    ('io'), ``⟨w_l, ∂R'/∂w_l⟩ = R'`` for each prunable leaf l ('layer'), to
    ``10·sqrt(eps)`` relative (3e-3 in float32; on CPU the rounding of VGG-19 and ResNet-20
    stays below 1e-6, of ResNet-56, near float32's range, at 2.3e-4). It fails for misnamed
    biases, non-homogeneous activations (tanh, GELU), LayerNorm or non-zero running means,
    and skip connections or biases under 'layer'. The scores are then those of the literal
    network (a ``lax.cond``: one more forward and backward pass, only when the check fails;
    under ``vmap`` both run), exact but within float range only when R is: pass
    ``dtype=jnp.float64`` for deep nets. The check costs the input's gradient and a few
    sums. It is a first-order check at the evaluation point: a contribution it misses is
    one that vanishes there (zero biases, or biases cut off by pruned weights, which can
    only change the scores of pruned weights).

    ``apply_fn`` must use running statistics (BatchNorm eval mode): the all-ones batch of one
    has zero variance.

    Args:
        apply_fn, params, masks: as :func:`snip`.
        batch: ``(inputs, labels)``; only ``inputs.shape[1:]`` is used.
        prunable: pytree of bools (default ``jpanning.masks.prunable_tree(params)``): the
            kernels that the ``'io'`` probe and ``'layer'`` normalise. Equinox's ``weight``
            has its outputs on axis 0, every other weight on its last axis.
        rescale: ``'io'``, ``'layer'`` or ``'none'`` (see above).
        dtype: compute dtype (e.g. ``jnp.float64``, which needs ``jax.enable_x64``); default
            the params' dtype. Scores are returned in it.
        key, loss_fn: unused.
    Returns:
        Non-negative scores, a pytree shaped like ``params``.
    """
    del key, loss_fn
    inputs, _ = _check_batch(batch, integer_labels=False)
    if rescale not in RESCALINGS:
        raise JPanningError(
            f"unknown SynFlow rescale {rescale!r}; choose from: {', '.join(RESCALINGS)}"
        )
    flags = leaves_lib.prunable_flags(params, prunable)
    m = _masks_or_ones(params, masks)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths, leaves = [path for path, _ in flat], [x for _, x in flat]
    dtype = leaves_lib.compute_dtype(dtype, leaves[0])
    abs_params = [jnp.abs(p).astype(dtype) for p in leaves]
    weights = [p * x.astype(dtype) for p, x in zip(abs_params, jax.tree.leaves(m))]
    ones = jnp.ones((1,) + tuple(np.shape(inputs)[1:]), dtype)
    network = lambda w, x: jnp.sum(apply_fn(treedef.unflatten(w), x))

    kernel_scale = [jnp.ones((), dtype)] * len(leaves)  # w_l / c_l in the network
    if rescale in ("io", "layer"):
        gains = [
            leaves_lib.layer_gain(w, leaves_lib.fan_out_axis(path)) if f else jnp.ones((), dtype)
            for path, w, f in zip(paths, weights, flags)
        ]
        if rescale == "layer":
            kernel_scale = gains
    in_scale = out_scale = jnp.ones((), dtype)
    if rescale == "io":
        probe = network([w / c for w, c in zip(weights, gains)], ones)
        log_r = jnp.log(probe) + sum(jnp.log(c) for c in gains)
        log_r = jnp.where(jnp.isfinite(log_r), log_r, jnp.zeros_like(log_r))
        half = jax.lax.stop_gradient(jnp.clip(0.5 * log_r, -80.0, 80.0))
        in_scale = out_scale = jnp.exp(-half)
    additive = treedef.flatten_up_to(masks_lib.additive_tree(params))
    factor = [in_scale if a else 1 / c for a, c in zip(additive, kernel_scale)]
    scaled = [w * f for w, f in zip(weights, factor)]
    if rescale == "none":
        grads = jax.grad(lambda w: out_scale * network(w, ones * in_scale))(scaled)
        return treedef.unflatten([jnp.abs(p * g) for p, g in zip(abs_params, grads)])
    x = ones * in_scale
    rescaled_flow = lambda w, x: out_scale * network(w, x)
    r, (grads, grad_x) = jax.value_and_grad(rescaled_flow, argnums=(0, 1))(scaled, x)
    # ∂R'/∂m = |θ| f ⊙ ∂R'/∂w': the true scores times s·λ ('io') or / ∏ c ('layer').
    scores = [jnp.abs(p * f * g) for p, f, g in zip(abs_params, factor, grads)]
    # Euler's identity checks the homogeneity the rescaling relies on, from this gradient:
    # 'io': R' of degree 1 in (input, additive leaves) gives ⟨x, ∂R'/∂x⟩ + Σ⟨b, ∂R'/∂b⟩ = R';
    # 'layer': R' of degree 1 in each prunable leaf gives ⟨w_l, ∂R'/∂w_l⟩ = R' for every l.
    if rescale == "io":
        terms = [jnp.sum(x * grad_x)] + [
            jnp.sum(w * g) for w, g, a in zip(scaled, grads, additive) if a
        ]
        defects = [r - sum(terms)]
    else:
        defects = [r - jnp.sum(w * g) for w, g, f in zip(scaled, grads, flags) if f]
    defect = jnp.max(jnp.abs(jnp.stack(defects)))
    tolerance = _EULER_RTOL * jnp.sqrt(jnp.finfo(dtype).eps) * jnp.abs(r)
    holds = jnp.isfinite(r) & jnp.isfinite(defect) & (defect <= tolerance)

    def literal():
        # The unscaled |θ ⊙ m|-network, exact for any apply_fn; the output cotangent 1/R
        # keeps the backward pass in range (still one positive factor).
        total, pullback = jax.vjp(lambda w: network(w, ones), weights)
        inverse = 1 / total
        inverse = jnp.where(jnp.isfinite(inverse) & (total > 0), inverse, jnp.ones_like(inverse))
        (g,) = pullback(jax.lax.stop_gradient(inverse))
        return [jnp.abs(p * gi).astype(s.dtype) for p, gi, s in zip(abs_params, g, scores)]

    return treedef.unflatten(jax.lax.cond(holds, lambda: scores, literal))


def fused(
    apply_fn: ApplyFn,
    params: PyTree,
    batch,
    *,
    masks=None,
    key=None,
    loss_fn: LossFn = cross_entropy,
    prunable=None,
    chunk_size: Optional[int] = None,
    synflow_apply_fn: Optional[ApplyFn] = None,
    rescale: str = "io",
    dtype=None,
) -> dict:
    """SNIP, GraSP and SynFlow in one call, sharing the gradient.

    One linearization of the gradient gives g (for SNIP) and the Hessian-vector product
    H g_P (for GraSP); SynFlow adds one gradient of the |θ|-network.
    With ``chunk_size`` the scoring batch is processed in chunks under ``lax.scan`` (a scan
    for g, then a scan for H_chunk g_P), so memory is that of one chunk.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` for SNIP and GraSP.
        params, batch, masks, loss_fn, prunable, chunk_size: as :func:`grasp`.
        synflow_apply_fn: apply function for SynFlow (BatchNorm in eval mode); default
            ``apply_fn``.
        rescale, dtype: as :func:`synflow`.
        key: unused.
    Returns:
        ``{'snip': ..., 'grasp': ..., 'synflow': ...}``, each equal to the scorer of that
        name (:func:`grad_norm` is ``2 * |grasp|``).
    """
    del key
    batch = _check_batch(batch)
    flags = leaves_lib.prunable_flags(params, prunable)
    m = _masks_or_ones(params, masks)
    _, g, hg = _grad_and_hvp(
        apply_fn, masks_lib.apply(params, m), batch, loss_fn, flags, chunk_size
    )
    flow = synflow(
        synflow_apply_fn or apply_fn,
        params,
        batch,
        masks=masks,
        prunable=prunable,
        rescale=rescale,
        dtype=dtype,
    )
    return {
        "snip": jax.tree.map(lambda p, x: jnp.abs(p * x), params, g),
        "grasp": jax.tree.map(lambda p, x: p * x, params, hg),
        "synflow": flow,
    }


# ----------------------------------------------------------------------------------------------
# Registry.

SCORERS: dict[str, Scorer] = {
    "magnitude": magnitude,
    "random": random,
    "snip": snip,
    "grasp": grasp,
    "grad_norm": grad_norm,
    "synflow": synflow,
}


def register_scorer(name: str, fn: Optional[Scorer] = None):
    """Add ``fn`` to :data:`SCORERS` under ``name``; usable as ``@register_scorer('name')``.

    ``fn`` should follow the common signature ``fn(apply_fn, params, batch, *, masks=None,
    key=None, loss_fn=cross_entropy, prunable=None) -> scores`` (higher = keep).
    """
    if fn is None:
        return functools.partial(register_scorer, name)
    if not isinstance(name, str) or not name:
        raise JPanningError(f"a scorer name must be a non-empty string; got {name!r}")
    if not callable(fn):
        raise JPanningError(f"scorer {name!r} is not callable: {fn!r}")
    SCORERS[name] = fn
    return fn


def get_scorer(name: str) -> Scorer:
    """The scorer registered as ``name``; a one-line error lists the known names."""
    if name not in SCORERS:
        raise JPanningError(f"unknown scorer {name!r}; choose from: {', '.join(SCORERS)}")
    return SCORERS[name]
