"""jpanning.onednn: oneDNN's convolutions in XLA:CPU programs against lax.conv_general_dilated.

Where oneDNN's headers are installed the library must be built and load (``make setup`` builds
it), so these tests skip only on machines that cannot build it.
"""

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jpanning import cpu, models, onednn, scores
from jpanning.errors import JPanningError

HEADERS = "/usr/include/oneapi/dnnl/dnnl.hpp"
pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu"
    or os.environ.get(cpu.ENV_SWITCH) == "0"
    or (not onednn.available() and not os.path.exists(HEADERS)),
    reason="no CPU backend, the CPU setting is off, or oneDNN cannot be built here",
)

DN = ("NHWC", "HWIO", "NHWC")


def _conv_loss(conv, stride, padding):
    def f(x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=DN)
        return jnp.sum(jnp.tanh(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

    return f


def _derivatives(conv, stride, padding, x, w):
    """Output, both gradients, a JVP, a forward-over-reverse HVP and a reverse-over-reverse
    Hessian-vector product in both arguments (the last exercises the transposes of the input
    and kernel gradients in both their operands)."""
    f = _conv_loss(conv, stride, padding)
    y = conv(x, w, (stride, stride), padding, dimension_numbers=DN)
    gx, gw = jax.grad(f, argnums=(0, 1))(x, w)
    jvp = jax.jvp(f, (x, w), (jnp.sin(x), jnp.cos(w)))[1]
    hvp_fwd = jax.jvp(lambda w: jax.grad(f, argnums=1)(x, w), (w,), (jnp.cos(w),))[1]

    def g_dot(x, w):
        a, b = jax.grad(f, argnums=(0, 1))(x, w)
        return jnp.vdot(a, jnp.sin(x)) + jnp.vdot(b, jnp.cos(w))

    hx, hw = jax.grad(g_dot, argnums=(0, 1))(x, w)
    return y, gx, gw, jvp, hvp_fwd, hx, hw


NAMES = ("output", "input grad", "kernel grad", "jvp", "hvp (fwd)", "hvp x (rev)", "hvp w (rev)")


def _assert_close(got, want, names, tol=2e-5):
    for name, g, r in zip(names, got, want):
        assert g.shape == r.shape, name
        scale = float(np.max(np.abs(r)))
        assert scale > 0, name
        np.testing.assert_allclose(g, r, atol=tol * scale, rtol=1e-4, err_msg=name)


def test_the_library_is_built_and_loads():
    assert onednn.available(), onednn.unavailable_reason()
    assert onednn.version().count(".") == 2
    assert cpu.describe()["convolution"] == f"oneDNN {onednn.version()}"


@pytest.mark.parametrize("channels", [(3, 8), (24, 20)])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_onednn_convolution_matches_lax(stride, padding, kernel, channels):
    """:func:`cpu.conv_general_dilated` (oneDNN on this CPU) against
    ``lax.conv_general_dilated`` on an odd 7x9 input: forward, both gradients and first- and
    second-order derivatives in both modes, within float32 rounding, and the compiled
    program calls oneDNN for every convolution (no XLA convolution left)."""
    c_in, c_out = channels
    rng = np.random.default_rng(stride * 100 + kernel * 10 + c_in)
    x = jnp.asarray(rng.normal(size=(5, 7, 9, c_in)).astype(np.float32))
    w = jnp.asarray((rng.normal(size=(kernel, kernel, c_in, c_out)) / kernel).astype(np.float32))
    want = jax.jit(lambda x, w: _derivatives(lax.conv_general_dilated, stride, padding, x, w))
    ours = jax.jit(lambda x, w: _derivatives(cpu.conv_general_dilated, stride, padding, x, w))
    _assert_close(ours(x, w), want(x, w), NAMES)
    hlo = ours.lower(x, w).compile().as_text()
    assert " convolution(" not in hlo
    for target in ("forward", "input_grad", "kernel_grad"):
        assert f'custom_call_target="jpanning_onednn_{target}"' in hlo


def test_explicit_asymmetric_padding_and_even_kernel():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 6, 5, 4)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(2, 2, 4, 6)).astype(np.float32))
    padding = ((1, 0), (2, 1))
    want = _derivatives(lax.conv_general_dilated, 1, padding, x, w)
    _assert_close(_derivatives(cpu.conv_general_dilated, 1, padding, x, w), want, NAMES)


def test_primitives_are_each_others_transposes():
    """``input_grad`` and ``kernel_grad`` equal lax's transposes of the convolution, and
    ``jax.linear_transpose`` of each primitive gives the adjoint the rules claim:
    <conv(x, w), g> = <x, input_grad(g, w)> = <w, kernel_grad(x, g)>."""
    forward, input_grad, kernel_grad = onednn.primitives()
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(4, 9, 8, 5)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)).astype(np.float32))
    kw = dict(strides=(2, 2), padding=(0, 1, 1, 1))
    y = forward(x, w, **kw)
    g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (2, 2), ((0, 1), (1, 1)), dimension_numbers=DN)

    (rx,) = jax.linear_transpose(lambda x: ref(x, w), x)(g)
    (rw,) = jax.linear_transpose(lambda w: ref(x, w), w)(g)
    dx = input_grad(g, w, input_hw=(9, 8), **kw)
    dw = kernel_grad(x, g, kernel_hw=(3, 3), **kw)
    _assert_close((y, dx, dw), (ref(x, w), rx, rw), ("forward", "input grad", "kernel grad"))
    np.testing.assert_allclose(jnp.vdot(y, g), jnp.vdot(x, dx), rtol=1e-4)
    np.testing.assert_allclose(jnp.vdot(y, g), jnp.vdot(w, dw), rtol=1e-4)
    (t_dy,) = jax.linear_transpose(lambda a: input_grad(a, w, input_hw=(9, 8), **kw), g)(x)
    (t_x,) = jax.linear_transpose(lambda a: kernel_grad(a, g, kernel_hw=(3, 3), **kw), x)(w)
    _assert_close(
        (t_dy, t_x),
        (forward(x, w, **kw), input_grad(g, w, input_hw=(9, 8), **kw)),
        ("input_grad^T", "kernel_grad^T"),
    )


@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0), (1, 3)])
def test_vmap_matches_lax(axes):
    """vmap over the input only (folded into the convolution's batch), over the kernel only,
    over both, and over other axes, with gradients: equal to lax's."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 7, 7, 6)).astype(np.float32)
    w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    xs = jnp.asarray(np.stack([x, 2 * x, -x]) if axes[0] is not None else x)
    ws = jnp.asarray(np.stack([w, -w, 0.5 * w]) if axes[1] is not None else w)
    if axes[0] is not None:
        xs = jnp.moveaxis(xs, 0, axes[0])
    if axes[1] is not None:
        ws = jnp.moveaxis(ws, 0, axes[1])

    def run(conv):
        f = _conv_loss(conv, 2, "SAME")
        y = jax.vmap(lambda x, w: conv(x, w, (2, 2), "SAME", dimension_numbers=DN), axes)(xs, ws)
        gx, gw = jax.vmap(jax.grad(f, argnums=(0, 1)), axes)(xs, ws)
        return y, gx, gw

    want = jax.jit(lambda: run(lax.conv_general_dilated))()
    got = jax.jit(lambda: run(cpu.conv_general_dilated))()
    _assert_close(got, want, ("output", "input grad", "kernel grad"))


def test_gradients_in_a_scan_body():
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(3, 4, 9, 9, 12)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 12, 10)).astype(np.float32) / 3)

    def run(conv):
        f = _conv_loss(conv, 1, "SAME")
        return jax.jit(lambda: lax.map(lambda x: jax.grad(f, (0, 1))(x, w), xs))()

    _assert_close(run(cpu.conv_general_dilated), run(lax.conv_general_dilated), ("gx", "gw"))


def test_concurrent_calls_from_threads_agree():
    """Programs run at once from several Python threads (each its own XLA execution) give the
    single-threaded results: the library's per-thread buffers are not shared."""
    rng = np.random.default_rng(9)
    shapes = [((8, 16, 16, 8), (3, 3, 8, 16)), ((8, 12, 10, 16), (3, 3, 16, 8))]
    args = [
        tuple(jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in pair) for pair in shapes
    ]
    f = jax.jit(jax.grad(_conv_loss(cpu.conv_general_dilated, 1, "SAME"), argnums=(0, 1)))
    want = [jax.device_get(f(*a)) for a in args]
    results, errors = {}, []

    def work(i):
        try:
            for r in range(5):
                results[(i, r)] = jax.device_get(f(*args[i % 2]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20
    for (i, _), got in results.items():
        for g, r in zip(got, want[i % 2]):
            np.testing.assert_array_equal(g, r)


def test_models_and_scorers_use_onednn_and_agree_with_xla():
    """A model's SNIP scores with oneDNN (the default here) and with XLA's convolution
    (``cpu.set_convolution("xla")``): the same scores within float32 rounding, and only the
    default program calls oneDNN, with no change by the caller."""
    model = models.create_model("tinycnn", 10)
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    apply_fn = models.make_apply_fn(model, variables["batch_stats"], train=True)
    rng = np.random.default_rng(0)
    batch = (
        jnp.asarray(rng.normal(size=(16, 8, 8, 3)).astype(np.float32)),
        jnp.asarray(np.arange(16) % 10, jnp.int32),
    )

    def snip():
        f = jax.jit(lambda p, b: scores.snip(apply_fn, p, b))
        text = f.lower(variables["params"], batch).compile().as_text()
        return text, f(variables["params"], batch)

    text, got = snip()
    previous = cpu.set_convolution("xla")
    try:
        xla_text, want = snip()
    finally:
        cpu.set_convolution(previous)
    assert "jpanning_onednn_kernel_grad" in text and " convolution(" not in text
    assert "jpanning_onednn" not in xla_text and " convolution(" in xla_text
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, r, atol=1e-5 * float(np.max(np.abs(r))), rtol=1e-4)


def test_choice_is_checked_and_unavailability_is_reported(monkeypatch):
    """The choice, explicit (``set_choice``) or the process default (``JPANNING_CPU_CONV``), is
    checked, and ``onednn`` where the library is missing is an error naming where it came
    from."""
    monkeypatch.setattr(onednn, "_CHOICE", None)  # whatever this process chose, restored
    with pytest.raises(JPanningError, match="convolution='cudnn'.*auto, onednn, xla"):
        onednn.set_choice("cudnn")
    monkeypatch.setenv(onednn.ENV_CHOICE, "xla")
    assert onednn.set_choice("ONEDNN") is None and onednn.choice() == "onednn"  # wins
    assert onednn.set_choice(None) == "onednn" and onednn.choice() == "xla"  # the default
    monkeypatch.setenv(onednn.ENV_CHOICE, "cudnn")
    with pytest.raises(JPanningError, match="JPANNING_CPU_CONV='cudnn'.*auto, onednn, xla"):
        onednn.choice()
    monkeypatch.setenv(onednn.ENV_CHOICE, "onednn")
    assert onednn.use_onednn()
    monkeypatch.setattr(onednn, "_STATE", {"error": "/x/_onednn_conv.so is not built"})
    with pytest.raises(JPanningError, match="JPANNING_CPU_CONV=onednn, but /x/_onednn_conv.so"):
        onednn.use_onednn()
    onednn.set_choice("onednn")
    with pytest.raises(JPanningError, match="convolution=onednn, but /x/_onednn_conv.so"):
        onednn.use_onednn()
    onednn.set_choice(None)
    monkeypatch.setenv(onednn.ENV_CHOICE, "auto")
    assert not onednn.use_onednn()  # auto: XLA's convolution where oneDNN is missing
    x, w = jnp.ones((2, 5, 5, 4)), jnp.ones((3, 3, 4, 3))
    hlo = (
        jax.jit(lambda x, w: cpu.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN))
        .lower(x, w)
        .as_text("hlo")
    )
    assert "convolution(" in hlo and "jpanning_onednn" not in hlo


def test_the_convolution_library_follows_the_choice():
    """:func:`cpu.convolution_library` (recorded with every result) names what the choice in
    force computes the convolutions with."""
    assert cpu.convolution_library() == f"oneDNN {onednn.version()}"
    previous = cpu.set_convolution("xla")
    try:
        assert cpu.convolution_library() == "XLA"
    finally:
        cpu.set_convolution(previous)


def test_empty_shapes_stay_with_lax():
    """An empty batch, or a kernel larger than its input (no output pixels), is lax's: oneDNN
    has nothing to compute."""

    def conv(x, w):
        return cpu.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)

    cases = [((0, 5, 5, 4), (3, 3, 4, 2)), ((2, 3, 3, 4), (5, 5, 4, 2))]
    for x_shape, w_shape in cases:
        x, w = jnp.ones(x_shape), jnp.ones(w_shape)
        want = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)
        assert jax.jit(conv)(x, w).shape == want.shape
        assert "jpanning_onednn" not in jax.jit(conv).lower(x, w).as_text("hlo")
