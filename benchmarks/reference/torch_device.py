"""Where the PyTorch references run: on the GPU when JAX runs on one, so that both frameworks
are timed on the same chip, else on the CPU.

On a GPU PyTorch follows JAX's float32 precision: TensorFloat-32 for matrix products and
convolutions by default, as JAX does with ``jax_default_matmul_precision`` unset (PyTorch's
own default uses it for cuDNN convolutions only); full float32 when that option is
``highest`` (``JAX_DEFAULT_MATMUL_PRECISION=highest``).
"""

from __future__ import annotations

CHOICES = ("auto", "cpu", "cuda")


def resolve(choice: str = "auto") -> str:
    """``"cuda"`` or ``"cpu"`` for ``choice`` (``auto``: CUDA when JAX's backend is a GPU)."""
    import jax
    import torch

    if choice not in CHOICES:
        raise ValueError(f"torch device {choice!r}; choose from: {', '.join(CHOICES)}")
    if choice == "auto":
        choice = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("torch device 'cuda': PyTorch sees no CUDA device")
        tf32 = jax.config.jax_default_matmul_precision not in ("highest", "float32")
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
    """PyTorch's version, device and float32 settings, recorded next to its timings."""
    import torch

    out = {"version": torch.__version__, "device": device}
    if device == "cuda":
        out["name"] = torch.cuda.get_device_name()
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        out["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    else:
        out["threads"] = torch.get_num_threads()
    return out


def label(info: dict) -> str:
    """``describe``'s record in words, for the markdown reports."""
    if info["device"] == "cuda":
        tf32 = "TF32" if info["tf32_matmul"] and info["tf32_cudnn"] else "full float32"
        return f"torch {info['version']} on {info['name']} ({tf32}, as JAX)"
    return f"torch {info['version']} on the CPU ({info['threads']} threads)"


def add_argument(parser) -> None:
    """The benchmarks' ``--torch-device`` option (pass its value to :func:`resolve`)."""
    parser.add_argument(
        "--torch-device",
        default="auto",
        choices=CHOICES,
        help="where PyTorch runs (auto: the GPU when JAX runs on one)",
    )
