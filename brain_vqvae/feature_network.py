"""The domain feature network whose features the realism measures compare (`realism`).

No pretrained weights can be downloaded here, so the project trains its own small network on
the training split of a run, once, and saves it with the run (`train_feature_network`,
`load_feature_network`). It is deliberately not the VQ-VAE's encoder: a generator judged in the
features it was trained to reproduce would be judged by its own blind spots. Its proxy tasks
(the slice's level, its rotation, whether a piece of it was broken) need the anatomy to be
solved, so its features notice broken anatomy.

Images are float32 (N, S, S, 1) on the [0, 1] scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from keras import ops

from brain_vqvae.metrics import as_image_batch
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.steps import TrainingStepModel

__all__ = [
    "FeatureNetwork",
    "image_features",
    "load_feature_network",
    "predict_positions",
    "train_feature_network",
]

FEATURE_WIDTHS = (16, 32, 64, 128)
WORKING_SIZE = 64  # the feature network sees at most 64x64 pixels (average-pooled down)
ROTATIONS = 4
# Configuration keys of the former age head, which networks saved with it still carry; ages are
# now read by `age_reader`, which generalises to new people.
LEGACY_AGE_KEYS = ("with_ages", "age_mean", "age_std")


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class FeatureNetwork(TrainingStepModel):
    """A small convolutional network whose pooled activations are the features of every measure.

        x [S, S, 1] in [0, 1] -> average-pooled to at most 64x64 -> x - 1/2
          -> per width w in `widths`: 3x3 conv stride 2 -> GroupNorm -> swish
                                      3x3 conv stride 1 -> swish
          -> global average pooling -> features f [widths[-1]]     (`call` returns f)

    Linear heads read f, and are trained on real training slices only (`step_loss`, run as
    either backend's training step), with proxy tasks that need anatomy to solve:

    - position: sigmoid(w^T f + b), the slice's relative level in its volume (0 = lowest,
      1 = highest), by squared error; left out when the data has no positions;
    - rotation: which of the 4 rotations by 90° was applied (softmax cross-entropy), as in
      Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
      Rotations": an upright brain has a front and a back, so the task needs its shape;
    - corruption: whether an elliptical piece of the slice (radii s/12 to s/6, centred in the
      middle half of the s x s working image, s = min(S, 64)) was replaced (binary
      cross-entropy) by a piece of another slice from elsewhere, by background (a hole) or by
      the slice's own content shifted by s/8 to s/4 pixels: the features must notice broken
      anatomy.

    Each batch is downsampled, corrupted (half of it) and rotated inside `step_loss`, on the
    fly, so `fit` needs nothing but the images (and positions as targets). GroupNorm, not
    BatchNorm: the features are then the same function of an image in training and at
    inference, whatever the batch, and need no moving averages that a few epochs would leave
    unsettled.
    """

    def __init__(
        self,
        image_size: int,
        widths: tuple[int, ...] = FEATURE_WIDTHS,
        with_positions: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive, got {widths}")
        self.image_size = int(image_size)
        self.widths = tuple(int(width) for width in widths)
        self.with_positions = bool(with_positions)
        factor = self.image_size // WORKING_SIZE
        self.pool = (
            keras.layers.AveragePooling2D(factor)
            if factor > 1 and self.image_size % WORKING_SIZE == 0
            else None
        )
        self.blocks = []
        for width in self.widths:
            groups = math.gcd(width, 8)
            self.blocks += [
                keras.layers.Conv2D(width, 3, strides=2, padding="same"),
                keras.layers.GroupNormalization(groups),
                keras.layers.Activation("swish"),
                keras.layers.Conv2D(width, 3, padding="same", activation="swish"),
            ]
        self.pooling = keras.layers.GlobalAveragePooling2D()
        self.position_head = keras.layers.Dense(1, activation="sigmoid", name="position")
        self.position_head.trainable = self.with_positions
        self.rotation_head = keras.layers.Dense(ROTATIONS, name="rotation")
        self.corruption_head = keras.layers.Dense(1, name="corruption")
        names = ["loss", "rotation_loss", "corruption_loss"]
        names += ["rotation_accuracy", "corruption_accuracy"]
        names += ["position_loss"] if self.with_positions else []
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.seed_generator = keras.random.SeedGenerator()

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def build(self, input_shape):
        # One call on a blank slice builds every block, so that a loaded model has all its
        # variables before they are read back.
        self.call(ops.zeros((1, self.image_size, self.image_size, 1)))
        features = self.compute_output_shape(input_shape)
        for head in (self.position_head, self.rotation_head, self.corruption_head):
            head.build(features)
        self.built = True

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    def downsample(self, images):
        """(B, S, S, 1) -> (B, s, s, 1) average-pooled, s = min(S, 64), still in [0, 1]."""
        if self.pool is not None:
            return self.pool(images)
        if self.image_size > WORKING_SIZE:
            return ops.image.resize(images, (WORKING_SIZE, WORKING_SIZE), antialias=True)
        return images

    def embed(self, images):
        """Downsampled slices (B, s, s, 1) in [0, 1] -> features (B, F)."""
        x = images - 0.5
        for layer in self.blocks:
            x = layer(x)
        return self.pooling(x)

    def call(self, images, training=False):
        return self.embed(self.downsample(images))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def proxy_tasks(self, images):
        """(B, s, s, 1) intact upright downsampled slices -> (inputs, rotation (B,) int32,
        corrupted (B,) float32 in {0, 1}): half of the slices corrupted, then each rotated by
        k x 90° anticlockwise, k = rotation. The draws come from the network's seed
        generator, whose state trains with it."""
        size = images.shape[1]
        batch = ops.shape(images)[0]
        seed = self.seed_generator

        def integers(low, high, shape=()):  # uniform over low..high, both included
            return keras.random.randint(shape, low, high + 1, dtype="int32", seed=seed)

        corrupted = ops.cast(keras.random.uniform((batch,), seed=seed) < 0.5, "float32")
        kind = integers(0, 2, (batch,))[:, None, None, None]

        # An elliptical piece: centre in the middle half (where the brain is), radii S/12..S/6.
        def coordinates(low, high):
            return ops.cast(integers(low, high, (batch,)), "float32")[:, None, None]

        centre_row, centre_column = (coordinates(size // 4, 3 * size // 4) for _ in range(2))
        radius_row, radius_column = (
            coordinates(max(1, size // 12), max(2, size // 6)) for _ in range(2)
        )
        grid = ops.cast(ops.arange(size), "float32")
        inside = ((grid[None, :, None] - centre_row) / radius_row) ** 2
        inside += ((grid[None, None, :] - centre_column) / radius_column) ** 2
        piece = (inside < 1.0) & (corrupted[:, None, None] > 0.5)

        def shifted(x):  # rolled by s/8 to s/4 pixels up or down, then left or right
            for axis in (1, 2):
                sign = ops.where(keras.random.uniform((), seed=seed) < 0.5, -1, 1)
                x = ops.roll(x, sign * integers(max(1, size // 8), max(1, size // 4)), axis)
            return x

        replacement = ops.where(
            kind == 0,
            shifted(ops.roll(images, 1, axis=0)),  # a piece of another slice
            ops.where(kind == 1, ops.zeros_like(images), shifted(images)),
        )
        inputs = ops.where(piece[..., None], replacement, images)

        rotation = integers(0, ROTATIONS - 1, (batch,))
        transposed = ops.transpose(inputs, (0, 2, 1, 3))
        rotated = ops.stack(
            [
                inputs,
                ops.flip(transposed, 1),  # 90° anticlockwise
                ops.flip(inputs, (1, 2)),  # 180°
                ops.flip(transposed, 2),  # 90° clockwise
            ],
            axis=1,
        )
        chosen = ops.one_hot(rotation, ROTATIONS, dtype=inputs.dtype)[:, :, None, None, None]
        return ops.sum(rotated * chosen, axis=1), rotation, corrupted

    def task_losses(self, features, targets, rotation, corrupted):
        """The heads' mean losses and accuracies on one batch, as a dict of scalars. `targets`
        maps "positions" to (B,) values when the position head is trained."""
        rotation_logits = self.rotation_head(features)
        corruption_logits = self.corruption_head(features)[:, 0]
        results = {
            "rotation_loss": ops.mean(
                ops.sparse_categorical_crossentropy(rotation, rotation_logits, from_logits=True)
            ),
            "corruption_loss": ops.mean(
                ops.binary_crossentropy(corrupted, corruption_logits, from_logits=True)
            ),
            "rotation_accuracy": ops.mean(
                ops.cast(ops.argmax(rotation_logits, axis=-1) == rotation, "float32")
            ),
            "corruption_accuracy": ops.mean(
                ops.cast((corruption_logits > 0) == (corrupted > 0.5), "float32")
            ),
        }
        loss = results["rotation_loss"] + results["corruption_loss"]
        if self.with_positions:
            predicted = self.position_head(features)[:, 0]
            positions = ops.reshape(ops.cast(targets["positions"], "float32"), (-1,))
            results["position_loss"] = ops.mean(ops.square(predicted - positions))
            loss += results["position_loss"]
        results["loss"] = loss
        return results

    def step_loss(self, data, training: bool):
        """The proxy tasks' summed loss on one batch of real slices, and its `task_losses`."""
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        inputs, rotation, corrupted = self.proxy_tasks(self.downsample(images))
        results = self.task_losses(self.embed(inputs), targets or {}, rotation, corrupted)
        return results["loss"], results

    def record(self, report: dict) -> dict:
        for name, tracker in self.trackers.items():
            tracker.update_state(report[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "widths": list(self.widths),
            "with_positions": self.with_positions,
        }

    @classmethod
    def from_config(cls, config):
        """The network of `get_config`. A network saved while it had an age head (its
        configuration names with_ages, age_mean, age_std) loads without it: the weights of
        that head are not read, the others are, and its features are the same."""
        config = {key: value for key, value in config.items() if key not in LEGACY_AGE_KEYS}
        config["widths"] = tuple(config["widths"])
        return cls(**config)


def train_feature_network(
    images: np.ndarray,
    positions: np.ndarray | None = None,
    epochs: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    verbose: int = 0,
    widths: tuple[int, ...] = FEATURE_WIDTHS,
    learning_rate: float = 2e-3,
) -> FeatureNetwork:
    """Train a `FeatureNetwork` on real TRAINING slices (N, S, S, 1) in [0, 1], with their
    relative levels `positions` (N,) in [0, 1] if known (None: no position head is trained,
    and `predict_positions` then returns None). Adam, `epochs` passes over the slices in
    shuffled batches; `keras.utils.set_random_seed(seed)` fixes weights and proxy tasks.

    The per-epoch losses are in `network.history.history`. Save with `network.save(path)`
    (a `.keras` file); load with `load_feature_network`.
    """
    images = as_image_batch(images)
    if len(images) < 2:
        raise ValueError(f"images must hold at least 2 slices, got {len(images)}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float32).reshape(-1)
        if len(positions) != len(images):
            raise ValueError(f"positions has {len(positions)} values for {len(images)} images")
        if positions.min() < 0 or positions.max() > 1:
            raise ValueError("positions must lie in [0, 1]")
    targets = {} if positions is None else {"positions": positions}
    keras.utils.set_random_seed(seed)
    network = FeatureNetwork(
        images.shape[1],
        widths,
        with_positions=positions is not None,
    )
    network.build(images.shape)
    network.compile(optimizer=keras.optimizers.Adam(learning_rate))
    network.fit(
        images,
        targets or None,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
    )
    return network


def load_feature_network(path: str | Path) -> FeatureNetwork:
    """A `FeatureNetwork` saved with `network.save(path)` (`.keras`)."""
    network = keras.saving.load_model(path, compile=False)
    if not isinstance(network, FeatureNetwork):
        raise ValueError(f"path {path} holds a {type(network).__name__}, not a FeatureNetwork")
    return network


def image_features(network: FeatureNetwork, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The network's pooled features of each image: (N, S, S, 1) -> (N, F) float64."""
    images = as_image_batch(images)
    if images.shape[1] != network.image_size:
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[1]}, the network was trained on "
            f"{network.image_size}x{network.image_size}"
        )
    if len(images) == 0:
        return np.zeros((0, network.feature_dim))
    features = network.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(features, dtype=np.float64)


def predict_positions(
    network: FeatureNetwork, images: np.ndarray, batch_size: int = 64
) -> np.ndarray | None:
    """The position head's estimate of each slice's relative level, (N,) in [0, 1] (0 = lowest
    slice of a volume); None if the network was trained without positions."""
    if not network.with_positions:
        return None
    features = image_features(network, images, batch_size).astype(np.float32)
    return np.asarray(network.position_head(features), dtype=np.float64)[:, 0]
