"""Where the PyTorch references run: on the GPU when JAX runs on one, so that both frameworks
are timed on the same chip, else on the CPU.

On a GPU PyTorch uses TensorFloat-32 for float32 matrix products and convolutions, as JAX
does with ``jax_default_matmul_precision`` unset (PyTorch's own default uses it for cuDNN
convolutions only), and full float32 when JAX's setting asks for float32 accuracy
(:data:`FULL_FLOAT32`, e.g. ``JAX_DEFAULT_MATMUL_PRECISION=highest``). Both settings are
recorded (:func:`describe`). JAX takes 75% of the GPU's memory at start unless
``XLA_PYTHON_CLIENT_MEM_FRACTION`` says otherwise; PyTorch gets what is left.
"""

from __future__ import annotations

CHOICES = ("auto", "cpu", "cuda")
# jax_default_matmul_precision values that ask for float32 accuracy (or better) in products.
FULL_FLOAT32 = (
    "highest",
    "float32",
    "F32_F32_F32",
    "F64_F64_F64",
    "BF16_BF16_F32_X6",
    "BF16_BF16_F32_X9",
    "TF32_TF32_F32_X3",
)


def resolve(choice: str = "auto") -> str:
    """``"cuda"`` or ``"cpu"`` for ``choice`` (``auto``: CUDA when JAX's backend is a GPU).

    Raises:
        ValueError: an unknown choice, or ``cuda`` where PyTorch sees no CUDA device.
    """
    if choice not in CHOICES:
        raise ValueError(f"torch device {choice!r}; choose from: {', '.join(CHOICES)}")
    import jax
    import torch

    if choice == "auto":
        choice = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("torch device 'cuda': PyTorch sees no CUDA device")
        tf32 = jax.config.jax_default_matmul_precision not in FULL_FLOAT32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return choice


def synchronized(fn, device: str):
    """``fn``, then a wait for the work it queued on ``device``, so a timer sees all of it."""
    if device == "cpu":
        return fn
    import torch

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def describe(device: str) -> dict:
    """PyTorch's version, device and float32 settings, and JAX's precision setting, recorded
    next to the timings."""
    import jax
    import torch

    out = {"version": torch.__version__, "device": device}
    if device == "cuda":
        out["name"] = torch.cuda.get_device_name()
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        out["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    else:
        out["threads"] = torch.get_num_threads()
    out["jax_backend"] = jax.default_backend()
    out["jax_matmul_precision"] = jax.config.jax_default_matmul_precision
    return out


def label(info, threads=None) -> str:
    """``describe``'s record in words, for the markdown reports. Results written before
    2026-11-26 record PyTorch's version alone (a string), from runs on the CPU with
    ``threads`` threads."""
    if isinstance(info, str):
        info = {"version": info, "device": "cpu", "threads": threads}
    if info["device"] != "cuda":
        return f"torch {info['version']} on the CPU ({info['threads']} threads)"
    tf32 = "TF32" if info["tf32_matmul"] and info["tf32_cudnn"] else "full float32"
    words = f"torch {info['version']} on {info['name']} ({tf32}"
    if "jax_matmul_precision" in info:  # recorded since 2026-11-26 (the first H100 run lacks it)
        precision = info["jax_matmul_precision"] or "default"
        words += f"; JAX's precision setting: {precision}"
    return words + ")"


def add_argument(parser) -> None:
    """The benchmarks' ``--torch-device`` option (pass its value to :func:`resolve`)."""
    parser.add_argument(
        "--torch-device",
        default="auto",
        choices=CHOICES,
        help="where PyTorch runs (auto: the GPU when JAX runs on one)",
    )


def resolve_or_exit(parser, choice: str) -> str:
    """:func:`resolve`, with a missing PyTorch or an unusable device as a usage error."""
    try:
        return resolve(choice)
    except ImportError as e:
        parser.error(
            f"PyTorch is needed for the reference timings ({e}); pip install -r "
            "requirements-bench.txt"
        )
    except ValueError as e:
        parser.error(str(e))
