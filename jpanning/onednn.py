"""oneDNN's convolutions inside XLA:CPU programs, through XLA's FFI.

XLA:CPU computes convolutions with Eigen (or single-threaded YNNPACK fusions); PyTorch on the
same CPU uses oneDNN, whose kernels are several times faster on a network's backward pass
(``benchmarks/cpu_conv.py``). ``jpanning/csrc/onednn_conv.cc`` wraps oneDNN's forward,
input-gradient and kernel-gradient convolutions (NHWC/HWIO, float32, no dilation or groups)
as XLA FFI targets, built by ``scripts/build_onednn.sh`` into ``jpanning/_onednn_conv.so``
against Debian's ``libdnnl-dev``. This module defines one JAX primitive per target:

- ``forward(x, w)``: the convolution;
- ``input_grad(dy, w)``: its transpose in ``x`` (the input gradient);
- ``kernel_grad(x, dy)``: its transpose in ``w`` (the kernel gradient).

Each is bilinear, and the transpose of each in either operand is one of the three, so JAX
derives reverse mode, forward mode (``jax.jvp``) and derivatives of any order from them, all
run by oneDNN. Under ``vmap`` a batched activation with a shared kernel folds into the
convolution's batch; any other batching runs the primitive once per member (``lax.map``).
Off the CPU the primitives lower to ``lax.conv_general_dilated`` and its transposes.

:func:`jpanning.cpu.conv_general_dilated`, the convolution every jpanning model calls, uses
these on a CPU backend when the library is built (:func:`available`). :func:`set_choice` (or
``jpanning.cpu.configure(convolution=...)``) forces a choice: ``onednn`` (an error where it is
not built), ``xla`` (XLA's convolution, as before), ``auto`` (oneDNN when built and the CPU
backend has one device; XLA cannot partition a custom call over several). Without it the
process default is ``JPANNING_CPU_CONV``, else ``auto``. The choice is made when a convolution
is traced, so it is part of what a compiled function depends on (:func:`set_choice`).
"""

from __future__ import annotations

import ctypes
import functools
import os

from jpanning.errors import JPanningError

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_onednn_conv.so")
ENV_CHOICE = "JPANNING_CPU_CONV"
CHOICES = ("auto", "onednn", "xla")
_TARGETS = {
    "forward": "JpanningOnednnConvForward",
    "input_grad": "JpanningOnednnConvInputGrad",
    "kernel_grad": "JpanningOnednnConvKernelGrad",
}
_STATE: dict = {}  # "lib" (ctypes.CDLL) or "error" (why it is unavailable); "prims"
_CHOICE: str | None = None  # set_choice's; None: the process default (ENV_CHOICE)


def _checked(value: str, source: str) -> str:
    value = value.strip().lower() or "auto"
    if value not in CHOICES:
        raise JPanningError(
            f"{source}={value!r} is not a convolution choice; choose from: " + ", ".join(CHOICES)
        )
    return value


def choice() -> str:
    """The convolution choice in force: ``auto``, ``onednn`` or ``xla``; :func:`set_choice`'s,
    else ``JPANNING_CPU_CONV`` (read at each call), else ``auto``."""
    if _CHOICE is not None:
        return _CHOICE
    return _checked(os.environ.get(ENV_CHOICE, "auto"), ENV_CHOICE)


def set_choice(value: str | None) -> str | None:
    """Choose which library computes the CPU convolutions traced from now on.

    The choice is read when :func:`jpanning.cpu.conv_general_dilated` is traced, not when a
    compiled program runs: a function traced (jitted and called, lowered) before a change
    keeps the old choice, and JAX's caches of traced functions do not see the change. Set it
    before tracing, or call ``jax.clear_caches()`` after changing it.

    Args:
        value: ``"auto"`` (oneDNN where built and the CPU backend has one device),
            ``"onednn"`` (an error at trace time where it is not built), ``"xla"`` (XLA's
            convolution), or None (back to the process default: ``JPANNING_CPU_CONV``, else
            ``auto``).

    Returns:
        The previous explicit choice (None: it was the process default), to restore it.

    Raises:
        JPanningError: ``value`` is not one of :data:`CHOICES`.
    """
    global _CHOICE
    previous = _CHOICE
    _CHOICE = None if value is None else _checked(value, "convolution")
    return previous


def _load():
    """The loaded library with its FFI targets registered for the CPU, or None (the reason
    is kept for :func:`unavailable_reason`). Loads once per process."""
    if "lib" in _STATE or "error" in _STATE:
        return _STATE.get("lib")
    if not os.path.exists(LIBRARY):
        _STATE["error"] = f"{LIBRARY} is not built (scripts/build_onednn.sh)"
        return None
    try:
        lib = ctypes.CDLL(LIBRARY)
        import jax

        for name, symbol in _TARGETS.items():
            capsule = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(f"jpanning_onednn_{name}", capsule, platform="cpu")
        lib.JpanningOnednnVersion.restype = ctypes.c_char_p
    except (OSError, AttributeError) as e:  # a missing libdnnl, a stale build
        _STATE["error"] = f"{LIBRARY} could not be loaded: {e}"
        return None
    _STATE["lib"] = lib
    return lib


def available() -> bool:
    """Whether oneDNN's convolutions can run here (the library is built and loads)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _load()
    return _STATE.get("error")


def version() -> str | None:
    """The oneDNN version the library runs (``"2.6.3"``), or None where it is unavailable."""
    lib = _load()
    return lib.JpanningOnednnVersion().decode() if lib is not None else None


def use_onednn() -> bool:
    """Whether a CPU convolution should run in oneDNN, by :func:`choice`: ``auto`` when
    available, ``onednn`` always (raises where unavailable), ``xla`` never."""
    value = choice()
    if value == "xla":
        return False
    if value == "onednn" and not available():
        source = "convolution" if _CHOICE is not None else ENV_CHOICE
        raise JPanningError(f"{source}=onednn, but {unavailable_reason()}")
    return available() and (value == "onednn" or _one_cpu_device())


def _one_cpu_device() -> bool:
    """Whether the CPU backend has one device. XLA's SPMD partitioner cannot split a custom
    call, so in a program sharded over several (simulated) CPU devices each device would
    gather the whole batch for it: ``auto`` leaves those to XLA's convolution."""
    import jax

    return jax.local_device_count("cpu") == 1


def _out_hw(in_hw, kernel_hw, strides, padding):
    (h, w), (kh, kw), (sh, sw) = in_hw, kernel_hw, strides
    top, bottom, left, right = padding
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


def _reference(x, w, strides, padding):
    """The convolution in lax (the primitives' lowering off the CPU, and their definition)."""
    from jax import lax

    pads = ((padding[0], padding[1]), (padding[2], padding[3]))
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _reference_forward(x, w, *, strides, padding):
    return _reference(x, w, strides, padding)


def _reference_input_grad(dy, w, *, strides, padding, input_hw):
    import jax

    n, c = dy.shape[0], w.shape[2]
    x = jax.ShapeDtypeStruct((n, *input_hw, c), dy.dtype)
    (dx,) = jax.linear_transpose(lambda x: _reference(x, w, strides, padding), x)(dy)
    return dx


def _reference_kernel_grad(x, dy, *, strides, padding, kernel_hw):
    import jax

    w = jax.ShapeDtypeStruct((*kernel_hw, x.shape[3], dy.shape[3]), dy.dtype)
    (dw,) = jax.linear_transpose(lambda w: _reference(x, w, strides, padding), w)(dy)
    return dw


def _prims():
    """The three primitives with their rules (built on first use: importing jpanning does not
    import JAX)."""
    if "prims" in _STATE:
        return _STATE["prims"]
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax._src import dispatch
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    forward_p = Primitive("jpanning_onednn_conv")
    input_grad_p = Primitive("jpanning_onednn_conv_input_grad")
    kernel_grad_p = Primitive("jpanning_onednn_conv_kernel_grad")

    def forward(x, w, *, strides, padding):
        return forward_p.bind(x, w, strides=strides, padding=padding)

    def input_grad(dy, w, *, strides, padding, input_hw):
        return input_grad_p.bind(dy, w, strides=strides, padding=padding, input_hw=input_hw)

    def kernel_grad(x, dy, *, strides, padding, kernel_hw):
        return kernel_grad_p.bind(x, dy, strides=strides, padding=padding, kernel_hw=kernel_hw)

    def forward_abstract(x, w, *, strides, padding):
        oh, ow = _out_hw(x.shape[1:3], w.shape[:2], strides, padding)
        return jax.core.ShapedArray((x.shape[0], oh, ow, w.shape[3]), x.dtype)

    def input_grad_abstract(dy, w, *, strides, padding, input_hw):
        return jax.core.ShapedArray((dy.shape[0], *input_hw, w.shape[2]), dy.dtype)

    def kernel_grad_abstract(x, dy, *, strides, padding, kernel_hw):
        return jax.core.ShapedArray((*kernel_hw, x.shape[3], dy.shape[3]), x.dtype)

    # Transposes: <conv(x, w), g> = <x, input_grad(g, w)> = <w, kernel_grad(x, g)>.
    def forward_t_x(g, x, w, *, strides, padding):
        return input_grad(g, w, strides=strides, padding=padding, input_hw=x.aval.shape[1:3])

    def forward_t_w(g, x, w, *, strides, padding):
        return kernel_grad(x, g, strides=strides, padding=padding, kernel_hw=w.aval.shape[:2])

    def input_grad_t_dy(g, dy, w, *, strides, padding, input_hw):
        return forward(g, w, strides=strides, padding=padding)

    def input_grad_t_w(g, dy, w, *, strides, padding, input_hw):
        return kernel_grad(g, dy, strides=strides, padding=padding, kernel_hw=w.aval.shape[:2])

    def kernel_grad_t_x(g, x, dy, *, strides, padding, kernel_hw):
        return input_grad(dy, g, strides=strides, padding=padding, input_hw=x.aval.shape[1:3])

    def kernel_grad_t_dy(g, x, dy, *, strides, padding, kernel_hw):
        return forward(x, g, strides=strides, padding=padding)

    def batch_rule(prim, folds: bool):
        """vmap: with only the first operand batched and ``folds`` (its leading axis is the
        convolution's batch, as is the result's), the vmapped axis joins that batch;
        otherwise one call per member."""

        def rule(args, dims, **params):
            a, b = args
            da, db = dims
            if folds and db is None:
                a = jnp.moveaxis(a, da, 0)
                k, n = a.shape[:2]
                out = prim.bind(a.reshape(k * n, *a.shape[2:]), b, **params)
                return out.reshape(k, n, *out.shape[1:]), 0
            size = a.shape[da] if da is not None else b.shape[db]
            a = jnp.moveaxis(a, da, 0) if da is not None else None
            b = jnp.moveaxis(b, db, 0) if db is not None else None

            def one(i):
                ai = args[0] if a is None else lax.dynamic_index_in_dim(a, i, keepdims=False)
                bi = args[1] if b is None else lax.dynamic_index_in_dim(b, i, keepdims=False)
                return prim.bind(ai, bi, **params)

            return lax.map(one, jnp.arange(size)), 0

        return rule

    def cpu_lowering(target):
        lower = jax.ffi.ffi_lowering(target)

        def rule(ctx, *args, **params):
            attrs = {k: np.asarray(params[k], np.int64) for k in ("strides", "padding")}
            return lower(ctx, *args, **attrs)

        return rule

    def define(prim, abstract, transpose_lhs, transpose_rhs, folds, target, reference):
        prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
        prim.def_abstract_eval(abstract)
        ad.defbilinear(prim, transpose_lhs, transpose_rhs)
        batching.primitive_batchers[prim] = batch_rule(prim, folds)
        mlir.register_lowering(prim, mlir.lower_fun(reference, multiple_results=False))
        mlir.register_lowering(prim, cpu_lowering(f"jpanning_onednn_{target}"), platform="cpu")

    define(
        forward_p, forward_abstract, forward_t_x, forward_t_w, True, "forward", _reference_forward
    )
    define(
        input_grad_p,
        input_grad_abstract,
        input_grad_t_dy,
        input_grad_t_w,
        True,
        "input_grad",
        _reference_input_grad,
    )
    define(
        kernel_grad_p,
        kernel_grad_abstract,
        kernel_grad_t_x,
        kernel_grad_t_dy,
        False,
        "kernel_grad",
        _reference_kernel_grad,
    )
    _STATE["prims"] = (forward, input_grad, kernel_grad)
    return _STATE["prims"]


def conv(x, w, strides, padding):
    """The NHWC/HWIO float32 convolution of ``x`` with ``w`` in oneDNN (on the CPU).

    Args:
        x: ``[N, H, W, C]`` float32.
        w: ``[KH, KW, C, O]`` float32.
        strides: ``(sh, sw)``.
        padding: ``((top, bottom), (left, right))``, non-negative.

    Returns:
        ``[N, OH, OW, O]``, equal to ``lax.conv_general_dilated`` within float32 rounding.
    """
    forward, _, _ = primitives()
    (top, bottom), (left, right) = padding
    pads = tuple(int(p) for p in (top, bottom, left, right))
    return forward(x, w, strides=tuple(int(s) for s in strides), padding=pads)


def primitives():
    """``(forward, input_grad, kernel_grad)``: the primitives' bind functions, keyword
    arguments ``strides``, ``padding`` (top, bottom, left, right) and ``input_hw`` or
    ``kernel_hw`` (for tests and benchmarks)."""
    if _load() is None:
        raise JPanningError(f"oneDNN convolution unavailable: {unavailable_reason()}")
    return _prims()
