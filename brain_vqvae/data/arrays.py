"""The pipelines' batches without TensorFlow, for Keras' JAX backend: a `keras.utils.PyDataset`
over the NumPy arrays, shuffled and augmented by the maths of `pipeline` with NumPy's seeded
generators (the tf.data datasets of `pipeline` stay TensorFlow's fast path).

`pipeline.slice_batches` and `pipeline.code_map_batches` choose between the two by backend.
Importing this module imports Keras (and so starts the backend Keras is set to).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from .pipeline import (
    GAIN_RANGE,
    LOG_GAMMA_RANGE,
    MAX_ANGLE,
    ZOOM_RANGE,
    check_batch_size,
    warp_matrix,
)


class ArrayBatches(keras.utils.PyDataset):
    """The (N, ...) `elements` as batches of `batch_size` rows (the last one smaller),
    shuffled over all N with `seed` and anew every epoch when `shuffle`, each batch then
    passed through `transform(batch, rng)` with a NumPy generator of (seed, epoch, batch), so
    that the draws are seeded and change from epoch to epoch."""

    def __init__(
        self,
        elements: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ):
        super().__init__()
        check_batch_size(batch_size)
        self.elements, self.batch_size = elements, batch_size
        self.shuffle, self.seed, self.transform = shuffle, seed, transform
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.elements))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.elements))

    def __len__(self) -> int:
        return -(-len(self.elements) // self.batch_size)

    def __getitem__(self, index: int) -> np.ndarray:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.elements[rows]
        if self.transform is None:
            return batch
        return self.transform(batch, np.random.default_rng([self.seed, self.epoch, index]))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


def to_unit_float(images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (B, S, S) -> float32 (B, S, S, 1) in [0, 1] (`rng` is not used)."""
    return images[..., None].astype(np.float32) / np.float32(255.0)


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, rotation, zoom and gain/gamma of a uint8 (B, S, S) batch, drawn from `rng`:
    `pipeline.make_tf_dataset`'s augmentation -> float32 (B, S, S, 1) in [0, 1]."""
    images = to_unit_float(images)
    count = len(images)
    flip = np.where(rng.uniform(size=count) < 0.5, -1.0, 1.0)
    angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE, count)
    zoom = rng.uniform(*ZOOM_RANGE, count)
    images = flip_rotate_zoom(images, flip, angle, zoom)
    gain = rng.uniform(*GAIN_RANGE, (count, 1, 1, 1))
    log_gamma = rng.uniform(*LOG_GAMMA_RANGE, (count, 1, 1, 1))
    return np.clip(gain * images ** np.exp(log_gamma), 0.0, 1.0).astype(np.float32)


def flip_rotate_zoom(images: np.ndarray, flip, angle, zoom) -> np.ndarray:
    """`pipeline._flip_rotate_zoom` in NumPy: (B, S, S, 1) images warped about their centre c,
    output pixel p = (column, row) sampling the input at c + M (p - c) (`warp_matrix`) by
    bilinear interpolation between its four neighbours, each 0 outside the image."""
    count, size = images.shape[:2]
    centre = (size - 1) / 2.0
    a0, a1, b0, b1 = (np.reshape(value, (count, 1, 1)) for value in warp_matrix(flip, angle, zoom))
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32) - centre
    x = centre + a0 * columns + a1 * rows  # input column of every output pixel, (B, S, S)
    y = centre + b0 * columns + b1 * rows
    x0, y0 = np.floor(x), np.floor(y)
    batch = np.arange(count)[:, None, None]

    def pixel(row, column):
        inside = (row >= 0) & (row < size) & (column >= 0) & (column < size)
        row = np.clip(row, 0, size - 1).astype(np.int64)
        column = np.clip(column, 0, size - 1).astype(np.int64)
        return np.where(inside, images[batch, row, column, 0], 0.0)

    top = (x0 + 1 - x) * pixel(y0, x0) + (x - x0) * pixel(y0, x0 + 1)
    bottom = (x0 + 1 - x) * pixel(y0 + 1, x0) + (x - x0) * pixel(y0 + 1, x0 + 1)
    warped = (y0 + 1 - y) * top + (y - y0) * bottom
    return warped[..., None].astype(np.float32)
