"""jpanning.cpu: the CPU convolution setting gives the numbers of XLA's default path, is in
force for every jit once ``cpu.configure()`` ran (tests/conftest.py calls it, as run.py does),
and leaves a user's choice alone."""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
import pytest
from jax import lax

from jpanning import cpu, models

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or cpu.user_choice() or not cpu._jaxlib_measured(),
    reason="the CPU setting is off here (no CPU backend, opted out, or another jaxlib)",
)

DN = ("NHWC", "HWIO", "NHWC")


def _conv(stride, padding, x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


@pytest.mark.parametrize("channels", [(3, 8), (24, 20)])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fast_convolution_matches_xla_default(stride, padding, kernel, channels):
    """Forward pass and both gradients (input, kernel) of the convolution as jpanning's CPU
    setting compiles it (the process flag) against
    ``lax.conv_general_dilated`` compiled with XLA's default YNNPACK convolution, on an odd
    7x9 input."""
    c_in, c_out = channels
    rng = np.random.default_rng(stride * 100 + kernel * 10 + c_in)
    x = jnp.asarray(rng.normal(size=(5, 7, 9, c_in)).astype(np.float32))
    w = jnp.asarray((rng.normal(size=(kernel, kernel, c_in, c_out)) / kernel).astype(np.float32))
    conv = functools.partial(_conv, stride, padding)
    cot = jnp.asarray(rng.normal(size=conv(x, w).shape).astype(np.float32))

    def fwd_and_grads(x, w):
        y, vjp = jax.vjp(conv, x, w)
        return (y, *vjp(cot))

    def run(options):
        compiled = jax.jit(fwd_and_grads, compiler_options=options).lower(x, w).compile()
        return compiled.as_text(), [np.asarray(a) for a in compiled(x, w)]

    ref_text, want = run(cpu.options(cpu.XLA_DEFAULT_TYPES))
    if c_in > 16:  # XLA's default sends these convolutions to YNNPACK, so the programs differ
        assert "__ynn_fusion" in ref_text
    text, got = run(None)
    if c_in > 16:
        assert text != ref_text  # another program: the comparison is not vacuous
    for name, g, r in zip(("output", "input gradient", "kernel gradient"), got, want):
        assert g.shape == r.shape
        scale = np.max(np.abs(r))
        np.testing.assert_allclose(g, r, atol=1e-5 * scale, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 2), 3, 1, "SAME"),  # VGG's last block on CIFAR
        ((2, 4), 3, 1, "SAME"),
        ((1, 1), 3, 1, "SAME"),
        ((2, 3), 3, 2, "SAME"),
        ((1, 7), 2, 1, "SAME"),  # even kernel: padding (0, 1)
        ((2, 2), 3, 1, ((2, 0), (1, 2))),  # explicit, asymmetric
        ((2, 2), 1, 1, "SAME"),  # 1x1 kernel: a convolution op (the canonical path)
        ((3, 3), 3, 1, "SAME"),  # 9 pixels: a convolution op
        ((7, 9), 3, 2, "SAME"),
        ((7, 9), 1, 2, "VALID"),  # a ResNet option-B shortcut
        ((6, 5), 2, 1, ((1, 0), (2, 1))),  # even kernel, explicit asymmetric padding
    ],
)
def test_convolution_matches_lax(shape, kernel, stride, padding):
    """:func:`cpu.conv_general_dilated` against ``lax.conv_general_dilated``: output, both
    gradients, a forward-mode derivative in both arguments (as ``scores.effective_sparsity``
    takes one) and a Hessian-vector product (forward over reverse, as GraSP takes it) within
    float32 rounding; inputs of at most 8 pixels under a wider kernel compile without a
    convolution op (the slices + matmul path), the others to convolutions (the canonical
    path's custom derivatives)."""
    rng = np.random.default_rng(sum(shape) * 10 + kernel)
    x = jnp.asarray(rng.normal(size=(6, *shape, 24)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 24, 20)).astype(np.float32) / kernel)

    def loss(conv):
        def f(x, w):
            y = conv(x, w, (stride, stride), padding, dimension_numbers=DN)
            return jnp.sum(jnp.tanh(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

        return f

    def outputs(conv):
        f = loss(conv)
        y = conv(x, w, (stride, stride), padding, dimension_numbers=DN)
        gx, gw = jax.grad(f, argnums=(0, 1))(x, w)
        hvp = jax.jvp(lambda w: jax.grad(f, argnums=1)(x, w), (w,), (jnp.cos(w),))[1]
        jvp = jax.jvp(f, (x, w), (jnp.sin(x), jnp.cos(w)))[1]
        return y, gx, gw, hvp, jvp

    want = jax.jit(lambda: outputs(lax.conv_general_dilated))()
    got = jax.jit(lambda: outputs(cpu.conv_general_dilated))()
    names = ("output", "input grad", "kernel grad", "hvp", "jvp")
    for name, g, r in zip(names, got, want):
        assert g.shape == r.shape, name
        scale = float(np.max(np.abs(r)))
        assert scale > 0, name
        np.testing.assert_allclose(g, r, atol=2e-5 * scale, rtol=1e-4, err_msg=name)
    hlo = jax.jit(lambda x, w: outputs(cpu.conv_general_dilated)).lower(x, w).as_text("hlo")
    small = shape[0] * shape[1] <= cpu.SMALL_INPUT and kernel > 1
    in_onednn = "jpanning_onednn" in hlo  # jpanning.onednn, where it is built
    assert in_onednn == (not small and cpu.convolution_library() != "XLA")
    assert ("convolution(" not in hlo) == (small or in_onednn)


def test_backward_convolutions_in_a_loop_body_are_canonical(xla_convolution):
    """Inside a ``lax.map`` body, the gradients of :func:`cpu.conv_general_dilated` with XLA's
    convolution (where oneDNN is not built, or ``cpu.set_convolution("xla")``) compile to
    convolutions in XLA:CPU's canonical layout (``b01f_01io->b01f``, its fast path); those of
    ``lax.conv_general_dilated`` do not (XLA leaves their operands untransposed there), and
    both give the same gradients."""
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(2, 4, 9, 9, 12)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 12, 10)).astype(np.float32) / 3)

    def grads(conv):
        def loss(x, w):
            return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME", dimension_numbers=DN)))

        return jax.jit(lambda xs, w: lax.map(lambda x: jax.grad(loss, (0, 1))(x, w), xs))

    def labels(f):
        hlo = f.lower(xs, w).compile().as_text()
        return [
            line.split("dim_labels=")[1].split(",")[0]
            for line in hlo.splitlines()
            if " convolution(" in line
        ]

    ours, theirs = grads(cpu.conv_general_dilated), grads(lax.conv_general_dilated)
    assert len(labels(ours)) == 3  # forward, input gradient, kernel gradient
    assert set(labels(ours)) == {"b01f_01io->b01f"}
    assert set(labels(theirs)) != {"b01f_01io->b01f"}
    for g, r in zip(ours(xs, w), theirs(xs, w)):
        np.testing.assert_allclose(g, r, atol=1e-5 * float(np.max(np.abs(r))), rtol=1e-4)


def test_small_input_convolution_is_lax_when_switched_off(monkeypatch):
    """``JPANNING_CPU_FAST=0`` gives lax's convolution for every shape, through the models'
    :func:`models.conv` too."""
    layer = models.conv(8, 3)
    x = jnp.ones((2, 2, 2, 4))
    variables = layer.init(jax.random.key(0), x)

    def hlo():
        return jax.jit(layer.apply).lower(variables, x).as_text("hlo")

    assert "convolution(" not in hlo()
    monkeypatch.setenv(cpu.ENV_SWITCH, "0")
    assert "convolution(" in hlo()


class _UserNet(nn.Module):
    """A user's own Flax model, wider than YNNPACK's 16-channel threshold."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_user_model_gradient_compiles_with_the_process_setting():
    """In this process (``cpu.configure()`` before JAX started, as conftest does) a plain
    ``jax.jit`` of a user's Flax model's gradient compiles to the program of the explicit
    :data:`cpu.PROCESS_TYPES` option, not to XLA's default one."""
    model = _UserNet()
    x = jnp.ones((2, 8, 8, 3))
    params = model.init(jax.random.key(0), x)["params"]

    def grad(p, x):
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(p)

    def text(options):  # the compiled program without source metadata, which can differ
        # between two traces of the same function (stack frames of a first call)
        t = jax.jit(grad, compiler_options=options).lower(params, x).compile().as_text()
        t = re.sub(r"\nFileNames\n.*?\nStackFrames\n(\d+ \{[^\n]*\}\n)*", "\n", t, flags=re.S)
        return re.sub(r", metadata=\{[^}]*\}", "", t)

    plain = text(None)
    assert plain == text(cpu.options(cpu.PROCESS_TYPES))
    assert plain != text(cpu.options(cpu.XLA_DEFAULT_TYPES))


_PROBE = """
import json, os, sys
if sys.argv[1] == "started":
    import jax
    jax.devices()
import jpanning
from jpanning import cpu
flags_at_import = os.environ.get("XLA_FLAGS")
cpu.configure(convolution=sys.argv[2])
print(json.dumps({"import": flags_at_import, "flags": os.environ.get("XLA_FLAGS"),
                  "user": cpu.user_choice(), "convolution": cpu.convolution_library()}))
"""


def _run_probe(code, *args, drop=(), **env):
    """The JSON ``code`` prints last, run in a fresh Python without the variables in ``drop``
    and with ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full | env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(case, convolution="xla", **env):
    """:data:`_PROBE`, configured with XLA's convolutions by default."""
    drop = ("XLA_FLAGS", cpu.ENV_SWITCH, "JPANNING_CPU_CONV")
    return _run_probe(_PROBE, case, convolution, drop=drop, **env)


def test_configure_sets_the_flag_and_respects_choices():
    """Fresh processes: ``import jpanning`` leaves ``XLA_FLAGS`` alone; ``cpu.configure()``
    adds the option (after flags the user set for other things); ``JPANNING_CPU_FAST=0`` and
    a user's own value of the option are left alone, and so is a process whose JAX had started
    (XLA has read its flags). ``configure(convolution=...)`` chooses the convolution over
    ``JPANNING_CPU_CONV``, the process default."""
    value = cpu.fusion_types(cpu.PROCESS_TYPES)
    theirs = "--xla_cpu_enable_fast_math=false"
    fresh = _probe("fresh", XLA_FLAGS=theirs)
    assert fresh["import"] == theirs
    assert fresh["flags"] == f"{theirs} --{cpu.YNN_OPTION}={value}"
    assert fresh["user"] is False and fresh["convolution"] == "XLA"
    # the explicit choice wins over the process default
    assert _probe("fresh", JPANNING_CPU_CONV="onednn")["convolution"] == "XLA"

    off = _probe("fresh", JPANNING_CPU_FAST="0")
    assert off == {"import": None, "flags": None, "user": True, "convolution": "XLA"}

    mine = f"--{cpu.YNN_OPTION}="
    user = _probe("fresh", XLA_FLAGS=mine)
    assert user == {"import": mine, "flags": mine, "user": True, "convolution": "XLA"}

    started = _probe("started")
    assert started["flags"] is None and started["user"] is False


@pytest.mark.parametrize(
    "version, measured",
    [
        ("0.10.2", True),
        ("0.10.0.dev20261101", True),
        ("0.11.2", True),
        ("0.9.9", False),
        ("0.12.0", False),
    ],
)
def test_the_setting_applies_only_to_the_measured_jaxlib(monkeypatch, version, measured):
    monkeypatch.setattr(cpu.metadata, "version", lambda name: version)
    assert cpu._jaxlib_measured() is measured


_MALLOC_PROBE = """
import ctypes, json, resource, sys, threading
import jpanning
from jpanning import cpu

cpu.configure()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, faults = int(sys.argv[1]) << 20, []


def touch():  # on a worker thread, as XLA's executions are
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


t = threading.Thread(target=touch)
t.start()
t.join()
print(json.dumps({"faults": faults[-1], "malloc": cpu.allocator_setting()}))
"""


def _malloc_probe(mib=64, **env):
    drop = (cpu.ENV_SWITCH, "JAX_PLATFORMS", "GLIBC_TUNABLES", *cpu.MALLOC_ENV)
    return _run_probe(_MALLOC_PROBE, str(mib), drop=drop, **env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_configure_keeps_freed_memory_for_the_next_allocation():
    """Fresh processes free and reallocate 64 MiB three times on a thread: after
    ``cpu.configure()`` the third time reuses the process's pages (no page faults); with the setting
    off, or with the user's own malloc settings, glibc maps it fresh and faults every page
    back in (16,384 faults of 4 KiB, fewer with transparent huge pages). Also for 2.25 GiB,
    more than the largest positive trim threshold (2**31 - 1), which would hand the heap's top
    back to the kernel after every free (589,824 faults per round)."""
    on = _malloc_probe()
    assert on["malloc"] == "jpanning: arena_max=1, mmap_max=0, trim_threshold=-1"
    big = _malloc_probe(2304)
    assert big["faults"] < 1000, big
    off = _malloc_probe(**{cpu.ENV_SWITCH: "0"})
    assert off["malloc"] == "glibc default"
    assert off["faults"] > 0 and on["faults"] * 10 < off["faults"], (on, off)
    user = _malloc_probe(MALLOC_ARENA_MAX="4")
    assert user["malloc"] == "user" and user["faults"] * 10 > off["faults"], (user, off)
    assert _malloc_probe(GLIBC_TUNABLES="glibc.malloc.hugetlb=1")["malloc"] == "user"
    assert _malloc_probe(JAX_PLATFORMS="cuda")["malloc"] == "glibc default"


def test_cpu_expected_reads_jax_platforms_and_the_installed_plugins(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert cpu._cpu_expected()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not cpu._cpu_expected()
    monkeypatch.delenv("JAX_PLATFORMS")
    import pkgutil

    installed = [pkgutil.ModuleInfo(None, "jaxlib", True)]
    monkeypatch.setattr(pkgutil, "iter_modules", lambda: iter(installed))
    assert cpu._cpu_expected()
    installed.append(pkgutil.ModuleInfo(None, "jax_cuda13_plugin", True))
    assert not cpu._cpu_expected()
