"""Batches: the per-class scoring batch, shuffled epoch indices, and CIFAR augmentation.

``scoring_batch`` and ``epoch_batches`` are host-side numpy. The augmentation is pure JAX and
jittable: it is meant to run inside the user's jitted train step, with the key passed in.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jpanning.data.loading import Dataset
from jpanning.errors import JPanningError

PAD = 4  # CIFAR augmentation: zero-pad 4 pixels per side, crop back (He et al., 2016, 4.2)


def scoring_batch(
    dataset: Dataset, samples_per_class: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, class-balanced batch from the training split for pruning scores.

    Pruning-at-initialisation scores (SNIP, GraSP, SynFlow-style data scores, Panning) are
    computed on a small batch with the same number of examples per class; GraSP and Panning use
    10 per class on CIFAR-10 (Wang et al., 2020; Panning's code).

    Args:
      dataset: the loaded dataset; examples are drawn from its training split.
      samples_per_class: examples of each class.
      seed: the run's seed; the same seed gives the same batch.

    Returns:
      ``images`` ``(num_classes * samples_per_class, H, W, C)`` float32 and ``labels`` int32,
      grouped by class (class 0 first), each class's examples drawn without replacement.

    Raises:
      JPanningError: ``samples_per_class < 1`` or a class with fewer training examples.
    """
    if samples_per_class < 1:
        raise JPanningError(
            f"dataset {dataset.name}: samples_per_class must be positive, got {samples_per_class}"
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(dataset.num_classes):
        candidates = np.flatnonzero(dataset.train_labels == label)
        if len(candidates) < samples_per_class:
            raise JPanningError(
                f"dataset {dataset.name}: class {label} has {len(candidates)} training examples, "
                f"the scoring batch needs {samples_per_class} per class (raise train_limit)"
            )
        chosen.append(rng.choice(candidates, size=samples_per_class, replace=False))
    indices = np.concatenate(chosen)
    return dataset.train_images[indices], dataset.train_labels[indices]


def epoch_batches(
    rng: np.random.Generator, num_examples: int, batch_size: int, *, drop_last: bool = True
) -> Iterator[np.ndarray]:
    """Index arrays of one shuffled epoch.

    Args:
      rng: numpy generator; one permutation is drawn from it when iteration starts.
      num_examples: size of the split.
      batch_size: indices per batch.
      drop_last: skip the final partial batch (keeps shapes static for jit).

    Returns:
      An iterator of int64 index arrays of length ``batch_size`` (the last one shorter when
      ``drop_last`` is False), covering each index at most once.

    Raises:
      JPanningError: non-positive batch size, or ``drop_last`` with fewer examples than one
        batch (the epoch would be empty).
    """
    if batch_size < 1:
        raise JPanningError(f"batch_size must be positive, got {batch_size}")
    if drop_last and num_examples < batch_size:
        raise JPanningError(
            f"batch_size {batch_size} is larger than the {num_examples} "
            "examples available; lower it or use more data"
        )

    def batches() -> Iterator[np.ndarray]:
        order = rng.permutation(num_examples)
        stop = num_examples - num_examples % batch_size if drop_last else num_examples
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]

    return batches()


def sample_crop_flip(
    key: jax.Array, num_images: int, pad: int = PAD
) -> tuple[jax.Array, jax.Array]:
    """Draws the random augmentation parameters for a batch.

    Args:
      key: PRNG key.
      num_images: batch size (static).
      pad: padding per side; offsets are uniform in ``0..2*pad``.

    Returns:
      ``offsets`` int32 ``(N, 2)`` (row, column of the crop's top-left corner in the padded
      image) and ``flips`` bool ``(N,)`` (mirror left-right), each flip with probability 1/2.
    """
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (num_images, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (num_images,))
    return offsets, flips


def crop_and_flip(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, pad: int = PAD
) -> jax.Array:
    """Zero-pads each image, crops it back to size at ``offsets`` and mirrors it where ``flips``.

    Offsets ``(pad, pad)`` and no flip give the image back unchanged. Zero is the train mean
    after normalisation, so the padding is mean-coloured.

    Args:
      images: ``(N, H, W, C)``.
      offsets: int ``(N, 2)`` in ``0..2*pad``.
      flips: bool ``(N,)``.
      pad: padding per side (static).

    Returns:
      ``(N, H, W, C)``, same dtype as ``images``.
    """
    height, width, channels = images.shape[1:]

    def one(image, offset, flip):
        padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        crop = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(images, offsets, flips)


def augment_batch(key: jax.Array, images: jax.Array) -> jax.Array:
    """CIFAR training augmentation: random crop after 4-pixel zero padding + horizontal flip.

    The standard CIFAR augmentation of He et al. (2016, section 4.2), per image, vmapped.
    Pure and jittable; equals ``crop_and_flip(images, *sample_crop_flip(key, N))``.

    Args:
      key: PRNG key (one per step; split it in the caller).
      images: ``(N, H, W, C)`` normalised images.

    Returns:
      Augmented images, ``(N, H, W, C)``.
    """
    offsets, flips = sample_crop_flip(key, images.shape[0])
    return crop_and_flip(images, offsets, flips)
