"""Loading datasets into host-side numpy arrays: :class:`Dataset` and :func:`load_dataset`.

Real datasets come from our tfds builders (:mod:`jpanning.data.builders`), prepared once into
``data_dir`` and then read back by index from ``array_record`` files, all without TensorFlow.
``synthetic`` is generated in memory for tests and smoke runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jpanning.data.hosts import HOST_TIMEOUT_S, host_reachable  # noqa: F401 (also its API)
from jpanning.errors import JPanningError

DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "synthetic")
AUGMENTED = frozenset({"cifar10", "cifar100"})  # random crop + flip in training (He et al.)
DATA_DIR_ENV = "JPANNING_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
# Debian's package `dataset-fashion-mnist` installs the four IDX .gz files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR_HOST = "www.cs.toronto.edu"
_READ_CHUNK = 10_000  # examples per bulk read: bounds the list of decoded dicts in memory
# What load_dataset("synthetic") generates (see synthetic_splits). 16x16 fits every jpanning
# model (LeNet-5's unpadded 5x5 convolution after a 2x2 pool needs at least 12x12).
SYNTHETIC_DEFAULTS = {
    "num_train": 1000,
    "num_test": 200,
    "image_shape": (16, 16, 1),
    "num_classes": 10,
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test splits as normalised host-side numpy arrays.

    Attributes:
      name: the jpanning name, e.g. ``"cifar10"``.
      train_images: float32 ``(N_train, H, W, C)``, per channel ``(x - mean) / std``.
      train_labels: int32 ``(N_train,)`` in ``0..num_classes-1``.
      test_images: float32 ``(N_test, H, W, C)``, normalised with the *train* statistics.
      test_labels: int32 ``(N_test,)``.
      num_classes: number of classes.
      augment: whether training should use :func:`jpanning.data.augment_batch`
        (random crop after 4-pixel zero padding + horizontal flip); True for CIFAR.
      source: one line saying where the data came from.
      mean: float32 ``(C,)`` per-channel mean of the raw train images (pixel units).
      std: float32 ``(C,)`` per-channel standard deviation of the raw train images.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    augment: bool
    source: str
    mean: np.ndarray
    std: np.ndarray

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.train_images.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Loads a dataset's train and test splits, normalised per channel.

    Real datasets are read from ``data_dir`` if already prepared there; otherwise they are
    prepared once from local raw files or a download (see :func:`data_origin`).

    Args:
      name: one of ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``synthetic``.
      data_dir: tfds data dir; default ``$JPANNING_DATA_DIR`` or ``~/tensorflow_datasets``.
        A directory given here or in the environment variable must exist.
      train_limit: keep at most this many train examples: a seeded subset, balanced across
        classes as far as the class sizes allow (for quick runs). None keeps all.
      test_limit: the same for the test split.
      seed: seeds the subsets (the synthetic data itself is fixed, like a real dataset's).
      download: allow downloading when the data is neither prepared nor available locally.

    Returns:
      A :class:`Dataset`; the normalisation statistics come from the returned train images.

    Raises:
      JPanningError: unknown name, missing data_dir, data not available, bad limits.
    """
    _check(name, train_limit, test_limit)
    splits, num_classes, source = read_splits(name, data_dir, download=download)
    return from_splits(
        name, splits, num_classes, source, train_limit=train_limit, test_limit=test_limit, seed=seed
    )


def read_splits(
    name: str, data_dir: str | None = None, *, download: bool = True
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, str]:
    """The raw train and test splits of a dataset, as stored (uint8 images for real data).

    Args:
      name, data_dir, download: as for :func:`load_dataset`.

    Returns:
      ``(splits, num_classes, source)``: ``splits`` maps ``"train"`` and ``"test"`` to
      ``(images, labels)`` (NHWC, int labels); ``source`` is one line saying where they came
      from. :func:`from_splits` turns them into a :class:`Dataset`.
    """
    _check(name, None, None)
    if name == "synthetic":
        return _synthetic_splits(seed=0)
    return _read_tfds(name, resolve_data_dir(data_dir, name), download)


def from_splits(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    source: str,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A :class:`Dataset` from raw splits (:func:`read_splits`'s, or the same arrays saved and
    carried elsewhere): the seeded limits, then normalisation with the train statistics.

    Args:
      name: the dataset's jpanning name (it decides augmentation).
      splits, num_classes, source: as :func:`read_splits` returns them.
      train_limit, test_limit, seed: as for :func:`load_dataset`.
    """
    _check(name, train_limit, test_limit)
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
    train_rng, test_rng = (np.random.default_rng([seed, i]) for i in range(2))
    if train_limit is not None:
        keep = balanced_subset(train_labels, train_limit, train_rng)
        train_images, train_labels = train_images[keep], train_labels[keep]
    if test_limit is not None:
        keep = balanced_subset(test_labels, test_limit, test_rng)
        test_images, test_labels = test_images[keep], test_labels[keep]
    mean, std = channel_stats(train_images)
    return Dataset(
        name=name,
        train_images=normalise(train_images, mean, std),
        train_labels=train_labels.astype(np.int32),
        test_images=normalise(test_images, mean, std),
        test_labels=test_labels.astype(np.int32),
        num_classes=num_classes,
        augment=name in AUGMENTED,
        source=source,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )


def _check(name: str, train_limit: int | None, test_limit: int | None) -> None:
    if name not in DATASET_NAMES:
        raise JPanningError(f"unknown dataset {name!r}; choose from: {', '.join(DATASET_NAMES)}")
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise JPanningError(f"dataset {name}: {label} must be a positive integer, got {limit}")


def resolve_data_dir(data_dir: str | None, dataset: str) -> str:
    """The data dir to use: the argument, else ``$JPANNING_DATA_DIR``, else the default.

    Args:
      data_dir: a user-given directory or None.
      dataset: named in the error message.

    Returns:
      An absolute path. A given directory (argument or environment) must exist; the default
      ``~/tensorflow_datasets`` is created on demand.
    """
    for given, what in ((data_dir, "data_dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")):
        if given:
            path = os.path.abspath(os.path.expanduser(given))
            if not os.path.isdir(path):
                raise JPanningError(
                    f"cannot load {dataset}: {what} {path} does not exist "
                    "(create it, or leave it unset for ~/tensorflow_datasets)"
                )
            return path
    return os.path.abspath(os.path.expanduser(DEFAULT_DATA_DIR))


def data_origin(name: str, data_dir: str) -> tuple[str, str]:
    """Where a tfds-backed dataset would come from, without touching the network.

    Order: prepared in ``data_dir``; for ``fashion_mnist`` the Debian files in
    ``/usr/share/datasets/fashion-mnist``; raw files in the manual dir
    (``<data_dir>/downloads/manual`` or its ``<name>/`` sub-folder); else a download.

    Args:
      name: a tfds-backed dataset name (not ``synthetic``).
      data_dir: an existing or default data dir (see :func:`resolve_data_dir`).

    Returns:
      ``(kind, path)``: kind is ``"prepared"`` (path: the prepared folder), ``"local"``
      (path: the folder to use as manual dir) or ``"download"`` (path: the manual dir that
      was searched).
    """
    return _origin(_builder(name, data_dir), name, data_dir)


def _origin(builder, name: str, data_dir: str) -> tuple[str, str]:
    # Check the info file first: is_prepared() logs a warning for every missing folder.
    if (builder.data_path / "dataset_info.json").exists() and builder.is_prepared():
        return "prepared", os.fspath(builder.data_path)
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    # (folder holding the raw files, manual dir to hand to the builder, which itself looks in
    # <manual dir>/<name>/ and then <manual dir>/).
    candidates = [(os.path.join(manual_dir, name), manual_dir), (manual_dir, manual_dir)]
    if name == "fashion_mnist":
        candidates.insert(0, (DEBIAN_FASHION_MNIST_DIR, DEBIAN_FASHION_MNIST_DIR))
    for folder, manual_dir_to_use in candidates:
        if os.path.isdir(folder) and builder.find_local_files(folder):
            return "local", manual_dir_to_use
    return "download", manual_dir


def resolve_default_dataset(data_dir: str | None = None) -> tuple[str, str]:
    """Picks the default dataset: CIFAR-10 when tfds can provide it, else Fashion-MNIST.

    CIFAR-10 can be provided when it is prepared in ``data_dir``, its archive is in the manual
    dir, or its download host answers a TCP connect within ~2 s (a proxy-only network reads
    as unreachable).

    Args:
      data_dir: as for :func:`load_dataset`.

    Returns:
      ``(name, reason)``, the reason being one human-readable line (which data, why).
    """
    root = resolve_data_dir(data_dir, "the default dataset")
    kind, path = data_origin("cifar10", root)
    if kind == "prepared":
        return "cifar10", f"CIFAR-10: prepared in {path}"
    if kind == "local":
        return "cifar10", f"CIFAR-10: raw files in {path}, to be prepared into {root}"
    reachable, why = host_reachable(CIFAR_HOST, 443, HOST_TIMEOUT_S)
    if reachable:
        return "cifar10", (
            f"CIFAR-10: not prepared in {root}; {CIFAR_HOST} is reachable to download it"
        )
    kind, path = data_origin("fashion_mnist", root)
    fashion = {
        "prepared": f"prepared in {path}",
        "local": f"from the raw files in {path}",
        "download": "to be downloaded",
    }[kind]
    return "fashion_mnist", (
        f"Fashion-MNIST ({fashion}): CIFAR-10 is not prepared in {root} "
        f"and {CIFAR_HOST} is unreachable ({why})"
    )


def synthetic_splits(
    *,
    num_train: int,
    num_test: int,
    image_shape: tuple[int, int, int],
    num_classes: int,
    noise: float = 1.0,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generates a small learnable classification problem: class template + Gaussian noise.

    Each class ``c`` has a fixed random template ``t_c ~ N(0, 1)`` of ``image_shape``; an
    example is ``t_label + noise * N(0, 1)``. Labels are balanced (``i mod num_classes``,
    shuffled), so a linear model separates the classes after a few steps.

    Args:
      num_train, num_test: split sizes.
      image_shape: ``(H, W, C)``.
      num_classes: number of classes.
      noise: standard deviation of the per-pixel noise (templates have unit variance).
      seed: the same seed gives identical arrays.

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}``, float32 NHWC and int32.
    """
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((num_classes, *image_shape), dtype=np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        noise_draw = rng.standard_normal((n, *image_shape), dtype=np.float32)
        return templates[labels] + np.float32(noise) * noise_draw, labels

    return {"train": split(num_train), "test": split(num_test)}


def balanced_subset(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded subset of at most ``limit`` indices, spread evenly over the classes.

    Classes are visited round-robin, each in a random order, so every class gets
    ``limit // num_classes`` or one more example (fewer only where a class runs out).

    Args:
      labels: int ``(N,)``.
      limit: how many indices to keep; ``limit >= N`` keeps everything.
      rng: numpy generator (the result is a function of its state).

    Returns:
      Sorted int64 indices into ``labels``.
    """
    if limit >= len(labels):
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    shuffled = labels[order]
    # Rank of each example within its class, in shuffled order: 0 for the first of a class...
    by_class = np.argsort(shuffled, kind="stable")
    class_starts = np.searchsorted(shuffled[by_class], shuffled[by_class], side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - class_starts
    # ...then take rank 0 of every class, then rank 1, ... (ties broken by shuffled position).
    chosen = order[np.argsort(rank, kind="stable")[:limit]]
    return np.sort(chosen)


def channel_stats(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images, accumulated in float64.

    Args:
      images: ``(N, H, W, C)``, any real dtype.
      chunk: images per step; small chunks stay in cache and avoid a float64 copy of the
        whole array.

    Returns:
      ``(mean, std)``, float64 ``(C,)``; a constant channel gets std 1 (no division by zero).
    """
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), chunk):
        # Channel-major rows: contiguous reductions are ~5x faster than summing NHWC over axes.
        block = np.ascontiguousarray(images[start : start + chunk].reshape(-1, channels).T)
        block = block.astype(np.float64)
        total += block.sum(axis=1)
        total_sq += np.einsum("ij,ij->i", block, block)
    count = max(1, images.size // channels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean, np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(images - mean) / std`` per channel, as a new float32 array."""
    out = images.astype(np.float32)  # a copy even if already float32
    out -= mean.astype(np.float32)
    out /= std.astype(np.float32)
    return out


def _synthetic_splits(seed: int) -> tuple[dict[str, Any], int, str]:
    splits = synthetic_splits(**SYNTHETIC_DEFAULTS, seed=seed)
    num_classes = SYNTHETIC_DEFAULTS["num_classes"]
    shape = "x".join(str(s) for s in SYNTHETIC_DEFAULTS["image_shape"])
    return (
        splits,
        num_classes,
        (
            f"synthetic: generated in memory (seed {seed}, {num_classes} "
            f"class templates of {shape} + Gaussian noise)"
        ),
    )


def _builder(name: str, data_dir: str):
    from jpanning.data import builders  # imports tensorflow_datasets (not TensorFlow)

    return builders.BUILDERS[name](data_dir=data_dir, file_format="array_record")


def _read_tfds(name: str, data_dir: str, download: bool) -> tuple[dict[str, Any], int, str]:
    """Prepares the dataset if needed and reads both splits as uint8 images and labels."""
    import tensorflow_datasets as tfds

    from jpanning.data.builders import RAW_SOURCE_KEY

    builder = _builder(name, data_dir)
    kind, path = _origin(builder, name, data_dir)
    if kind == "download" and not download:
        raise JPanningError(
            f"cannot load {name}: not prepared in {data_dir}, no raw files in {path} "
            "and download=False"
        )
    if kind != "prepared":
        os.makedirs(data_dir, exist_ok=True)
        config = tfds.download.DownloadConfig(manual_dir=path)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as err:  # bad raw files, network, checksum, disk: one line for the CLI
            reason = (
                " ".join(str(err).split())
                if isinstance(err, JPanningError)
                else f"{type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0][:300]
            )
            hint = "" if kind == "local" else f"; for offline use put its raw files in {path}"
            raise JPanningError(f"cannot prepare {name} in {data_dir} ({reason}){hint}") from err
    splits = {split: _read_split(builder, split) for split in ("train", "test")}
    origin = (builder.info.metadata or {}).get(RAW_SOURCE_KEY)
    how = ("prepared earlier" if kind == "prepared" else "prepared just now") + (
        f" from {origin}" if origin else ""
    )
    source = f"tfds {builder.name} {builder.version} in {os.fspath(builder.data_path)} ({how})"
    return splits, builder.info.features["label"].num_classes, source


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one split, in stored order, images and labels kept paired."""
    source = builder.as_data_source(split)
    count = len(source)
    images = np.empty((count, *builder.info.features["image"].shape), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int32)
    for start in range(0, count, _READ_CHUNK):
        stop = min(count, start + _READ_CHUNK)
        examples = source.__getitems__(list(range(start, stop)))
        images[start:stop] = np.stack([example["image"] for example in examples])
        labels[start:stop] = [example["label"] for example in examples]
    return images, labels
