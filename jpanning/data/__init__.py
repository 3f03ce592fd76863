"""Data: datasets as normalised numpy arrays, scoring batches, epochs and augmentation.

``load_dataset(name)`` returns a :class:`Dataset` (train/test as float32 NHWC normalised per
channel with the train statistics, int32 labels). CIFAR-10/100, MNIST and Fashion-MNIST come
from our own ``tensorflow-datasets`` builders (``jpanning.data.builders``), which prepare and
read data without TensorFlow; ``synthetic`` is generated for tests.

Where data comes from, in order: prepared in ``data_dir`` (default ``$JPANNING_DATA_DIR`` or
``~/tensorflow_datasets``); for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist``;
raw files in ``<data_dir>/downloads/manual`` (or its ``<name>/`` sub-folder); a download.

Modules: ``formats`` (IDX and CIFAR binary parsers), ``builders`` (tfds builders, imported
lazily so that ``import jpanning.data`` does not load tfds), ``loading``, ``batches``.
"""

from jpanning.data.batches import (
    PAD,
    augment_batch,
    crop_and_flip,
    epoch_batches,
    sample_crop_flip,
    scoring_batch,
)
from jpanning.data.loading import (
    DATASET_NAMES,
    Dataset,
    balanced_subset,
    data_origin,
    from_splits,
    load_dataset,
    read_splits,
    resolve_data_dir,
    resolve_default_dataset,
    synthetic_splits,
)

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "PAD",
    "augment_batch",
    "balanced_subset",
    "crop_and_flip",
    "data_origin",
    "epoch_batches",
    "from_splits",
    "load_dataset",
    "read_splits",
    "resolve_data_dir",
    "resolve_default_dataset",
    "sample_crop_flip",
    "scoring_batch",
    "synthetic_splits",
]
