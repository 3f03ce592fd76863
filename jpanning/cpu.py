"""XLA:CPU settings that make convolutions fast on a CPU, chosen automatically per backend.

Importing jpanning changes nothing in the process: :func:`configure` is the one explicit call
that tunes it (the ``XLA_FLAGS`` setting and glibc's allocator below, and optionally the
convolution library). ``run.py`` and the benchmarks make it first thing; a program of your own
makes it before JAX starts its backends (its first computation)::

    import jpanning.cpu
    jpanning.cpu.configure()

Where ``jpanning/_onednn_conv.so`` is built (``make setup``: Debian's ``libdnnl-dev`` and
``scripts/build_onednn.sh``), :func:`conv_general_dilated` on a CPU backend hands its float32
NHWC convolutions, forward and both gradients, to oneDNN through XLA's FFI
(:mod:`jpanning.onednn`), the library PyTorch's CPU convolutions use; that closed the gap to
PyTorch (``benchmarks/results/cpu_conv_cpu.md``). ``configure(convolution="xla")``
(:func:`set_convolution`; ``JPANNING_CPU_CONV=xla`` as the process default) keeps XLA's
convolutions, for which the rest of this module's settings were made; with oneDNN's the
process setting below still applies. The choice is made when a convolution is traced:
functions traced before a change keep the old one.

jaxlib 0.10 and 0.11 hand every convolution with more than 16 channels, and the kernel
gradient of all of them, to YNNPACK fusions, and on XLA:CPU such a fusion runs on one thread:
on a 2-core machine half the CPU idles through a network's convolutions
(``benchmarks/cpu_conv.py`` shows CPU time / wall time of 1.0 for them, 2.0 for XLA's own
Eigen convolution). Leaving convolutions out of YNNPACK (the
``xla_cpu_experimental_ynn_fusion_type`` option without ``INDIVIDUAL_CONVOLUTION``) gives
them back to Eigen, multi-threaded: :data:`PROCESS_TYPES` (matmuls and reductions in
YNNPACK, convolutions not), set for the whole process in ``XLA_FLAGS`` by :func:`configure`,
so every model, scorer and user-written ``jax.jit`` gets it without code changes. It is never
slower than XLA's default on the benchmark's workloads (``benchmarks/results/cpu_conv_cpu.md``,
jaxlib 0.10.2; the workloads again on 0.11.2 in ``benchmarks/results/jaxlib-0.11/``).
Elementwise fusions in YNNPACK as well, per compilation of the programs with first
derivatives only, were measured and dropped: slower with oneDNN's convolutions, and with
XLA's faster for some programs and slower for others
(``benchmarks/archive/results/cpu_options_cpu.md``).

One convolution shape defeats both of XLA:CPU's convolution libraries: a padded 3x3 kernel
over a 2x2 or 2x4 input, such as VGG's 3x3 layers on the 2x2 maps of its last block on
CIFAR. There Eigen and YNNPACK run at ~1 GFLOP/s, a forward pass 50-90x slower than an
im2col matmul (``benchmarks/results/cpu_conv_cpu.md``). Every kernel wider than 1 over an
input of at most :data:`SMALL_INPUT` pixels takes the matmul path of
:func:`conv_general_dilated`, the convolution every jpanning model uses: shifted slices of
the padded input and one matmul (its gradients are then matmuls too) on a CPU backend;
``lax.conv_general_dilated`` for everything else and on other backends.

The backward convolutions of a gradient taken inside a loop body (``lax.scan``, ``lax.map``,
``fori_loop``) lose XLA:CPU's fast path too: outside a loop XLA transposes their operands into
the layout of its fast convolution, inside one it does not (a 3x3 layer's gradients ran
~60x slower, ``benchmarks/archive/results/loop_body_conv_cpu.md``). :func:`conv_general_dilated`
therefore gives every other CPU convolution of the same kind a ``jax.custom_jvp`` whose
tangent maps read pre-transposed operands (the kernel as HWOI, the input as CHWN, the output
written HWNC), chosen so that JAX's transposes of them, the input and kernel gradients, are
convolutions in that canonical layout with the transposes written out: the same arithmetic
and program outside a loop, the fast path inside one. Forward mode (``jax.jvp``) and second
derivatives (GraSP's Hessian-vector product) work as with ``lax``.

XLA:CPU allocates each execution's temporary buffer anew, and glibc's malloc maps a buffer
that large fresh from the kernel and unmaps it when it is freed, so every execution
page-faults its whole temporary buffer back in (ResNet-20's SNIP at batch 256: ~246,000
faults of 4 KiB, ~1 GB, and ~0.8 s of kernel time per call on 2 cores).
:func:`configure_allocator`, also run by :func:`configure` where JAX will run on the CPU,
has glibc keep freed memory for the next execution (``benchmarks/archive/allocator.py``,
``benchmarks/archive/results/allocator_cpu.md``).

Only XLA:CPU reads these options: GPUs and TPUs compile exactly as before. The same numbers
come out: a convolution is computed by another library, equal within float32 rounding
(``tests/test_cpu.py``). Opt out with ``JPANNING_CPU_FAST=0``; a
``--xla_cpu_experimental_ynn_fusion_type`` already in ``XLA_FLAGS`` is the user's choice and
is kept. The settings are applied only with the jaxlib they were measured on
(:data:`MEASURED_JAXLIBS`): another version may not know the option (XLA aborts on unknown
flags) or may have fixed the single thread.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from typing import Sequence

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
ENV_SWITCH = "JPANNING_CPU_FAST"  # "0": XLA's own CPU defaults
# (major, minor) of the jaxlibs the setting was measured on (benchmarks/cpu_conv.py): 0.10.2
# (benchmarks/results/cpu_conv_cpu.md) and 0.11.2 (benchmarks/results/jaxlib-0.11/).
MEASURED_JAXLIBS = ((0, 10), (0, 11))
_PREFIX = "LIBRARY_FUSION_TYPE_"
XLA_DEFAULT_TYPES = ("INDIVIDUAL_CONVOLUTION", "INDIVIDUAL_DOT", "REDUCE")  # 0.10.2 and 0.11.2
PROCESS_TYPES = ("INDIVIDUAL_DOT", "REDUCE")
SMALL_INPUT = 8  # input pixels (H*W) up to which conv_general_dilated uses slices + matmul


def fusion_types(types: tuple[str, ...]) -> str:
    """The option's value for a tuple of YNNPACK fusion types (``"REDUCE"`` ->
    ``"LIBRARY_FUSION_TYPE_REDUCE"``)."""
    return ",".join(_PREFIX + t for t in types)


def options(types: tuple[str, ...]) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` that give YNNPACK exactly ``types`` on XLA:CPU."""
    return {YNN_OPTION: fusion_types(types)}


def _jaxlib_measured() -> bool:
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return False
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) in MEASURED_JAXLIBS


def user_choice() -> bool:
    """Whether the user decided the CPU setting: ``JPANNING_CPU_FAST=0`` or their own
    ``XLA_FLAGS`` value for the option (read when :func:`configure_flags` first ran)."""
    return _USER_CHOICE if _USER_CHOICE is not None else _user_choice_now()


def _user_choice_now() -> bool:
    return os.environ.get(ENV_SWITCH, "1") == "0" or YNN_OPTION in os.environ.get("XLA_FLAGS", "")


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # another jax: assume the worst
        return True


_USER_CHOICE: bool | None = None


def configure(*, allocator: bool = True, convolution: str | None = None) -> bool:
    """Tune this process for XLA:CPU: the explicit call that ``run.py`` and the benchmarks make
    first; importing jpanning does not. Call it before JAX's first computation.

    It writes ``os.environ["XLA_FLAGS"]`` (:func:`configure_flags`), sets glibc's ``mallopt``
    (:func:`configure_allocator`, where JAX will run on the CPU) and, if given, the convolution
    library (:func:`set_convolution`). Each part leaves a user's own choice alone
    (``JPANNING_CPU_FAST=0``, the option in ``XLA_FLAGS``, glibc's ``MALLOC_*`` variables), and
    calling it again changes nothing more. GPUs and TPUs are unaffected.

    Args:
        allocator: also keep freed memory in the process (:func:`configure_allocator`); it
            cannot be undone in a running process.
        convolution: ``"auto"``, ``"onednn"`` or ``"xla"`` (:func:`set_convolution`); None
            leaves the process default (``JPANNING_CPU_CONV``, else ``auto``).

    Returns:
        Whether the ``XLA_FLAGS`` setting is in force (:func:`configure_flags`).
    """
    if convolution is not None:
        set_convolution(convolution)
    flags = configure_flags()
    if allocator:
        configure_allocator()
    return flags


def set_convolution(choice: str | None) -> str | None:
    """Which library computes the CPU convolutions traced from now on (``"auto"``,
    ``"onednn"``, ``"xla"``; None: the process default, ``JPANNING_CPU_CONV`` else ``auto``):
    :func:`jpanning.onednn.set_choice`. Part of what a compiled function depends on: it is read
    when a convolution is traced, so functions traced before a change keep the old choice
    (``jax.clear_caches()`` drops them). Returns the previous explicit choice."""
    from jpanning import onednn

    return onednn.set_choice(choice)


def configure_flags() -> bool:
    """Put :data:`PROCESS_TYPES` into ``XLA_FLAGS`` for this process (:func:`configure` calls
    it). Does nothing (returns False) where the user chose (:func:`user_choice`), with an
    unmeasured jaxlib, or once JAX's backends have started (XLA has read its flags then).

    Returns:
        Whether the flag was set by this call or an earlier one.
    """
    global _USER_CHOICE
    if _USER_CHOICE is None:
        _USER_CHOICE = _user_choice_now()
    flags = os.environ.get("XLA_FLAGS", "")
    if _USER_CHOICE or not _jaxlib_measured():
        return False
    if YNN_OPTION in flags:
        return True  # set by an earlier call
    if _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{YNN_OPTION}={fusion_types(PROCESS_TYPES)}".strip()
    return True


# glibc's mallopt parameters (malloc.h) and jpanning's values for them: one arena, no mmap'd
# chunks, never trim the heap. A trim threshold of -1 is mallopt(3)'s "disables trimming
# completely"; the largest positive one (2**31 - 1) still trims a free top chunk above 2 GiB,
# so a program whose temporary buffer is bigger faults it all back in on every execution.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_SETTING = (
    ("arena_max", _M_ARENA_MAX, 1),
    ("mmap_max", _M_MMAP_MAX, 0),
    ("trim_threshold", _M_TRIM_THRESHOLD, -1),
)
# A user who set any of these (or a glibc.malloc tunable) chose their allocator.
MALLOC_ENV = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
_ACCELERATOR_PLUGIN = re.compile(r"(jax_(cuda|rocm)\d*_plugin|jax_plugins|libtpu)$")
_MALLOC: str | None = None


def _cpu_expected() -> bool:
    """Whether JAX will run on the CPU, decided without starting it: ``JAX_PLATFORMS`` names
    the CPU first, or no accelerator plugin (CUDA, ROCm, TPU) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    import pkgutil

    return not any(_ACCELERATOR_PLUGIN.match(m.name) for m in pkgutil.iter_modules())


def configure_allocator() -> str:
    """Keep the memory XLA:CPU frees for its next allocation; :func:`configure` calls it.

    XLA:CPU allocates every execution's temporary buffer anew and glibc maps allocations
    that large fresh from the kernel and unmaps them when freed: each execution page-faults
    its whole temporary buffer back in, zero-filled (SNIP of ResNet-20 at batch 256: ~246,000
    faults, ~1 GB, and ~0.8 s of system time per call on the 2-core benchmark machine;
    ``benchmarks/archive/results/allocator_cpu.md``). One malloc arena, no mmap'd chunks and no
    trimming (glibc's ``mallopt``; :data:`MALLOC_SETTING`) make freed memory stay in the
    process and serve the next execution's buffers, however big. The process then keeps its
    peak heap until it exits, and small programs may run slower (batch 8: 0.69-0.89x in
    ``benchmarks/archive/results/allocator-b8/``, with no faults to save).

    Applied when glibc is the C library, JAX is expected to run on the CPU
    (:func:`_cpu_expected`), the user did not opt out (``JPANNING_CPU_FAST=0``) and did not set
    glibc's malloc themselves (:data:`MALLOC_ENV`, ``glibc.malloc`` in ``GLIBC_TUNABLES``).

    Returns:
        :func:`allocator_setting`.
    """
    global _MALLOC
    if _MALLOC is not None:
        return _MALLOC
    _MALLOC = "glibc default"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(k in os.environ for k in MALLOC_ENV) or "glibc.malloc." in tunables:
        _MALLOC = "user"
    elif os.environ.get(ENV_SWITCH, "1") != "0" and _cpu_expected():
        try:
            import ctypes

            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc
            return _MALLOC
        if all(mallopt(param, value) == 1 for _, param, value in MALLOC_SETTING):
            _MALLOC = "jpanning: " + ", ".join(f"{k}={v}" for k, _, v in MALLOC_SETTING)
    return _MALLOC


def allocator_setting() -> str:
    """What :func:`configure_allocator` did: ``"jpanning: arena_max=1, ..."`` (set),
    ``"user"`` (the user's malloc settings kept) or ``"glibc default"`` (not applied)."""
    return _MALLOC if _MALLOC is not None else "glibc default"


def describe() -> dict:
    """What this process runs with, for the records next to results."""
    flags = os.environ.get("XLA_FLAGS", "")
    value = next(
        (f.split("=", 1)[1] for f in flags.split() if f.startswith(f"--{YNN_OPTION}=")), None
    )
    return {
        "ynn_fusion_types": value if value is not None else "XLA default",
        "set_by": "user" if user_choice() else ("jpanning" if value is not None else None),
        "malloc": allocator_setting(),
        "convolution": convolution_library(),
    }


def convolution_library() -> str:
    """Which library computes this process's CPU convolutions (:func:`conv_general_dilated`
    on a CPU backend): ``"oneDNN 2.6.3"`` (:mod:`jpanning.onednn`) or ``"XLA"`` (another
    backend, the CPU setting off, or the choice of :func:`set_convolution` or
    ``JPANNING_CPU_CONV``)."""
    import jax

    from jpanning import onednn

    if os.environ.get(ENV_SWITCH, "1") == "0" or jax.default_backend() != "cpu":
        return "XLA"
    if not onednn.use_onednn():
        return "XLA"
    return f"oneDNN {onednn.version()}"


def _nhwc(dimension_numbers, ndim: int) -> bool:
    """Whether ``dimension_numbers`` are NHWC input/output and HWIO kernel (Flax's layout)."""
    from jax import lax

    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    return dn == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC"))


def _path(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> str:
    """Which way :func:`conv_general_dilated` computes these arguments: ``"lax"`` (another
    backend, the setting switched off, a layout other than NHWC/HWIO, dilation or groups),
    else ``"small"`` (slices + matmul: a kernel wider than 1 over at most
    :data:`SMALL_INPUT` input pixels) or ``"canonical"`` (:func:`_canonical_conv`)."""
    import jax

    if os.environ.get(ENV_SWITCH, "1") == "0" or not _nhwc(dimension_numbers, lhs.ndim):
        return "lax"
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) or groups != (1, 1):
        return "lax"
    if jax.default_backend() != "cpu":
        return "lax"
    small = lhs.shape[1] * lhs.shape[2] <= SMALL_INPUT and rhs.shape[0] * rhs.shape[1] > 1
    return "small" if small else "canonical"


def _onednn_applies(lhs, rhs, padding, preferred) -> bool:
    """Whether a ``"canonical"`` convolution runs in oneDNN (:mod:`jpanning.onednn`): float32
    operands and result, non-negative padding, no empty operand or output, and the
    convolution choice (:func:`set_convolution`) allowing it (``auto``: where the library is
    built)."""
    import numpy as np

    from jpanning import onednn

    f32 = np.dtype(np.float32)
    if (
        lhs.dtype != f32
        or rhs.dtype != f32
        or (preferred is not None and np.dtype(preferred) != f32)
    ):
        return False
    if any(p < 0 for pair in padding for p in pair) or 0 in lhs.shape or 0 in rhs.shape:
        return False
    (top, bottom), (left, right) = padding
    if lhs.shape[1] + top + bottom < rhs.shape[0] or lhs.shape[2] + left + right < rhs.shape[1]:
        return False  # an empty output: lax's
    return onednn.use_onednn()


def _canonical_conv():
    """The NHWC/HWIO convolution ``f(x, w, strides, padding, precision, preferred)`` with a
    ``jax.custom_jvp`` (built on first use, so importing jpanning does not import JAX).

    Its tangent is ``conv(dx, w) + conv(x, dw)`` written on transposed operands: ``w`` read
    as HWOI, so JAX's transpose for ``dx`` (the input gradient) reads it back as HWIO; ``x``
    as CHWN, ``dw`` as IHWO and the output as HWNC, so JAX's transpose for ``dw`` (the kernel
    gradient) is a convolution of ``x`` in [C, H, W, N] with the output gradient in
    [H, W, N, C], written [I, H, W, O]: every backward convolution is in XLA:CPU's canonical
    layout, with the operand transposes as explicit ops XLA cannot leave out inside a loop
    body. Zero tangents are symbolic, so a gradient with respect to the kernel only does not
    compute ``conv(0, w)``."""
    global _CANONICAL
    if _CANONICAL is not None:
        return _CANONICAL
    import functools

    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.custom_derivatives import SymbolicZero

    def conv(x, w, strides, padding, precision, preferred, dn=("NHWC", "HWIO", "NHWC")):
        return lax.conv_general_dilated(
            x,
            w,
            strides,
            padding,
            dimension_numbers=dn,
            precision=precision,
            preferred_element_type=preferred,
        )

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
    def canonical(x, w, strides, padding, precision, preferred):
        return conv(x, w, strides, padding, precision, preferred)

    @functools.partial(canonical.defjvp, symbolic_zeros=True)
    def _jvp(strides, padding, precision, preferred, primals, tangents):
        x, w = primals
        dx, dw = tangents
        y = conv(x, w, strides, padding, precision, preferred)
        parts = []
        if type(dx) is not SymbolicZero:
            w_hwoi = jnp.transpose(w, (0, 1, 3, 2))
            dn = ("NHWC", "HWOI", "NHWC")
            parts.append(conv(dx, w_hwoi, strides, padding, precision, preferred, dn))
        if type(dw) is not SymbolicZero:
            x_chwn = jnp.transpose(x, (3, 1, 2, 0))
            dw_ihwo = jnp.transpose(dw, (2, 0, 1, 3))
            dn = ("CHWN", "IHWO", "HWNC")
            t = conv(x_chwn, dw_ihwo, strides, padding, precision, preferred, dn)
            parts.append(jnp.transpose(t, (2, 0, 1, 3)))
        dy = functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)
        return y, dy

    _CANONICAL = canonical
    return canonical


_CANONICAL = None


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` with the same arguments and results. On a CPU backend,
    for NHWC/HWIO without dilation or groups (see the module docstring): a convolution over a
    small input is computed as shifted slices of the padded input, concatenated in the
    kernel's (h, w, in) order, times the kernel reshaped to ``[kh*kw*in, out]`` (its
    gradients are slices, pads and matmuls); any other is ``lax.conv_general_dilated`` with
    :func:`_canonical_conv`'s derivatives, whose backward convolutions keep XLA:CPU's fast
    layout inside loop bodies. Equal within float32 rounding, derivatives of any order and
    forward mode included."""
    import jax.numpy as jnp
    from jax import lax

    kwargs = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    groups = (feature_group_count, batch_group_count)
    path = _path(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, groups)
    if path == "lax":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    if path == "canonical" and _onednn_applies(lhs, rhs, padding, preferred_element_type):
        from jpanning import onednn

        return onednn.conv(lhs, rhs, (sh, sw), padding)
    if path == "canonical":
        conv = _canonical_conv()
        return conv(lhs, rhs, (sh, sw), padding, precision, preferred_element_type)
    (top, bottom), (left, right) = padding
    x = lax.pad(
        lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    if ho <= 0 or wo <= 0:  # an empty output, as lax's
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    cols = [
        lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return lax.dot_general(
        jnp.concatenate(cols, axis=-1),
        rhs.reshape(kh * kw * cin, cout),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
