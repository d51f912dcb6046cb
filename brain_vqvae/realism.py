"""Does what the pipeline generates look real? Realism measures for generated slices, each set
beside its real-vs-real floor.

Images everywhere are float32 (N, S, S, 1) on the [0, 1] scale. The field judges generated
brain images with a Fréchet distance in a pretrained network's features and with diversity as
pairwise MS-SSIM set against the real value (Pinaya et al. 2022, "Brain Imaging Generation with
Latent Diffusion Models"). No pretrained weights can be downloaded here, so the features come
from a small domain network the project trains itself, on the training split only, once per run
(`train_feature_network`, saved with the run as a `.keras` file). It is deliberately not the
VQ-VAE's own encoder: a generator judged in the features it was trained to reproduce would be
judged by its own blind spots.

Every measure is reported twice: for the samples against real held-out slices (`real_a`), and
as the floor, for a disjoint second half of real held-out slices (`real_b`) against the same
`real_a`, at the same number of images. The floor is what "perfect" scores; a score means
something only beside it.

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...")
  between Gaussians fitted to the features,
      FD = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2});
- precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", k = 3): the share of samples inside the real k-NN manifold,
  and the share of real slices inside the samples' one;
- a classifier two-sample test (Lopez-Paz and Oquab 2017, "Revisiting Classifier Two-Sample
  Tests"): the held-out accuracy of a classifier trained to tell two sets apart, 0.5 when they
  cannot be told apart, for real vs reconstructions, reconstructions vs samples and real vs
  samples;
- diversity: mean MS-SSIM (Wang, Simoncelli and Bovik 2003) and SSIM over random pairs of
  samples, beside the same for real slices (higher = less diverse; mode collapse shows as a
  sample value above the real one);
- implausible samples: a brain mask broken into more islands, or with more holes, than any real
  training slice at the same level of the brain has (`implausible`);
- a figure of samples beside their nearest training slices in feature space (memorisation), and
  the mean distance to it beside the same for real held-out slices.

Public API: `FeatureNetwork`, `train_feature_network`, `load_feature_network`, `image_features`,
`predict_positions`, `frechet_distance`, `precision_recall`, `classifier_two_sample_accuracy`,
`two_sample_p_value`, `pairwise_ms_ssim`, `pairwise_ssim`, `brain_mask_topology`,
`implausible`, `nearest_training_levels`, `realism_report`, `format_realism`,
`plot_nearest_training`, `plot_realism`.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf

SERIALIZATION_PACKAGE = "brain_vqvae"
FEATURE_WIDTHS = (16, 32, 64, 128)
WORKING_SIZE = 64  # the feature network sees at most 64x64 pixels (average-pooled down)
ROTATIONS = 4
FRECHET_EPS = 1e-6
IMAGINARY_TOLERANCE = 1e-3
PRECISION_RECALL_K = 3
C2ST_PIXELS = 16  # the classifier two-sample test also sees the image at 16x16
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
MS_SSIM_FILTER_SIZE = 7
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
MIN_SSIM_SIZE = 32
MASK_THRESHOLD = 0.1
MASK_SMOOTHING_SIGMA = 1.0
MIN_AREA_FRACTION = 0.002  # 33 pixels of a 128x128 slice
LEVEL_WINDOW = 0.1
MAX_PAIRS = 256  # random pairs for diversity: a standard error of about 0.006 in mean SSIM


def _as_batch(images: np.ndarray, name: str = "images") -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) in [0, 1] -> float32 array (N, S, S, 1)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{name} must be shaped (N, S, S, 1), got {images.shape}")
    return images


# ---------------------------------------------------------------------------------------------
# The domain feature network
# ---------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class FeatureNetwork(keras.Model):
    """A small convolutional network whose pooled activations are the features of every measure.

        x [S, S, 1] in [0, 1] -> average-pooled to at most 64x64 -> x - 1/2
          -> per width w in `widths`: 3x3 conv stride 2 -> GroupNorm -> swish
                                      3x3 conv stride 1 -> swish
          -> global average pooling -> features f [widths[-1]]     (`call` returns f)

    Three linear heads read f, and are trained on real training slices only (`train_step`),
    with proxy tasks that need anatomy to solve:

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

    Each batch is downsampled, corrupted (half of it) and rotated inside `train_step`, on the
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

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def build(self, input_shape):
        # One call on a blank slice builds every block, so that a loaded model has all its
        # variables before they are read back.
        self.call(tf.zeros((1, self.image_size, self.image_size, 1)))
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
            return tf.image.resize(images, (WORKING_SIZE, WORKING_SIZE), antialias=True)
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
        k x 90°, k = rotation."""
        size = images.shape[1]
        batch = tf.shape(images)[0]
        corrupted = tf.cast(tf.random.uniform([batch]) < 0.5, tf.float32)
        kind = tf.random.uniform([batch], 0, 3, dtype=tf.int32)

        def integers(low, high, shape=()):
            return tf.random.uniform(shape, low, high + 1, dtype=tf.int32)

        # An elliptical piece: centre in the middle half (where the brain is), radii S/12..S/6.
        centre_row = tf.cast(integers(size // 4, 3 * size // 4, [batch]), tf.float32)
        centre_column = tf.cast(integers(size // 4, 3 * size // 4, [batch]), tf.float32)
        radius_row = tf.cast(integers(max(1, size // 12), max(2, size // 6), [batch]), tf.float32)
        radius_column = tf.cast(
            integers(max(1, size // 12), max(2, size // 6), [batch]), tf.float32
        )
        grid = tf.cast(tf.range(size), tf.float32)
        inside = (
            (grid[None, :, None] - centre_row[:, None, None]) / radius_row[:, None, None]
        ) ** 2
        inside += (
            (grid[None, None, :] - centre_column[:, None, None]) / radius_column[:, None, None]
        ) ** 2
        piece = (inside < 1.0) & (corrupted[:, None, None] > 0.5)

        def offset():
            sign = tf.where(tf.random.uniform(()) < 0.5, -1, 1)
            return sign * integers(max(1, size // 8), max(1, size // 4))

        other_slice = tf.roll(tf.roll(images, 1, axis=0), [offset(), offset()], axis=[1, 2])
        shifted = tf.roll(images, [offset(), offset()], axis=[1, 2])
        kind = kind[:, None, None, None]
        replacement = tf.where(
            kind == 0, other_slice, tf.where(kind == 1, tf.zeros_like(images), shifted)
        )
        inputs = tf.where(piece[..., None], replacement, images)

        rotation = integers(0, ROTATIONS - 1, [batch])
        transposed = tf.transpose(inputs, [0, 2, 1, 3])
        rotated = tf.stack(
            [
                inputs,
                tf.reverse(transposed, [1]),  # 90° anticlockwise
                tf.reverse(inputs, [1, 2]),  # 180°
                tf.reverse(transposed, [2]),  # 90° clockwise
            ],
            axis=1,
        )
        return tf.gather(rotated, rotation, batch_dims=1), rotation, corrupted

    def task_losses(self, features, positions, rotation, corrupted):
        """The heads' mean losses and accuracies on one batch, as a dict of scalars."""
        rotation_logits = self.rotation_head(features)
        corruption_logits = self.corruption_head(features)[:, 0]
        results = {
            "rotation_loss": tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(rotation, rotation_logits)
            ),
            "corruption_loss": tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(corrupted, corruption_logits)
            ),
            "rotation_accuracy": tf.reduce_mean(
                tf.cast(tf.argmax(rotation_logits, -1, output_type=tf.int32) == rotation, "float32")
            ),
            "corruption_accuracy": tf.reduce_mean(
                tf.cast((corruption_logits > 0) == (corrupted > 0.5), "float32")
            ),
        }
        loss = results["rotation_loss"] + results["corruption_loss"]
        if self.with_positions:
            predicted = self.position_head(features)[:, 0]
            results["position_loss"] = tf.reduce_mean(
                tf.square(predicted - tf.reshape(tf.cast(positions, tf.float32), [-1]))
            )
            loss += results["position_loss"]
        results["loss"] = loss
        return results

    def train_step(self, data):
        images, positions, _ = keras.utils.unpack_x_y_sample_weight(data)
        inputs, rotation, corrupted = self.proxy_tasks(self.downsample(images))
        with tf.GradientTape() as tape:
            features = self.embed(inputs)
            results = self.task_losses(features, positions, rotation, corrupted)
        gradients = tape.gradient(results["loss"], self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        for name, tracker in self.trackers.items():
            tracker.update_state(results[name])
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
        config = dict(config)
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
    images = _as_batch(images)
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
    keras.utils.set_random_seed(seed)
    network = FeatureNetwork(images.shape[1], widths, with_positions=positions is not None)
    network.build(images.shape)
    network.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False)
    network.fit(
        images, positions, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose
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
    images = _as_batch(images)
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


# ---------------------------------------------------------------------------------------------
# Distribution distances in feature space
# ---------------------------------------------------------------------------------------------


def _as_features(features: np.ndarray, name: str, minimum: int = 2) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < minimum:
        raise ValueError(f"{name} must be shaped (N, F) with N >= {minimum}, got {features.shape}")
    return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F), (N_b, F):

        FD = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2}),

    mu the means and C the sample covariances (ddof 1). (C_a C_b)^{1/2} is
    `scipy.linalg.sqrtm`; as in the reference FID code (Heusel et al.'s TTUR and pytorch-fid),
    if it is not finite or has imaginary parts above 1e-3 on its diagonal (singular
    covariances, as when N < F), eps I (eps = 1e-6) is added to both covariances and it is
    computed again; then the imaginary parts that round-off leaves are dropped (an error if
    one on the diagonal still exceeds 1e-3).

    FD is biased upward for small N (Chong and Forsyth 2020, "Effectively Unbiased FID"): two
    samples of one distribution score about Tr(C) (1/N_a + 1/N_b) apart, not 0. Compare a
    score only with a floor computed at the same N_a and N_b.
    """
    features_a = _as_features(features_a, "features_a")
    features_b = _as_features(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features_a has {features_a.shape[1]} features, features_b {features_b.shape[1]}"
        )
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    covariance_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    covariance_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    root = scipy.linalg.sqrtm(covariance_a @ covariance_b)
    if not np.isfinite(root).all() or not _nearly_real(root):
        offset = FRECHET_EPS * np.eye(len(covariance_a))
        root = scipy.linalg.sqrtm((covariance_a + offset) @ (covariance_b + offset))
    if np.iscomplexobj(root):
        if not _nearly_real(root):
            raise ValueError(
                f"features give a covariance square root with imaginary part "
                f"{np.abs(np.diagonal(root).imag).max():.3g}"
            )
        root = root.real
    difference = mean_a - mean_b
    return float(
        difference @ difference
        + np.trace(covariance_a)
        + np.trace(covariance_b)
        - 2.0 * np.trace(root)
    )


def _nearly_real(matrix: np.ndarray) -> bool:
    """Whether the diagonal's imaginary parts are all within 1e-3 of 0."""
    return bool(np.allclose(np.diagonal(matrix).imag, 0, atol=IMAGINARY_TOLERANCE))


def _kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    from sklearn.neighbors import NearestNeighbors

    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    return distances[:, k]


def _inside_some_ball(
    points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """(M,) bool: whether each point lies within radii[i] of some centre i."""
    from scipy.spatial.distance import cdist

    inside = [
        (cdist(points[start : start + chunk], centres) <= radii[None, :]).any(axis=1)
        for start in range(0, len(points), chunk)
    ]
    return np.concatenate(inside) if inside else np.zeros(0, dtype=bool)


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = PRECISION_RECALL_K
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), (N, F), (M, F) -> two floats.

    The real manifold is the union of balls around each real point with radius the distance to
    its k-th nearest real neighbour (k = 3 as in the paper); precision is the share of fake
    points inside it (are samples realistic?). Recall is the same with the roles swapped: the
    share of real points inside the fake manifold (do samples cover the real variety?). Both
    are 1 for identical sets. Both depend on N and M, so compare with a floor at the same sizes.
    """
    real_features = _as_features(real_features, "real_features", k + 1)
    fake_features = _as_features(fake_features, "fake_features", k + 1)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"real_features has {real_features.shape[1]} features, "
            f"fake_features {fake_features.shape[1]}"
        )
    real_radii = _kth_neighbour_radii(real_features, k)
    fake_radii = _kth_neighbour_radii(fake_features, k)
    precision = _inside_some_ball(fake_features, real_features, real_radii).mean()
    recall = _inside_some_ball(real_features, fake_features, fake_radii).mean()
    return float(precision), float(recall)


# ---------------------------------------------------------------------------------------------
# Classifier two-sample test
# ---------------------------------------------------------------------------------------------


def _downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 1) -> (N, size * size) block means (area resampling when S % size != 0)."""
    count, side = images.shape[0], images.shape[1]
    if side % size == 0:
        factor = side // size
        blocks = images[..., 0].reshape(count, size, factor, size, factor)
        return blocks.mean(axis=(2, 4)).reshape(count, -1)
    resized = tf.image.resize(images, (size, size), method="area").numpy()
    return resized.reshape(count, -1)


def classifier_two_sample_accuracy(
    images_a: np.ndarray,
    images_b: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    features_a: np.ndarray | None = None,
    features_b: np.ndarray | None = None,
) -> float:
    """Classifier two-sample test (Lopez-Paz and Oquab 2017): the held-out accuracy of a
    classifier trained to tell set a from set b. 0.5 = the sets cannot be told apart, 1 = they
    are told apart every time.

    The larger set is subsampled (at random, `seed`) to the size of the smaller, so chance is
    exactly 0.5. The classifier is an L2-regularised logistic regression (C = 1) on
    standardised inputs: each image's block means at 16x16 pixels (global layout and contrast,
    which a generator gets wrong first) concatenated with its domain features (N, F) if given
    (texture and anatomy, in the space the network was trained to make anatomy-sensitive). A
    linear classifier on these is cheap (a fraction of a second for hundreds of slices) and,
    being low in capacity, stays at 0.5 on identical distributions rather than overfitting
    noise, while the features carry what a deep classifier would have to learn. Accuracy is
    the share of slices classified correctly when held out, over a stratified `folds`-fold
    cross-validation: every slice is judged once by a classifier that never saw it. See
    `two_sample_p_value` for its significance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images_a, images_b = _as_batch(images_a, "images_a"), _as_batch(images_b, "images_b")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"images_a {images_a.shape} and images_b {images_b.shape} differ in size")
    if (features_a is None) != (features_b is None):
        raise ValueError("features_a and features_b must be given together")
    count = min(len(images_a), len(images_b))
    if folds < 2 or count < folds:
        raise ValueError(f"folds must be at least 2 and at most the smaller set ({count})")
    inputs = []
    rng = np.random.default_rng(seed)
    for images, features, name in ((images_a, features_a, "a"), (images_b, features_b, "b")):
        chosen = np.sort(rng.choice(len(images), count, replace=False))
        columns = [_downsample(images[chosen], min(C2ST_PIXELS, images.shape[1]))]
        if features is not None:
            features = np.asarray(features, dtype=np.float64)
            if len(features) != len(images):
                raise ValueError(f"features_{name} has {len(features)} rows for {len(images)}")
            columns.append(features[chosen])
        inputs.append(np.concatenate(columns, axis=1))
    inputs = np.concatenate(inputs)
    labels = np.repeat([0, 1], count)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(classifier, inputs, labels, cv=splitter)
    return float(np.mean(predicted == labels))


def two_sample_p_value(accuracy: float, count: int) -> float:
    """One-sided p-value of a held-out accuracy over `count` judged slices under the null
    hypothesis that the two sets come from one distribution: P(Binomial(count, 1/2) >= correct),
    Lopez-Paz and Oquab's test (approximate under cross-validation, whose folds are not
    independent)."""
    from scipy.stats import binom

    correct = round(accuracy * count)
    return float(binom.sf(correct - 1, count, 0.5))


# ---------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------


def _random_pairs(count: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `max_pairs` distinct unordered pairs (i < j) of `count` items, drawn at random."""
    if count < 2:
        raise ValueError(f"images must hold at least 2 slices, got {count}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    first, second = np.triu_indices(count, k=1)
    if len(first) > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(len(first), max_pairs, replace=False))
        first, second = first[chosen], second[chosen]
    return first, second


def ms_ssim_scales(image_size: int) -> int:
    """Scales of MS-SSIM for S x S images: as many of the standard 5 as keep the coarsest
    scale (S / 2^(scales - 1)) at least as large as the 7x7 window (S >= 32: 3 scales at 32,
    4 at 64, 5 at 128 and above)."""
    if image_size < MIN_SSIM_SIZE:
        raise ValueError(f"images must be at least {MIN_SSIM_SIZE}x{MIN_SSIM_SIZE}")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and image_size >> scales >= MS_SSIM_FILTER_SIZE:
        scales += 1
    return scales


def _pairwise(images, max_pairs, seed, score, chunk=128) -> float:
    images = _as_batch(images)
    if images.shape[1] < MIN_SSIM_SIZE:
        raise ValueError(f"images must be at least {MIN_SSIM_SIZE}x{MIN_SSIM_SIZE}")
    first, second = _random_pairs(len(images), max_pairs, seed)
    scores = [
        np.asarray(
            score(images[first[start : start + chunk]], images[second[start : start + chunk]])
        )
        for start in range(0, len(first), chunk)
    ]
    return float(np.mean(np.concatenate(scores)))


def pairwise_ms_ssim(images: np.ndarray, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """Diversity: mean MS-SSIM (Wang, Simoncelli and Bovik 2003) over up to `max_pairs` random
    distinct pairs of images (N, S, S, 1), N >= 2, S >= 32. 1 = all alike; lower = more diverse.

    `tf.image.ssim_multiscale` with data range 1, K1 = 0.01, K2 = 0.03, a 7x7 Gaussian window of
    sigma 1.5 and `ms_ssim_scales(S)` scales with the first that many of the standard weights
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised to sum to 1. The standard 11x11
    window does not fit the 8x8 coarsest scale of a 128x128 image at 5 scales; a 7x7 window
    does (truncating the Gaussian at 2 sigma). The number compares across sets only at the same
    S.
    """
    images = _as_batch(images)
    scales = ms_ssim_scales(images.shape[1])
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(float(weight) for weight in weights / weights.sum())

    def score(first, second):
        return tf.image.ssim_multiscale(
            first,
            second,
            max_val=1.0,
            power_factors=weights,
            filter_size=MS_SSIM_FILTER_SIZE,
            filter_sigma=SSIM_FILTER_SIGMA,
        )

    return _pairwise(images, max_pairs, seed, score)


def pairwise_ssim(images: np.ndarray, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """Diversity: mean SSIM (Wang et al. 2004) over up to `max_pairs` random distinct pairs of
    images (N, S, S, 1), N >= 2, S >= 32: an 11x11 Gaussian window of sigma 1.5, data range 1,
    K1 = 0.01, K2 = 0.03, averaged over the window positions inside the image (the project's
    reconstruction SSIM). 1 = all alike; lower = more diverse."""

    def score(first, second):
        return tf.image.ssim(
            first,
            second,
            max_val=1.0,
            filter_size=SSIM_FILTER_SIZE,
            filter_sigma=SSIM_FILTER_SIGMA,
        )

    return _pairwise(images, max_pairs, seed, score)


# ---------------------------------------------------------------------------------------------
# Implausible samples
# ---------------------------------------------------------------------------------------------


def brain_mask_topology(
    images: np.ndarray,
    threshold: float = MASK_THRESHOLD,
    min_area_fraction: float = MIN_AREA_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Islands and holes of each slice's brain mask: (N, S, S, 1) -> (components, holes), both
    (N,) int.

    The mask is the slice smoothed by a Gaussian of sigma 1 pixel (so that single noisy pixels
    neither make islands nor break them) and thresholded at `threshold`. `components` counts
    its 8-connected pieces of at least `min_area_fraction` S^2 pixels (33 at 128x128);
    `holes` counts the 4-connected background pieces of that size that do not touch the
    image border (8/4 connectivity, so that a diagonal gap neither joins two islands nor
    opens a hole).
    """
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    images = _as_batch(images)
    min_area = max(1, round(min_area_fraction * images.shape[1] * images.shape[2]))
    components = np.zeros(len(images), dtype=np.int64)
    holes = np.zeros(len(images), dtype=np.int64)
    for index, image in enumerate(images[..., 0]):
        mask = gaussian_filter(image, MASK_SMOOTHING_SIGMA) > threshold
        areas = np.bincount(label(mask, connectivity=2).ravel())[1:]
        components[index] = np.count_nonzero(areas >= min_area)
        # Padding joins all background touching the border into the one outside piece.
        background = label(np.pad(~mask, 1, constant_values=True), connectivity=1)
        outside = background[0, 0]
        areas = np.bincount(background.ravel())
        areas[[0, outside]] = 0
        holes[index] = np.count_nonzero(areas >= min_area)
    return components, holes


def _allowed_topology(
    levels: np.ndarray, real_levels: np.ndarray, real_counts: np.ndarray, window: float
) -> np.ndarray:
    """For each level, the largest count among real slices within `window` of it (or at the
    nearest real level, where none is that close)."""
    allowed = np.empty(len(levels), dtype=np.int64)
    for index, level in enumerate(levels):
        distance = np.abs(real_levels - level)
        near = distance <= max(window, distance.min())
        allowed[index] = real_counts[near].max()
    return allowed


def implausible(
    samples: np.ndarray,
    sample_levels: np.ndarray,
    real_images: np.ndarray,
    real_levels: np.ndarray,
    window: float = LEVEL_WINDOW,
    threshold: float = MASK_THRESHOLD,
) -> np.ndarray:
    """(N,) bool: which samples have a brain mask with more islands, or more holes, than any
    real (training) slice at the same level of the brain has.

    Levels are relative positions in the volume, 0 = lowest slice, 1 = highest. A sample's
    level must be estimated (`predict_positions`, `nearest_training_levels`): `sample_levels`
    is (N,), or (N, L) for L estimates of each, and then a sample is flagged only if it is
    implausible at every one of them (an error of one estimator cannot flag a sample). "The
    same level" is within `window` (0.1, about a tenth of the brain's height) of it, which
    also absorbs small errors of the estimate; where no real slice is that close, the nearest
    real level is used.

    Why this rule. Counting islands alone is wrong for brain slices: a low axial slice
    legitimately cuts the temporal lobes, the cerebellum and brainstem (and, without skull
    stripping, eyes) into several islands, and ventricles may show as holes, while a
    mid-brain slice is one piece. Real slices at the same level show what anatomy allows, so
    the rule flags only what no real slice near that level shows: a mid-brain slice in three
    pieces, or a hole punched where real slices have none. It is conservative: taking the
    maximum over real slices means an artefact in one real slice only makes the rule more
    lenient, so a flagged sample is implausible beyond doubt rather than merely unusual.
    Applied to real held-out slices it gives the floor (their share flagged, near 0).
    """
    samples = _as_batch(samples, "samples")
    real_images = _as_batch(real_images, "real_images")
    sample_levels = np.asarray(sample_levels, dtype=np.float64)
    sample_levels = sample_levels.reshape(len(sample_levels), -1)
    real_levels = np.asarray(real_levels, dtype=np.float64).reshape(-1)
    if len(sample_levels) != len(samples) or sample_levels.shape[1] == 0:
        raise ValueError(f"sample_levels has {len(sample_levels)} rows for {len(samples)}")
    if len(real_levels) != len(real_images) or len(real_images) == 0:
        raise ValueError(f"real_levels has {len(real_levels)} values for {len(real_images)}")
    if window < 0:
        raise ValueError(f"window must be non-negative, got {window}")
    components, holes = brain_mask_topology(samples, threshold)
    real_components, real_holes = brain_mask_topology(real_images, threshold)
    flagged = np.ones(len(samples), dtype=bool)
    for levels in sample_levels.T:
        allowed_components = _allowed_topology(levels, real_levels, real_components, window)
        allowed_holes = _allowed_topology(levels, real_levels, real_holes, window)
        flagged &= (components > allowed_components) | (holes > allowed_holes)
    return flagged


def nearest_training_levels(
    features: np.ndarray, training_features: np.ndarray, training_levels: np.ndarray
) -> np.ndarray:
    """Each image's level estimated as the level of its nearest training slice in feature
    space: (N, F), (M, F), (M,) -> (N,)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(training_features)
    _, nearest = index.kneighbors(features)
    return np.asarray(training_levels, dtype=np.float64)[nearest[:, 0]]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

REPORT_ROWS = (
    # label, samples key, floor key, format
    ("Fréchet distance (domain features)", "fd_samples", "fd_real_floor", ".4g"),
    ("Fréchet distance, reconstructions", "fd_reconstructions", "fd_real_floor", ".4g"),
    ("precision (k = 3)", "precision_samples", "precision_real_floor", ".3f"),
    ("recall (k = 3)", "recall_samples", "recall_real_floor", ".3f"),
    ("C2ST accuracy, real vs samples", "c2st_real_vs_samples", "c2st_real_floor", ".3f"),
    ("C2ST accuracy, real vs reconstructions", "c2st_real_vs_reconstructions", "c2st_real_floor",
     ".3f"),
    ("C2ST accuracy, reconstructions vs samples", "c2st_reconstructions_vs_samples",
     "c2st_real_floor", ".3f"),
    ("diversity: pairwise MS-SSIM", "ms_ssim_samples", "ms_ssim_real", ".4f"),
    ("diversity: pairwise SSIM", "ssim_samples", "ssim_real", ".4f"),
    ("implausible share", "implausible_samples_share", "implausible_real_share", ".1%"),
    ("nearest-training distance (mean)", "nearest_training_distance_samples",
     "nearest_training_distance_real", ".4g"),
)  # fmt: skip


def realism_report(
    network: FeatureNetwork,
    real_a: np.ndarray,
    real_b: np.ndarray,
    reconstructions: np.ndarray,
    samples: np.ndarray,
    training_images: np.ndarray,
    training_levels: np.ndarray,
    seed: int = 0,
    max_pairs: int = MAX_PAIRS,
    folds: int = 5,
) -> dict[str, float | int]:
    """Every realism measure, for the samples and for its real-vs-real floor: a flat dict of
    floats and ints (JSON-ready).

    `real_a` and `real_b` are two disjoint halves of real held-out slices; `reconstructions`
    the VQ-VAE's reconstructions of real held-out slices; `samples` the generated slices;
    `training_images` and `training_levels` (relative positions in [0, 1]) the real training
    slices (the feature network's training set). n = min(len(real_b), len(samples)) images of
    each compared set are drawn at random (`seed`), so a score and its floor share N:

    - n_real_a, n_compared: len(real_a) and n;
    - fd_samples, fd_reconstructions, fd_real_floor: Fréchet distance of n samples, n
      reconstructions and n `real_b` slices to all of `real_a`, in the network's features;
    - precision_samples, recall_samples, precision_real_floor, recall_real_floor: k = 3
      precision and recall of n samples and of n `real_b` slices against `real_a`;
    - c2st_real_vs_reconstructions, c2st_reconstructions_vs_samples, c2st_real_vs_samples,
      c2st_real_floor (`real_a` vs `real_b`): held-out classifier accuracy, each on m =
      min(all four set sizes) slices per side, and each with a `_p_value` key
      (`two_sample_p_value` over 2m slices);
    - ms_ssim_samples, ms_ssim_real, ssim_samples, ssim_real: mean pairwise MS-SSIM and SSIM
      over the same number of random pairs (at most `max_pairs`) of n samples and n real
      held-out slices (from `real_a` and `real_b` together);
    - implausible_samples, implausible_samples_share, implausible_real,
      implausible_real_share: count and share of `implausible` samples, and of all real
      held-out slices, judged at two estimates of each slice's level, the nearest training
      slice's in feature space and the position head's (`predict_positions`; the first only
      for a network trained without positions);
    - nearest_training_distance_samples, nearest_training_distance_real: mean feature
      distance from each of n samples, and of n `real_b` slices, to its nearest training slice
      (far below the real value = copying the training set).
    """
    real_a, real_b = _as_batch(real_a, "real_a"), _as_batch(real_b, "real_b")
    reconstructions = _as_batch(reconstructions, "reconstructions")
    samples = _as_batch(samples, "samples")
    training_images = _as_batch(training_images, "training_images")
    training_levels = np.asarray(training_levels, dtype=np.float64).reshape(-1)
    if len(training_levels) != len(training_images):
        raise ValueError(
            f"training_levels has {len(training_levels)} values for {len(training_images)}"
        )
    rng = np.random.default_rng(seed)
    n = min(len(real_b), len(samples), len(reconstructions))
    if n < PRECISION_RECALL_K + 2:
        raise ValueError(f"every set needs at least {PRECISION_RECALL_K + 2} slices, got {n}")

    def draw(images, count=n):
        return images[np.sort(rng.choice(len(images), count, replace=False))]

    samples_n, reconstructions_n, real_b_n = draw(samples), draw(reconstructions), draw(real_b)
    features = {
        name: image_features(network, images)
        for name, images in (
            ("real_a", real_a),
            ("real_b", real_b_n),
            ("reconstructions", reconstructions_n),
            ("samples", samples_n),
            ("training", training_images),
        )
    }
    report: dict[str, float | int] = {"n_real_a": len(real_a), "n_compared": n}
    report["fd_samples"] = frechet_distance(features["samples"], features["real_a"])
    report["fd_reconstructions"] = frechet_distance(features["reconstructions"], features["real_a"])
    report["fd_real_floor"] = frechet_distance(features["real_b"], features["real_a"])
    precision, recall = precision_recall(features["real_a"], features["samples"])
    report |= {"precision_samples": precision, "recall_samples": recall}
    precision, recall = precision_recall(features["real_a"], features["real_b"])
    report |= {"precision_real_floor": precision, "recall_real_floor": recall}

    m = min(len(real_a), n)
    pairs = {
        "c2st_real_vs_reconstructions": ("real_a", "reconstructions"),
        "c2st_reconstructions_vs_samples": ("reconstructions", "samples"),
        "c2st_real_vs_samples": ("real_a", "samples"),
        "c2st_real_floor": ("real_a", "real_b"),
    }
    sets = {
        "real_a": real_a,
        "real_b": real_b_n,
        "reconstructions": reconstructions_n,
        "samples": samples_n,
    }
    for key, (first, second) in pairs.items():
        chosen = {
            name: np.sort(rng.choice(len(sets[name]), m, replace=False)) for name in (first, second)
        }
        accuracy = classifier_two_sample_accuracy(
            sets[first][chosen[first]],
            sets[second][chosen[second]],
            seed=seed,
            folds=min(folds, m),
            features_a=features[first][chosen[first]],
            features_b=features[second][chosen[second]],
        )
        report[key] = accuracy
        report[f"{key}_p_value"] = two_sample_p_value(accuracy, 2 * m)

    held_out = np.concatenate([real_a, real_b])
    real_n = draw(held_out)
    report["ms_ssim_samples"] = pairwise_ms_ssim(samples_n, max_pairs, seed)
    report["ms_ssim_real"] = pairwise_ms_ssim(real_n, max_pairs, seed)
    report["ssim_samples"] = pairwise_ssim(samples_n, max_pairs, seed)
    report["ssim_real"] = pairwise_ssim(real_n, max_pairs, seed)

    # Levels by the nearest training slice in feature space and, if trained, the position
    # head: a sample is implausible only at both.
    held_out_features = np.concatenate([features["real_a"], image_features(network, real_b)])
    levels = [
        nearest_training_levels(features_, features["training"], training_levels)
        for features_ in (image_features(network, samples), held_out_features)
    ]
    predicted = [predict_positions(network, samples), predict_positions(network, held_out)]
    if predicted[0] is not None:
        levels = [np.stack(pair, axis=1) for pair in zip(levels, predicted, strict=True)]
    flagged = implausible(
        np.concatenate([samples, held_out]),
        np.concatenate(levels),
        training_images,
        training_levels,
    )
    report["implausible_samples"] = int(flagged[: len(samples)].sum())
    report["implausible_samples_share"] = float(flagged[: len(samples)].mean())
    report["implausible_real"] = int(flagged[len(samples) :].sum())
    report["implausible_real_share"] = float(flagged[len(samples) :].mean())

    for name, key in (("samples", "samples"), ("real_b", "real")):
        distances = _nearest(features[name], features["training"])[1]
        report[f"nearest_training_distance_{key}"] = float(distances.mean())
    return report


def _nearest(features: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to each row's nearest reference row."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(features)
    return indices[:, 0], distances[:, 0]


def format_realism(report: dict) -> str:
    """A text table of `realism_report`: measure | samples | real-vs-real floor."""
    rows = [("measure", "samples", "real-vs-real floor")]
    for label, key, floor, spec in REPORT_ROWS:
        if key in report:
            rows.append((label, format(report[key], spec), format(report[floor], spec)))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}" for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    title = (
        f"realism of {report.get('n_compared', '?')} samples against "
        f"{report.get('n_real_a', '?')} real held-out slices"
    )
    return "\n".join([title, *lines])


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_nearest_training(
    samples: np.ndarray,
    training_images: np.ndarray,
    features_samples: np.ndarray,
    features_training: np.ndarray,
    path: str | Path,
    count: int = 8,
) -> Path:
    """PNG of the first `count` samples (top row) above their nearest training slices in
    feature space (bottom row), each titled with the feature distance: a sample that is a copy
    of a training slice shows as a twin at a small distance."""
    from matplotlib.figure import Figure

    samples = _as_batch(samples, "samples")
    training_images = _as_batch(training_images, "training_images")
    count = min(count, len(samples))
    if count < 1:
        raise ValueError("samples must hold at least one slice")
    nearest, distances = _nearest(
        np.asarray(features_samples)[:count], np.asarray(features_training)
    )
    figure = Figure(figsize=(1.8 * count, 4.0))
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        axes[0, column].imshow(samples[column, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"sample {column}", fontsize=8)
        axes[1, column].imshow(
            training_images[nearest[column], ..., 0], cmap="gray", vmin=0, vmax=1
        )
        axes[1, column].set_title(f"distance {distances[column]:.2f}", fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("sample")
    axes[1, 0].set_ylabel("nearest training")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)


def plot_realism(report: dict, path: str | Path) -> Path:
    """PNG bar chart of `realism_report`: for each measure, samples beside the real-vs-real
    floor, one small panel per measure (their scales differ)."""
    from matplotlib.figure import Figure

    rows = [row for row in REPORT_ROWS if row[1] in report]
    columns = 4
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * lines))
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for axis, (label, key, floor, _) in zip(axes, rows, strict=False):
        values = [report[key], report[floor]]
        axis.bar(["samples", "real floor"], values, color=["tab:orange", "tab:blue"])
        axis.set_title(label, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes[len(rows) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
