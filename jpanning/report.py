"""Output of a run: atomic files, the environment it ran in, a density plot, a summary table."""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import tempfile
from importlib import metadata
from typing import Any

import numpy as np
from flax import traverse_util

VERSIONED = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "chex",
    "rlax",
    "tensorflow-datasets",
    "array_record",
    "numpy",
)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the old one intact.
    In a multi-process run (``jax.distributed``) only process 0 writes.
    """
    import jax

    if jax.process_index() != 0:
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_result(
    out: str, stem: str, result: Any, markdown: list[str], *, echo: bool = True
) -> None:
    """A benchmark's ``<stem>.json`` and ``<stem>.md`` in ``out`` (created if missing),
    each written atomically; the markdown is printed too unless ``echo`` is False."""
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, f"{stem}.json"), result)
    text = "\n".join(markdown) + "\n"
    atomic_write_bytes(os.path.join(out, f"{stem}.md"), text.encode())
    if echo:
        print(text, end="")


def machine_line(env: dict, packages=("jax",), extra: str = "") -> str:
    """The ``Machine:`` line of a result's markdown from :func:`environment`'s record: CPU,
    cores, device, the ``packages``' versions, ``extra`` and the date."""
    versions = ", ".join(f"{name} {env['versions'][name]}" for name in packages)
    device = env["device"]
    return (
        f"Machine: {env['machine']['cpu']}, {env['machine']['cores']} cores; device "
        f"{device['kind']} ({device['platform']}); {versions}; "
        + (f"{extra}; " if extra else "")
        + env["date"]
    )


def flatten_tree(tree: Any) -> dict[str, np.ndarray]:
    """``{'block/conv/kernel': array}`` for a nested dict pytree."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def save_npz(path: str, **trees: Any) -> None:
    """Save nested-dict pytrees to one ``.npz`` with keys ``'<tree>/<path>'``, atomically."""
    arrays = {}
    for name, tree in trees.items():
        arrays.update({f"{name}/{k}": v for k, v in flatten_tree(tree).items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str) -> dict[str, Any]:
    """Inverse of :func:`save_npz`: ``{'<tree>': nested dict of numpy arrays}``."""
    with np.load(path) as data:
        flat = {tuple(k.split("/")): data[k] for k in data.files}
    return traverse_util.unflatten_dict(flat)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions, device and machine, recorded next to every result."""
    import jax  # deferred: keeps this module importable without initialising a backend

    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from jpanning import cpu

    devices = jax.devices()
    return {
        "versions": versions,
        "xla_cpu": cpu.describe(),
        "device": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
        },
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "system": platform.platform()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str) -> None:
    """Write ``fig`` as a PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_layer_density(sparsity: dict, path: str, title: str) -> None:
    """Bar chart of the kept fraction of each prunable layer, written atomically as PNG."""
    plt = pyplot()
    names = list(sparsity["layers"])
    density = [sparsity["layers"][n]["density"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(names) + 2), 4.2))
    ax.bar(range(len(names)), density, color="#3b75af")
    ax.axhline(
        sparsity["density"],
        color="#d62728",
        ls="--",
        lw=1,
        label=f"overall {sparsity['density']:.4f}",
    )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [n.removesuffix("/kernel") for n in names], rotation=75, fontsize=7, ha="right"
    )
    ax.set_ylabel("density (kept fraction)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    save_png(fig, path)


def plot_learning_curve(steps, returns, path: str, title: str, window: int = 10) -> None:
    """Episode return against the agent step it ended at, with a moving average; PNG."""
    plt = pyplot()
    steps, returns = np.asarray(steps), np.asarray(returns, np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, returns, ".", color="#3b75af", alpha=0.5, label="episode return")
    if len(returns) > window:  # at least two points of the average
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="#d62728", label=f"mean of {window}")
    if not len(returns):
        ax.text(0.5, 0.5, "no episode completed", ha="center", transform=ax.transAxes)
    below = _outliers_below(returns)
    if below is not None:  # a rare collapsed episode would squash the curve: cut the axis
        low, count = below
        ax.set_ylim(bottom=low)
        ax.text(0.01, 0.01, f"{count} episode(s) below {low:.0f} not shown", fontsize=7,
                transform=ax.transAxes, va="bottom")  # fmt: skip
    ax.set_xlabel("agent step")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path)


def _outliers_below(values: np.ndarray) -> tuple[float, int] | None:
    """``(axis floor, count)`` when a few values lie far below the rest: more than 3
    interquartile ranges under the first quartile, at most 1% of them; else None."""
    if len(values) < 20:
        return None
    q1, q3 = np.percentile(values, [25, 75])
    floor = q1 - 3.0 * max(q3 - q1, 1e-12)
    count = int(np.sum(values < floor))
    if count == 0 or count > 0.01 * len(values):
        return None
    return float(floor - 0.05 * (values.max() - floor)), count


def summary_table(rows: list[tuple[str, str]]) -> str:
    """A two-column plain-text table."""
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * (max(len(v) for _, v in rows) + 2) + "+"
    body = [f"| {k.ljust(width)} | {v.ljust(len(line) - width - 7)} |" for k, v in rows]
    return "\n".join([line, *body, line])


def plot_layer_alphas(layers, alphas, densities, path: str, title: str) -> None:
    """PuRL's threshold α per layer (bars) and the density the final mask keeps (line); PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers)), 4.5))
    x = np.arange(len(layers))
    ax.bar(x, alphas, color="tab:blue", label="α (prune |w| < α·std)")
    ax.set_ylabel("α")
    ax.set_xticks(x, [name.removesuffix("/kernel") for name in layers], rotation=75, fontsize=7)
    twin = ax.twinx()
    twin.plot(x, densities, color="tab:orange", marker="o", ms=3, label="density kept")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("density (kept fraction)")
    ax.set_title(title)
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
