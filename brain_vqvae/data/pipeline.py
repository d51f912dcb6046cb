"""tf.data pipelines: slices and code maps as shuffled, batched, prefetched datasets.

TensorFlow is imported inside these functions, so loading data never starts it (the package's
`__init__` has set its environment by then). `slice_batches` and `code_map_batches` give the
same batches in the form Keras' backend trains on: these tf.data datasets on TensorFlow, and on
JAX the NumPy `arrays.ArrayBatches`, which need no TensorFlow.

The tf.data pipelines run with tf.data's autotuning off, at a fixed parallelism
(`PARALLEL_BATCHES` batches transformed at once, `PREFETCH_BATCHES` made ahead). Keras makes a
new iterator over a dataset every epoch, and with autotuning on, dropping the previous epoch's
iterator stalled training for 1 to 18 s at the start of an epoch, with the process idle (no
CPU time), on two cores under a convolutional step; with it off there was no stall
(BENCHMARKS.md, "Whole training runs").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .slices import SliceSet

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["code_map_batches", "code_map_dataset", "make_tf_dataset", "slice_batches"]

# The augmentation's ranges: rotation (radians), zoom, gain and log gamma (gamma in [0.8, 1.25]).
MAX_ANGLE = np.deg2rad(10.0)
ZOOM_RANGE = (0.9, 1.1)
GAIN_RANGE = (0.9, 1.1)
LOG_GAMMA_RANGE = (-0.223, 0.223)
# The pipelines' fixed parallelism (tf.data's autotuning is off, see above): batches converted
# or augmented at once, one per core up to 8 (each in flight is held in memory: 16 MB for 256
# float32 slices of 128x128), and batches made ahead of the training step.
PARALLEL_BATCHES = min(os.cpu_count() or 1, 8)
PREFETCH_BATCHES = 2


def make_tf_dataset(
    slice_set: SliceSet,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of float32 (B, S, S, 1) batches in [0, 1] from `slice_set`.

    Shuffling is seeded and different in every epoch. With `augment`, each image gets a random
    left-right flip, rotation (+-10 degrees) and zoom (+-10 %) about its centre (bilinear, 0 fill),
    then intensity x -> clip(gain * x**gamma, 0, 1) with gain in [0.9, 1.1] and gamma in
    [0.8, 1.25]; the draws are seeded by `seed` and change from epoch to epoch.
    """
    import tensorflow as tf

    if len(slice_set) == 0:
        raise ValueError("slice_set is empty: there is nothing to make a dataset from")

    def to_float(batches: tf.data.Dataset) -> tf.data.Dataset:
        if not augment:
            return batches.map(_to_unit_float, num_parallel_calls=PARALLEL_BATCHES)
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        return tf.data.Dataset.zip(batches, batch_seeds).map(
            _augment_batch, num_parallel_calls=PARALLEL_BATCHES
        )

    return _batches(slice_set.images, batch_size, shuffle, seed, to_float)


def slice_batches(
    slice_set: SliceSet,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
):
    """`make_tf_dataset`'s batches for Keras' backend: that dataset on TensorFlow; on JAX an
    `arrays.ArrayBatches` of the same batches (the same shuffling and augmentation maths, drawn
    by NumPy from `seed`)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return make_tf_dataset(slice_set, batch_size, shuffle, seed, augment)
    from .arrays import ArrayBatches, augment_batch, to_unit_float

    if len(slice_set) == 0:
        raise ValueError("slice_set is empty: there is nothing to make a dataset from")
    transform = augment_batch if augment else to_unit_float
    return ArrayBatches(slice_set.images, batch_size, shuffle, seed, transform)


def code_map_batches(code_maps: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0):
    """`code_map_dataset`'s batches for Keras' backend: that dataset on TensorFlow, an
    `arrays.ArrayBatches` on JAX."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return code_map_dataset(code_maps, batch_size, shuffle, seed)
    from .arrays import ArrayBatches

    return ArrayBatches(code_maps, batch_size, shuffle, seed)


def code_map_dataset(
    code_maps: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of (B, ...) batches of the code maps (N, h, h), which are the
    PixelCNN's inputs and targets: it predicts each code from the ones before it (or of a
    conditional prior's packed rows (N, L), `pack_prior_inputs`). Shuffling is seeded and
    different in every epoch."""
    return _batches(code_maps, batch_size, shuffle, seed)


def _batches(
    elements: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    transform: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None,
) -> tf.data.Dataset:
    """The (N, ...) `elements` as batches of `batch_size` (the last one smaller), shuffled
    over all N with `seed` and anew every epoch when `shuffle`, then `transform`ed, prefetched,
    with tf.data's autotuning off (module docstring)."""
    import tensorflow as tf

    check_batch_size(batch_size)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        dataset = dataset.shuffle(len(elements), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if transform is not None:
        dataset = transform(dataset)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def warp_matrix(flip, angle, zoom, cos=np.cos, sin=np.sin):
    """The 2x2 matrix M = R(angle) diag(flip, 1) / zoom, as its entries (a0, a1, b0, b1) of
    [[a0, a1], [b0, b1]], that maps an output pixel's offset from the image centre (column,
    row) to the input offset it samples; `cos` and `sin` of NumPy or TensorFlow."""
    cos, sin = cos(angle) / zoom, sin(angle) / zoom
    return cos * flip, -sin, sin * flip, cos


def _to_unit_float(images):
    """uint8 (B, S, S) -> float32 (B, S, S, 1) in [0, 1]."""
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0


def _augment_batch(images, seed):
    """Random flip, rotation, zoom and gain/gamma of a uint8 (B, S, S) batch, seeded by `seed`."""
    import tensorflow as tf

    images = _to_unit_float(images)
    count = tf.shape(images)[0]
    flip_seed, angle_seed, zoom_seed, gain_seed, gamma_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    flip = tf.where(tf.random.stateless_uniform([count], flip_seed) < 0.5, -1.0, 1.0)
    angle = tf.random.stateless_uniform([count], angle_seed, -MAX_ANGLE, MAX_ANGLE)
    zoom = tf.random.stateless_uniform([count], zoom_seed, *ZOOM_RANGE)
    # The warp loses the static image size, which the model's SSIM needs: restore it.
    images = tf.ensure_shape(_flip_rotate_zoom(images, flip, angle, zoom), images.shape)
    gain = tf.random.stateless_uniform([count, 1, 1, 1], gain_seed, *GAIN_RANGE)
    log_gamma = tf.random.stateless_uniform([count, 1, 1, 1], gamma_seed, *LOG_GAMMA_RANGE)
    return tf.clip_by_value(gain * tf.pow(images, tf.exp(log_gamma)), 0.0, 1.0)


def _flip_rotate_zoom(images, flip, angle, zoom):
    """(B, S, S, 1) images warped about their centre c, one (flip, angle, zoom) per image.

    Output pixel p = (column, row) samples the input at c + R(angle) diag(flip, 1) (p - c) / zoom
    (`warp_matrix`; bilinear, 0 outside the image), so flip = -1 mirrors left-right and
    zoom > 1 enlarges.
    """
    import tensorflow as tf

    centre = (tf.cast(tf.shape(images)[1], tf.float32) - 1.0) / 2.0
    a0, a1, b0, b1 = warp_matrix(flip, angle, zoom, tf.cos, tf.sin)
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [a0, a1, centre * (1 - a0 - a1), b0, b1, centre * (1 - b0 - b1), zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
