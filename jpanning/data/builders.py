"""tfds builders for CIFAR-10/100, MNIST and Fashion-MNIST that never need TensorFlow.

The stock tfds builders store images as PNG (``tfds.features.Image``), whose encoding and
decoding go through TensorFlow. Ours store each image as raw ``uint8`` bytes of a fixed-shape
``tfds.features.Tensor`` (HWC) with a ``ClassLabel``, in the ``array_record`` file format, so
preparing (``download_and_prepare``) and reading (``as_data_source``) run on numpy alone.

Raw files are taken from the manual dir when present (``<data_dir>/downloads/manual`` by
default, or ``DownloadConfig(manual_dir=...)``), else downloaded from the upstream URLs and
checked against ``checksums.tsv`` (next to this file). Manual-dir files are not checksummed:
re-compressed copies (e.g. Debian's Fashion-MNIST) decompress to the same data but differ in
bytes. Every builder also records where its raw data came from in ``info.metadata``.

Registered names: ``jpanning_cifar10``, ``jpanning_cifar100``, ``jpanning_mnist``,
``jpanning_fashion_mnist`` (importing this module registers them, so ``tfds.data_source``
and ``tfds.builder`` find them too).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from jpanning.data import formats
from jpanning.errors import JPanningError

SPLITS = ("train", "test")
RAW_SOURCE_KEY = "raw_source"  # key in info.metadata: one line, where the raw files came from


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> str | None:
    """The download manager's manual dir, or None where it is unset, missing or empty."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # tfds asserts the manual dir exists and is non-empty
        return None


class _ImageClassification(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared code: a fixed-shape uint8 image and a class label, train and test splits.

    Subclasses set the class constants and implement ``find_local_files`` (raw files in a
    folder, or None) and ``read_split`` (raw files -> uint8 images, int labels).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw uint8 tensors in array_record; no TensorFlow needed."}
    SHORT_NAME: str = ""  # the name jpanning uses, e.g. "cifar10"
    IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 0)
    NUM_CLASSES: int = 0
    CLASS_NAMES: tuple[str, ...] | None = None
    HOMEPAGE: str = ""
    URLS: dict[str, str] = {}  # role -> upstream URL
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional (for offline use): put the dataset's raw files, as named on its homepage, in "
        "the manual dir (default <data_dir>/downloads/manual), or in a sub-folder named after "
        "the dataset (e.g. manual/mnist/; required to keep MNIST and Fashion-MNIST apart)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        label = (
            tfds.features.ClassLabel(names=list(self.CLASS_NAMES))
            if self.CLASS_NAMES
            else tfds.features.ClassLabel(num_classes=self.NUM_CLASSES)
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.SHORT_NAME} as raw uint8 HWC tensors (jpanning).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=self.IMAGE_SHAPE,
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": label,
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def find_local_files(self, folder: str) -> dict[str, str] | None:
        """Paths of the raw files by role if they are all in ``folder``, else None."""
        raise NotImplementedError

    def read_split(self, files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
        """Reads one split from the raw files: uint8 ``(N, *IMAGE_SHAPE)``, int ``(N,)``."""
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual_dir = manual_dir_or_none(dl_manager)
        files, origin = None, None
        if manual_dir is not None:
            # A per-dataset sub-folder first: MNIST and Fashion-MNIST share file names.
            for folder in (os.path.join(manual_dir, self.SHORT_NAME), manual_dir):
                if os.path.isdir(folder) and (files := self.find_local_files(folder)):
                    origin = f"raw files in {folder}"
                    break
        if files is None:
            # Never download unverified: a missing entry means checksums.tsv was not installed.
            unregistered = sorted(set(self.URLS.values()) - set(self.url_infos or {}))
            if unregistered:
                raise JPanningError(
                    f"{self.SHORT_NAME}: no registered checksum for "
                    f"{unregistered[0]} (is jpanning/data/checksums.tsv installed?)"
                )
            self._check_hosts(dl_manager)
            files = {role: os.fspath(path) for role, path in dl_manager.download(self.URLS).items()}
            hosts = sorted({url.rsplit("/", 1)[0] + "/" for url in self.URLS.values()})
            origin = "downloaded from " + ", ".join(hosts)
        self.info.metadata[RAW_SOURCE_KEY] = origin
        generators = {}
        for split in SPLITS:
            images, labels = self.read_split(files, split)
            self._check_split(images, labels, split, origin)
            generators[split] = self._generate_examples(images, labels)
        return generators

    def _check_hosts(self, dl_manager) -> None:
        """Fail at once when a download host does not answer: tfds would retry for minutes.

        Skipped behind a proxy (a direct TCP connect says nothing there) and when tfds already
        holds downloads in its download dir (it may not need the network).
        """
        from urllib.parse import urlsplit

        from jpanning.data.hosts import HOST_TIMEOUT_S, host_reachable

        proxies = ("https_proxy", "http_proxy", "all_proxy")
        if any(os.environ.get(v) or os.environ.get(v.upper()) for v in proxies):
            return
        download_dir = os.fspath(getattr(dl_manager, "download_dir", "") or "")
        if os.path.isdir(download_dir) and any(e.is_file() for e in os.scandir(download_dir)):
            return
        urls = [urlsplit(url) for url in self.URLS.values()]
        for host, port in sorted({(u.hostname, u.port or (443 if u.scheme == "https" else 80))
                                  for u in urls}):  # fmt: skip
            reachable, why = host_reachable(host, port, HOST_TIMEOUT_S)
            if not reachable:
                raise JPanningError(f"its download host {host}:{port} is unreachable ({why})")

    def _check_split(self, images: np.ndarray, labels: np.ndarray, split: str, origin: str):
        where = f"{self.SHORT_NAME} {split} split ({origin})"
        if images.shape[1:] != self.IMAGE_SHAPE:
            raise JPanningError(
                f"{where}: images have shape {images.shape[1:]}, expected {self.IMAGE_SHAPE}"
            )
        if len(images) != len(labels):
            raise JPanningError(f"{where}: {len(images)} images but {len(labels)} labels")
        if len(labels) and not 0 <= labels.min() <= labels.max() < self.NUM_CLASSES:
            raise JPanningError(f"{where}: labels outside 0..{self.NUM_CLASSES - 1}")

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        # Key = position in the raw files; tfds stores examples shuffled by a hash of the key.
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label)}


class _IdxBuilder(_ImageClassification, skip_registration=True):
    """MNIST-style datasets: four gzip-compressed IDX files (``.gz`` optional locally)."""

    IMAGE_SHAPE = (28, 28, 1)
    NUM_CLASSES = 10
    FILES = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }

    def find_local_files(self, folder: str) -> dict[str, str] | None:
        files = {}
        for role, filename in self.FILES.items():
            candidates = [os.path.join(folder, n) for n in (filename, filename.removesuffix(".gz"))]
            existing = [path for path in candidates if os.path.isfile(path)]
            if not existing:
                return None
            files[role] = existing[0]
        return files

    def read_split(self, files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
        images = formats.read_idx(files[f"{split}_images"])
        labels = formats.read_idx(files[f"{split}_labels"])
        return images[..., None], labels  # (N, 28, 28) -> NHWC with one channel


class _CifarBuilder(_ImageClassification, skip_registration=True):
    """CIFAR from the official binary archive (or its extracted folder)."""

    IMAGE_SHAPE = formats.CIFAR_IMAGE_SHAPE
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    ARCHIVE = ""
    EXTRACTED_DIR = ""
    BATCH_FILES: dict[str, tuple[str, ...]] = {}
    NUM_LABEL_BYTES = 1
    LABEL_INDEX = 0

    def find_local_files(self, folder: str) -> dict[str, str] | None:
        for name in (self.ARCHIVE, self.EXTRACTED_DIR):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return {"archive": path}
        return None

    def read_split(self, files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
        return formats.read_cifar_batches(
            files["archive"],
            self.BATCH_FILES[split],
            num_label_bytes=self.NUM_LABEL_BYTES,
            label_index=self.LABEL_INDEX,
        )


def _idx_urls(base: str) -> dict[str, str]:
    return {role: base + filename for role, filename in _IdxBuilder.FILES.items()}


class JpanningCifar10(_CifarBuilder):
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train / 10,000 test 32x32x3 images, 10 classes."""

    name = "jpanning_cifar10"
    SHORT_NAME = "cifar10"
    NUM_CLASSES = 10
    CLASS_NAMES = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    ARCHIVE = "cifar-10-binary.tar.gz"
    EXTRACTED_DIR = "cifar-10-batches-bin"
    URLS = {"archive": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"}
    BATCH_FILES = {
        "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test": ("test_batch.bin",),
    }


class JpanningCifar100(_CifarBuilder):
    """CIFAR-100 (Krizhevsky, 2009) with its 100 fine labels; 50,000 train / 10,000 test."""

    name = "jpanning_cifar100"
    SHORT_NAME = "cifar100"
    NUM_CLASSES = 100
    ARCHIVE = "cifar-100-binary.tar.gz"
    EXTRACTED_DIR = "cifar-100-binary"
    URLS = {"archive": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"}
    BATCH_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
    NUM_LABEL_BYTES = 2  # coarse label, then fine label
    LABEL_INDEX = 1


class JpanningMnist(_IdxBuilder):
    """MNIST (LeCun et al., 1998): 60,000 train / 10,000 test 28x28 grey digits."""

    name = "jpanning_mnist"
    SHORT_NAME = "mnist"
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    URLS = _idx_urls("https://storage.googleapis.com/cvdf-datasets/mnist/")  # tfds' mirror


class JpanningFashionMnist(_IdxBuilder):
    """Fashion-MNIST (Xiao et al., 2017): 60,000 train / 10,000 test 28x28 grey clothes."""

    name = "jpanning_fashion_mnist"
    SHORT_NAME = "fashion_mnist"
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    URLS = _idx_urls("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    CLASS_NAMES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


BUILDERS: dict[str, type[_ImageClassification]] = {
    builder.SHORT_NAME: builder
    for builder in (JpanningCifar10, JpanningCifar100, JpanningMnist, JpanningFashionMnist)
}
