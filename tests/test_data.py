"""Tests for jpanning.data: parsers, tfds builders, loading, scoring batches, augmentation.

Everything runs offline: raw files are made in the test (or come from Debian's Fashion-MNIST
package when installed), downloads go to a local HTTP server, and ``tfds.testing.mock_data``
stands in for real data where only the plumbing is under test.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import importlib.abc
import importlib.util
import io
import os
import socket
import sys
import tarfile
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning.data import (
    Dataset,
    augment_batch,
    balanced_subset,
    crop_and_flip,
    epoch_batches,
    load_dataset,
    resolve_default_dataset,
    sample_crop_flip,
    scoring_batch,
    synthetic_splits,
)
from jpanning.data import formats, loading
from jpanning.errors import JPanningError

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"


# --- helpers -------------------------------------------------------------------------------


class _TensorFlowImportRecorder(importlib.abc.MetaPathFinder):
    """Records every attempt to import TensorFlow; answers "not found" like a real miss.

    Availability probes (``importlib.util.find_spec("tensorflow")``, which etils makes) are not
    imports and are not recorded.
    """

    def __init__(self):
        self.attempts = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "tensorflow" and not _is_availability_probe():
            self.attempts.append(fullname)
        return None


def _is_availability_probe() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == "<frozen importlib._bootstrap>" and code.co_name == "_find_and_load":
            return False  # an import statement / importlib.import_module
        if code.co_filename == "<frozen importlib.util>" and code.co_name == "find_spec":
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def no_tensorflow():
    """Fails the test if anything tries to import TensorFlow while it runs.

    Checking ``sys.modules`` alone cannot fail here, where TensorFlow is not installed (a
    failed import leaves no entry), so the import attempts themselves are recorded.
    """
    recorder = _TensorFlowImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        yield recorder
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.attempts == []
    assert "tensorflow" not in sys.modules


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="would really import TensorFlow"
)
def test_tensorflow_import_recorder_catches_imports(no_tensorflow):
    importlib.util.find_spec("tensorflow")  # a probe: not recorded
    assert no_tensorflow.attempts == []
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    assert no_tensorflow.attempts == ["tensorflow"]
    no_tensorflow.attempts.clear()


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX encoding of ``array`` (big-endian), written independently of the parser."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder, images: dict, labels: dict, compress: bool = True) -> None:
    """Writes train/t10k images and labels as MNIST-named IDX files."""
    os.makedirs(folder, exist_ok=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        for kind, arrays, dim in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(arrays[split].astype(np.uint8), 0x08)
            name = f"{prefix}-{kind}-idx{dim}-ubyte"
            if compress:
                name, data = name + ".gz", gzip.compress(data)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def cifar_records(images_hwc: np.ndarray, label_bytes: np.ndarray) -> bytes:
    """CIFAR binary records: label bytes, then the image channel-major (R plane, G, B)."""
    chw = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)
    return (
        np.concatenate([label_bytes.reshape(len(images_hwc), -1), chw], axis=1)
        .astype(np.uint8)
        .tobytes()
    )


def fake_cifar10(seed: int = 0, per_batch: int = 6, num_test: int = 10):
    """Tiny CIFAR-10: 5 train batches of ``per_batch`` images and one test batch."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8)
    return (train, np.arange(len(train)) % 10), (test, np.arange(num_test) % 10)


def write_cifar10_archive(path, train, test) -> None:
    (train_images, train_labels), (test_images, test_labels) = train, test
    per_batch = len(train_images) // 5
    members = {
        f"cifar-10-batches-bin/data_batch_{i + 1}.bin": cifar_records(
            train_images[i * per_batch : (i + 1) * per_batch],
            train_labels[i * per_batch : (i + 1) * per_batch],
        )
        for i in range(5)
    }
    members["cifar-10-batches-bin/test_batch.bin"] = cifar_records(test_images, test_labels)
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def restore_pixels(dataset: Dataset, images: np.ndarray) -> np.ndarray:
    """Undoes the normalisation, back to uint8 pixels."""
    return np.rint(images * dataset.std + dataset.mean).astype(np.uint8)


def as_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    """Order-free view of a split: sorted (image bytes, label) pairs."""
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    """A data_dir whose manual dir holds a tiny fake ``cifar-10-binary.tar.gz``."""
    root = tmp_path_factory.mktemp("cifar10_data")
    os.makedirs(root / "downloads" / "manual")
    train, test = fake_cifar10()
    write_cifar10_archive(root / "downloads" / "manual" / "cifar-10-binary.tar.gz", train, test)
    return str(root), train, test


@pytest.fixture
def http_dir(tmp_path):
    """A folder served over HTTP on localhost, yielding (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_returns_the_written_arrays(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(images, 0x08)
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    np.testing.assert_array_equal(formats.read_idx(path), images)


def test_parse_idx_reads_big_endian_int32():
    values = np.array([[1, -2, 70000], [2**31 - 1, 0, -(2**31)]], dtype=np.int32)
    parsed = formats.parse_idx(idx_bytes(values, 0x0C))
    assert parsed.dtype == np.int32 and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, values)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad magic"),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x05", "payload has 1 bytes"),
    ],
)
def test_parse_idx_rejects_malformed_data(data, message):
    with pytest.raises(JPanningError, match=message):
        formats.parse_idx(data, name="x.idx")


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION), reason="Debian dataset-fashion-mnist")
def test_debian_fashion_mnist_idx_files():
    folder = DEBIAN_FASHION
    train_labels = formats.read_idx(os.path.join(folder, "train-labels-idx1-ubyte.gz"))
    assert train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert train_labels.shape == (60000,)
    test_images = formats.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
    test_labels = formats.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
    assert test_labels.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)


def test_parse_cifar_records_channel_order_and_labels():
    # Two CIFAR-100 records (coarse byte, fine byte, 3072 pixel bytes), one pixel marked.
    record = np.zeros((2, 2 + 3072), dtype=np.uint8)
    record[:, 0] = [3, 4]  # coarse labels
    record[:, 1] = [42, 99]  # fine labels
    record[0, 2 + 0 * 1024 : 2 + 1 * 1024] = 10  # red plane of image 0
    record[0, 2 + 1 * 1024 : 2 + 2 * 1024] = 20  # green
    record[0, 2 + 2 * 1024 : 2 + 3 * 1024] = 30  # blue
    record[1, 2 + 2 * 1024 + 5 * 32 + 7] = 200  # image 1: blue, row 5, column 7
    images, fine = formats.parse_cifar_records(record.tobytes(), num_label_bytes=2, label_index=1)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert fine.tolist() == [42, 99]
    np.testing.assert_array_equal(images[0], np.broadcast_to([10, 20, 30], (32, 32, 3)))
    assert images[1, 5, 7].tolist() == [0, 0, 200] and images[1].sum() == 200
    _, coarse = formats.parse_cifar_records(record.tobytes(), num_label_bytes=2, label_index=0)
    assert coarse.tolist() == [3, 4]
    with pytest.raises(JPanningError, match="whole number of 3074-byte"):
        formats.parse_cifar_records(record.tobytes()[:-1], num_label_bytes=2, label_index=1)


# --- tfds builders and load_dataset ----------------------------------------------------------


def test_cifar10_from_manual_archive(cifar10_dir, no_tensorflow):
    data_dir, (train_images, train_labels), (test_images, test_labels) = cifar10_dir
    dataset = load_dataset("cifar10", data_dir=data_dir, download=False)

    assert (dataset.name, dataset.num_classes, dataset.augment) == ("cifar10", 10, True)
    assert dataset.input_shape == (32, 32, 3)
    assert (dataset.num_train, dataset.num_test) == (30, 10)
    assert dataset.train_images.dtype == np.float32 and dataset.train_labels.dtype == np.int32
    assert os.path.join(data_dir, "downloads", "manual") in dataset.source
    # Normalised per channel with the train statistics (float32 rounding only).
    train64 = dataset.train_images.astype(np.float64)
    np.testing.assert_allclose(train64.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(train64.std(axis=(0, 1, 2)), 1, atol=1e-6)
    np.testing.assert_allclose(dataset.mean, train_images.mean(axis=(0, 1, 2)), rtol=1e-6)
    # Same examples as written, each image still with its own label (order is tfds').
    assert as_pairs(
        restore_pixels(dataset, dataset.train_images), dataset.train_labels
    ) == as_pairs(train_images, train_labels)
    assert as_pairs(restore_pixels(dataset, dataset.test_images), dataset.test_labels) == as_pairs(
        test_images, test_labels
    )


def test_prepared_dataset_is_reused(cifar10_dir, no_tensorflow):
    data_dir, _, _ = cifar10_dir
    first = load_dataset("cifar10", data_dir=data_dir, download=False)
    os.rename(os.path.join(data_dir, "downloads"), os.path.join(data_dir, "moved"))
    try:
        second = load_dataset("cifar10", data_dir=data_dir, download=False)
    finally:
        os.rename(os.path.join(data_dir, "moved"), os.path.join(data_dir, "downloads"))
    assert "prepared earlier" in second.source
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)


def test_limits_give_a_seeded_balanced_subset(cifar10_dir):
    data_dir, _, _ = cifar10_dir
    full = load_dataset("cifar10", data_dir=data_dir)
    small = load_dataset("cifar10", data_dir=data_dir, train_limit=20, test_limit=5, seed=1)
    again = load_dataset("cifar10", data_dir=data_dir, train_limit=20, test_limit=5, seed=1)
    other = load_dataset("cifar10", data_dir=data_dir, train_limit=20, test_limit=5, seed=2)
    assert (small.num_train, small.num_test) == (20, 5)
    np.testing.assert_array_equal(np.bincount(small.train_labels, minlength=10), [2] * 10)
    np.testing.assert_array_equal(small.train_images, again.train_images)
    assert as_pairs(small.train_images, small.train_labels) != as_pairs(
        other.train_images, other.train_labels
    )
    # The subset consists of real train examples (normalised with the subset's statistics).
    full_pairs = set(as_pairs(restore_pixels(full, full.train_images), full.train_labels))
    assert (
        set(as_pairs(restore_pixels(small, small.train_images), small.train_labels)) <= full_pairs
    )


def test_cifar100_fine_labels_from_extracted_folder(tmp_path, no_tensorflow):
    rng = np.random.default_rng(5)
    folder = tmp_path / "downloads" / "manual" / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    splits = {}
    for split, count in (("train", 12), ("test", 4)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, count)
        coarse = fine // 5
        (folder / f"{split}.bin").write_bytes(
            cifar_records(images, np.stack([coarse, fine], axis=1))
        )
        splits[split] = (images, fine)
    dataset = load_dataset("cifar100", data_dir=str(tmp_path), download=False)
    assert dataset.num_classes == 100 and dataset.augment
    assert as_pairs(
        restore_pixels(dataset, dataset.train_images), dataset.train_labels
    ) == as_pairs(*splits["train"])
    assert as_pairs(restore_pixels(dataset, dataset.test_images), dataset.test_labels) == as_pairs(
        *splits["test"]
    )


def serve_mnist_files(monkeypatch, folder, base_url, wrong_checksum=False):
    """Writes tiny MNIST IDX files to the served folder and points the builder at them.

    Their checksums are registered like ``checksums.tsv`` registers the real ones (one
    deliberately wrong if asked), so tfds verifies each download.
    """
    from tensorflow_datasets.core.download import checksums

    from jpanning.data.builders import JpanningMnist

    rng = np.random.default_rng(2)
    images = {
        split: rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
        for split, count in (("train", 20), ("test", 10))
    }
    labels = {"train": np.arange(20) % 10, "test": np.arange(10) % 10}
    write_idx_set(folder, images, labels)
    urls = {role: base_url + name for role, name in JpanningMnist.FILES.items()}
    infos = {
        url: checksums.compute_url_info(folder / os.path.basename(url)) for url in urls.values()
    }
    if wrong_checksum:
        url = urls["test_labels"]
        infos[url] = checksums.UrlInfo(
            size=infos[url].size, checksum="0" * 64, filename=infos[url].filename
        )
    monkeypatch.setattr(JpanningMnist, "URLS", urls)
    monkeypatch.setattr(JpanningMnist, "url_infos", infos)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return images, labels


def test_mnist_download_path_through_tfds(tmp_path, http_dir, monkeypatch, no_tensorflow):
    folder, base_url = http_dir
    images, labels = serve_mnist_files(monkeypatch, folder, base_url)
    with pytest.raises(JPanningError, match="cannot load mnist: not prepared .* download=False"):
        load_dataset("mnist", data_dir=str(tmp_path), download=False)
    dataset = load_dataset("mnist", data_dir=str(tmp_path))
    assert f"downloaded from {base_url}" in dataset.source
    assert dataset.input_shape == (28, 28, 1) and not dataset.augment
    assert as_pairs(
        restore_pixels(dataset, dataset.train_images)[..., 0], dataset.train_labels
    ) == as_pairs(images["train"], labels["train"])


def test_download_with_wrong_checksum_is_rejected(tmp_path, http_dir, monkeypatch):
    folder, base_url = http_dir
    serve_mnist_files(monkeypatch, folder, base_url, wrong_checksum=True)
    with pytest.raises(
        JPanningError,
        match=r"cannot prepare mnist in .*NonMatchingChecksumError.*"
        r"t10k-labels-idx1-ubyte.gz",
    ):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_download_without_registered_checksum_is_refused(tmp_path, http_dir, monkeypatch):
    from jpanning.data.builders import JpanningMnist

    _, base_url = http_dir
    monkeypatch.setattr(
        JpanningMnist, "URLS", {role: base_url + name for role, name in JpanningMnist.FILES.items()}
    )
    with pytest.raises(JPanningError, match="mnist: no registered checksum for http://127"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_failed_download_is_one_line_error(tmp_path, http_dir, monkeypatch):
    from jpanning.data.builders import JpanningMnist

    folder, base_url = http_dir
    serve_mnist_files(monkeypatch, folder, base_url)
    os.remove(folder / "t10k-images-idx3-ubyte.gz")  # the server now answers 404 for it
    with pytest.raises(JPanningError) as error:
        load_dataset("mnist", data_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"cannot prepare mnist in {tmp_path}") and "\n" not in message
    assert "404" in message and os.path.join("downloads", "manual") in message
    assert JpanningMnist.URLS["test_images"] in message


def test_corrupt_raw_archive_is_one_line_error(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(JPanningError) as error:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    message = str(error.value)
    assert message.startswith(f"cannot prepare cifar10 in {tmp_path} (")
    assert "cifar-10-binary.tar.gz: not a readable tar archive" in message and "\n" not in message


def test_data_origin_keeps_mnist_and_fashion_mnist_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no_debian"))
    manual = tmp_path / "downloads" / "manual"
    arrays = {"train": np.zeros((2, 28, 28)), "test": np.zeros((1, 28, 28))}
    write_idx_set(
        manual / "mnist", arrays, {"train": np.zeros(2), "test": np.zeros(1)}, compress=False
    )
    assert loading.data_origin("mnist", str(tmp_path)) == ("local", str(manual))
    assert loading.data_origin("fashion_mnist", str(tmp_path)) == ("download", str(manual))
    monkeypatch.setattr(loading, "DEBIAN_FASHION_MNIST_DIR", str(manual / "mnist"))
    assert loading.data_origin("fashion_mnist", str(tmp_path)) == ("local", str(manual / "mnist"))


def test_builders_register_upstream_checksums():
    from jpanning.data import builders

    url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    cifar10 = builders.JpanningCifar10.url_infos[url]
    assert cifar10.size == 170052171 and cifar10.filename == "cifar-10-binary.tar.gz"
    for cls in builders.BUILDERS.values():
        assert set(cls.URLS.values()) <= set(cls.url_infos), cls.name


def _bound_getitems_mock():
    """A ``PickableDataSourceMock`` whose ``__getitems__`` works (tfds 4.9.10 bug workaround).

    ``mock_data`` sets ``source.__getitems__ = partial(_getitems, generator=...)`` on a
    MagicMock, but ``__getitems__`` is not a magic method MagicMock binds, so ``self`` is
    missing and every bulk read raises TypeError. Binding it here restores tfds' intent.
    """
    import tensorflow_datasets as tfds

    class BoundGetitems(tfds.testing.PickableDataSourceMock):
        def __setattr__(self, name, value):
            if name == "__getitems__" and isinstance(value, functools.partial):
                value = functools.partial(value, self)
            super().__setattr__(name, value)

    return BoundGetitems()


def test_mock_data_stands_in_for_cifar10(tmp_path, no_tensorflow):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(
        num_examples=12,
        policy=tfds.testing.MockPolicy.USE_CODE,
        mock_array_record_data_source=_bound_getitems_mock(),
    ):
        dataset = load_dataset("cifar10", data_dir=str(tmp_path), train_limit=10)
    assert (dataset.num_train, dataset.num_test) == (10, 12)
    assert dataset.train_images.shape == (10, 32, 32, 3) and dataset.augment
    assert dataset.num_classes == 10
    assert 0 <= dataset.train_labels.min() and dataset.train_labels.max() < 10
    assert len(np.unique(dataset.train_images.reshape(10, -1), axis=0)) == 10  # random images
    assert os.listdir(tmp_path) == []  # nothing downloaded or written


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION), reason="Debian dataset-fashion-mnist")
def test_fashion_mnist_prepared_from_debian_files(tmp_path, no_tensorflow):
    dataset = load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    assert (dataset.num_train, dataset.num_test, dataset.input_shape) == (60000, 10000, (28, 28, 1))
    assert f"raw files in {DEBIAN_FASHION}" in dataset.source
    # Paired with the right labels: per-class pixel sums match the raw IDX files.
    raw_images = formats.read_idx(os.path.join(DEBIAN_FASHION, "t10k-images-idx3-ubyte.gz"))
    raw_labels = formats.read_idx(os.path.join(DEBIAN_FASHION, "t10k-labels-idx1-ubyte.gz"))
    pixels = restore_pixels(dataset, dataset.test_images)[..., 0].astype(np.int64)
    for label in range(10):
        assert (
            pixels[dataset.test_labels == label].sum()
            == raw_images[raw_labels == label].astype(np.int64).sum()
        )


# --- errors, data dir and default dataset ----------------------------------------------------


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(
        JPanningError,
        match=r"unknown dataset 'imagenet'; choose from: cifar10, "
        r"cifar100, mnist, fashion_mnist, synthetic$",
    ):
        load_dataset("imagenet")


def test_missing_data_dir_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(JPanningError, match=f"cannot load cifar10: data_dir {missing} does not"):
        load_dataset("cifar10", data_dir=str(missing))
    monkeypatch.setenv("JPANNING_DATA_DIR", str(missing))
    with pytest.raises(JPanningError, match=rf"cannot load mnist: \$JPANNING_DATA_DIR {missing}"):
        load_dataset("mnist")
    assert not missing.exists()


def test_bad_limit_is_an_error():
    with pytest.raises(
        JPanningError, match="dataset synthetic: train_limit must be a positive integer, got 0"
    ):
        load_dataset("synthetic", train_limit=0)


def test_default_dataset_prefers_prepared_cifar10(cifar10_dir, monkeypatch):
    data_dir, _, _ = cifar10_dir
    load_dataset("cifar10", data_dir=data_dir)  # make sure it is prepared
    monkeypatch.setattr(loading, "host_reachable", lambda *a: pytest.fail("no network check"))
    name, reason = resolve_default_dataset(data_dir)
    assert name == "cifar10" and reason.startswith("CIFAR-10: prepared in " + data_dir)


@pytest.mark.parametrize("reachable", [True, False])
def test_default_dataset_depends_on_the_cifar_host(tmp_path, monkeypatch, reachable):
    calls = []

    def fake_reachable(host, port, timeout):
        calls.append((host, port, timeout))
        return reachable, "connected" if reachable else "timeout"

    monkeypatch.setattr(loading, "host_reachable", fake_reachable)
    name, reason = resolve_default_dataset(str(tmp_path))
    assert calls == [("www.cs.toronto.edu", 443, 2.0)]
    if reachable:
        assert name == "cifar10" and "www.cs.toronto.edu is reachable" in reason
    else:
        assert name == "fashion_mnist" and reason.startswith("Fashion-MNIST")
        assert "www.cs.toronto.edu is unreachable (timeout)" in reason
    assert "\n" not in reason


def test_host_reachable_on_localhost():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert loading.host_reachable("127.0.0.1", port, 1.0) == (True, "connected")
    reachable, why = loading.host_reachable("127.0.0.1", port, 1.0)  # now closed
    assert not reachable and "ConnectionRefusedError" in why


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable(no_tensorflow):
    first, second = load_dataset("synthetic"), load_dataset("synthetic")
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)
    assert (first.num_train, first.num_test, first.input_shape) == (1000, 200, (16, 16, 1))
    np.testing.assert_array_equal(np.bincount(first.train_labels), [100] * 10)
    # Nearest class mean (estimated on train) classifies the test split far above chance.
    means = np.stack([first.train_images[first.train_labels == c].mean(0) for c in range(10)])
    distances = ((first.test_images[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (distances.argmin(1) == first.test_labels).mean() > 0.9
    assert "tensorflow_datasets" not in first.source


def test_synthetic_splits_depend_on_seed_and_settings():
    kwargs = dict(num_train=30, num_test=7, image_shape=(4, 5, 2), num_classes=3)
    a, b = synthetic_splits(**kwargs, seed=0), synthetic_splits(**kwargs, seed=0)
    c = synthetic_splits(**kwargs, seed=1)
    np.testing.assert_array_equal(a["train"][0], b["train"][0])
    assert not np.allclose(a["train"][0], c["train"][0])
    assert a["train"][0].shape == (30, 4, 5, 2) and a["test"][0].shape == (7, 4, 5, 2)
    assert a["train"][0].dtype == np.float32 and set(a["test"][1]) <= {0, 1, 2}


# --- subsets, scoring batch, epochs ----------------------------------------------------------


def test_balanced_subset_spreads_over_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 2)
    rng = np.random.default_rng(0)
    keep = balanced_subset(labels, 12, rng)
    assert np.all(np.diff(keep) > 0)  # sorted, no repeats
    assert np.bincount(labels[keep]).tolist() == [5, 5, 2]  # class 2 runs out
    again = balanced_subset(labels, 12, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again)
    np.testing.assert_array_equal(balanced_subset(labels, 100, rng), np.arange(82))


def test_scoring_batch_counts_and_determinism():
    dataset = load_dataset("synthetic")
    images, labels = scoring_batch(dataset, samples_per_class=7, seed=3)
    assert images.shape == (70, 16, 16, 1) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == [7] * 10
    again_images, again_labels = scoring_batch(dataset, samples_per_class=7, seed=3)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    other_images, _ = scoring_batch(dataset, samples_per_class=7, seed=4)
    assert not np.array_equal(images, other_images)
    # Distinct training examples, each with its own label.
    train = {
        image.tobytes(): int(label)
        for image, label in zip(dataset.train_images, dataset.train_labels)
    }
    assert len({image.tobytes() for image in images}) == 70
    assert all(train[image.tobytes()] == label for image, label in zip(images, labels))


def test_scoring_batch_needs_enough_examples_per_class():
    dataset = load_dataset("synthetic", train_limit=25)  # 2 or 3 per class
    with pytest.raises(
        JPanningError,
        match="dataset synthetic: class 0 has [23] training "
        "examples, the scoring batch needs 10 per class",
    ):
        scoring_batch(dataset)


def test_epoch_batches_cover_a_permutation():
    batches = list(epoch_batches(np.random.default_rng(0), 10, 3))
    assert [len(b) for b in batches] == [3, 3, 3]
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == 9 and set(seen.tolist()) <= set(range(10))
    batches_all = list(epoch_batches(np.random.default_rng(0), 10, 3, drop_last=False))
    assert [len(b) for b in batches_all] == [3, 3, 3, 1]
    assert sorted(np.concatenate(batches_all).tolist()) == list(range(10))
    np.testing.assert_array_equal(seen, np.concatenate(batches_all)[:9])  # same permutation
    rng = np.random.default_rng(0)
    first, second = (np.concatenate(list(epoch_batches(rng, 10, 5))) for _ in range(2))
    assert not np.array_equal(first, second)  # each epoch draws a new order


def test_epoch_batches_errors():
    with pytest.raises(JPanningError, match="batch_size must be positive"):
        epoch_batches(np.random.default_rng(0), 10, 0)
    with pytest.raises(JPanningError, match="batch_size 16 is larger than the 10 examples"):
        epoch_batches(np.random.default_rng(0), 10, 16)


# --- augmentation ----------------------------------------------------------------------------


def numpy_crop_and_flip(images, offsets, flips, pad=4):
    """Reference implementation with np.pad, slicing and np.flip."""
    height, width = images.shape[1:3]
    out = []
    for image, (row, col), flip in zip(images, offsets, flips):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        crop = padded[row : row + height, col : col + width]
        out.append(np.flip(crop, axis=1) if flip else crop)
    return np.stack(out)


class AugmentTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.images = np.arange(3 * 6 * 5 * 2, dtype=np.float32).reshape(3, 6, 5, 2) + 1

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_crops_and_flip(self):
        crop = self.variant(crop_and_flip)
        offsets = jnp.array([[4, 4], [0, 0], [4, 4]])
        flips = jnp.array([False, False, True])
        out = np.asarray(crop(self.images, offsets, flips))
        np.testing.assert_array_equal(out[0], self.images[0])  # centre crop: unchanged
        # Offset (0, 0): shifted down-right by 4, zeros where the padding shows.
        np.testing.assert_array_equal(out[1, 4:, 4:], self.images[1, :2, :1])
        assert np.all(out[1, :4] == 0) and np.all(out[1, :, :4] == 0)
        np.testing.assert_array_equal(out[2], self.images[2, :, ::-1])  # mirrored columns

    @chex.variants(with_jit=True, without_jit=True)
    def test_augment_batch_matches_numpy_reference(self):
        images = jax.random.normal(jax.random.PRNGKey(0), (64, 8, 8, 3))
        key = jax.random.PRNGKey(7)
        out = self.variant(augment_batch)(key, images)
        chex.assert_shape(out, images.shape)
        chex.assert_type(out, jnp.float32)
        offsets, flips = map(np.asarray, sample_crop_flip(key, 64))
        np.testing.assert_array_equal(
            np.asarray(out), numpy_crop_and_flip(np.asarray(images), offsets, flips)
        )
        # The draw really varies: both flip values and off-centre crops occur.
        assert 0 < flips.sum() < 64
        assert offsets.min() == 0 and offsets.max() == 8 and np.any(offsets != 4)
        assert not np.allclose(out, images)

    def test_keys_give_different_augmentations_and_no_retrace(self):
        images = jnp.asarray(self.images)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(key, images):
            return augment_batch(key, images)

        outs = [np.asarray(step(jax.random.PRNGKey(i), images)) for i in range(4)]
        assert any(not np.array_equal(outs[0], other) for other in outs[1:])
        np.testing.assert_array_equal(outs[0], np.asarray(step(jax.random.PRNGKey(0), images)))


def test_from_splits_is_load_datasets_second_half(tmp_path, no_tensorflow):
    # load_dataset = read_splits + from_splits, and the splits survive the .npz that
    # benchmarks/device_search.py carries to a machine without tfds.
    from benchmarks import device_search
    from jpanning.data import from_splits, read_splits

    splits, num_classes, source = read_splits("synthetic")
    assert splits["train"][0].shape == (1000, 16, 16, 1)
    direct = load_dataset("synthetic", train_limit=50, test_limit=20, seed=3)
    path = str(tmp_path / "d.npz")
    device_search.pack(path, "synthetic", None)
    name, carried, classes, carried_source = device_search.unpack(path)
    assert (name, classes) == ("synthetic", num_classes) and source in carried_source
    rebuilt = from_splits(name, carried, classes, source, train_limit=50, test_limit=20, seed=3)
    for field in ("train_images", "train_labels", "test_images", "test_labels", "mean", "std"):
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(direct, field))
    with pytest.raises(JPanningError, match="train_limit must be a positive integer, got 0"):
        from_splits(name, carried, classes, source, train_limit=0)
