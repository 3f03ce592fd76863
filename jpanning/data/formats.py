"""Parsers for the raw dataset files: IDX (MNIST, Fashion-MNIST) and CIFAR binary batches.

Pure numpy, no TensorFlow. Both formats are tiny:

* **IDX** (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
  number of dimensions ``d``, then ``d`` big-endian ``uint32`` sizes, then the values in
  row-major order, big-endian. Usually shipped gzip-compressed (``*.gz``).
* **CIFAR binary** (https://www.cs.toronto.edu/~kriz/cifar.html): fixed-size records of
  ``num_label_bytes`` label bytes followed by a 3x32x32 image, channel-major (all red, then
  green, then blue). CIFAR-10 has one label byte; CIFAR-100 has two (coarse, then fine).
"""

from __future__ import annotations

import gzip
import os
import tarfile
from typing import Sequence

import numpy as np

from jpanning.errors import JPanningError

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

CIFAR_IMAGE_SHAPE = (32, 32, 3)
_CIFAR_IMAGE_BYTES = 32 * 32 * 3


def parse_idx(data: bytes, *, name: str = "IDX data") -> np.ndarray:
    """Decodes the bytes of one (uncompressed) IDX file.

    Args:
      data: the whole file content.
      name: what to call the data in error messages (e.g. its path).

    Returns:
      An array with the shape stored in the header and the native-endian version of the
      stored dtype (``uint8`` for MNIST images ``(N, 28, 28)`` and labels ``(N,)``).

    Raises:
      JPanningError: bad magic number, unknown type code or wrong payload size.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise JPanningError(f"{name} is not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise JPanningError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise JPanningError(f"{name}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_size != expected:
        raise JPanningError(
            f"{name}: IDX header says shape {shape} ({expected} bytes) but the payload has "
            f"{len(data) - header_size} bytes"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or not (detected from its first bytes).

    Args:
      path: e.g. ``train-labels-idx1-ubyte.gz`` or ``train-labels-idx1-ubyte``.

    Returns:
      The decoded array, see :func:`parse_idx`.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise JPanningError(f"{path}: corrupt gzip file ({err})") from err
    return parse_idx(data, name=str(path))


def parse_cifar_records(
    data: bytes, *, num_label_bytes: int, label_index: int, name: str = "CIFAR data"
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes concatenated CIFAR binary records.

    Args:
      data: the content of one or more ``*.bin`` batch files.
      num_label_bytes: label bytes before each image (1 for CIFAR-10, 2 for CIFAR-100).
      label_index: which label byte to return (CIFAR-100: 0 = coarse, 1 = fine).
      name: what to call the data in error messages.

    Returns:
      ``images``: ``uint8`` of shape ``(N, 32, 32, 3)`` (HWC), and ``labels``: ``int64`` ``(N,)``.
    """
    record_size = num_label_bytes + _CIFAR_IMAGE_BYTES
    if len(data) % record_size:
        raise JPanningError(
            f"{name}: {len(data)} bytes is not a whole number of {record_size}-byte CIFAR records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record_size)
    labels = records[:, label_index].astype(np.int64)
    images = records[:, num_label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar_batches(
    source: str | os.PathLike, batch_files: Sequence[str], *, num_label_bytes: int, label_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads CIFAR batch files from the ``.tar.gz`` archive or from its extracted folder.

    Args:
      source: ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``, or a folder holding the
        extracted ``*.bin`` files (searched recursively, e.g. ``cifar-10-batches-bin/``).
      batch_files: base names of the batches to read, in order (e.g. ``data_batch_1.bin``).
      num_label_bytes, label_index: see :func:`parse_cifar_records`.

    Returns:
      ``(images, labels)`` of all batches concatenated in the given order.
    """
    chunks = []
    if os.path.isdir(source):
        found = {f: os.path.join(root, f) for root, _, files in os.walk(source) for f in files}
        for batch in batch_files:
            if batch not in found:
                raise JPanningError(f"{source}: no {batch} in the extracted CIFAR folder")
            with open(found[batch], "rb") as f:
                chunks.append(f.read())
    else:
        try:
            with tarfile.open(source, "r:*") as archive:
                members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
                for batch in batch_files:
                    if batch not in members:
                        raise JPanningError(f"{source}: no {batch} in the CIFAR archive")
                    chunks.append(archive.extractfile(members[batch]).read())
        except tarfile.ReadError as err:  # its message lists every method tried, on many lines
            raise JPanningError(f"{source}: not a readable tar archive") from err
        except (tarfile.TarError, OSError, EOFError) as err:
            raise JPanningError(f"{source}: unreadable CIFAR archive ({err})") from err
    return parse_cifar_records(
        b"".join(chunks), num_label_bytes=num_label_bytes, label_index=label_index, name=str(source)
    )
