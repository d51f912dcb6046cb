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
something only beside it. The held-out people are few, though, and a prior learns the training
people's spread, not theirs: so the samples' measures are also taken of what a perfect prior
would draw, reconstructions of training slices (its training maps, decoded), which is the best a
prior can score against these held-out people.

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...")
  between Gaussians fitted to the features,
      FD = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2});
- precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", k = 3): the share of samples inside the real k-NN manifold,
  and the share of real slices inside the samples' one;
- a classifier two-sample test (Lopez-Paz and Oquab 2017, "Revisiting Classifier Two-Sample
  Tests"): the held-out accuracy of a classifier trained to tell two sets apart, 0.5 when they
  cannot be told apart, for real vs reconstructions, reconstructions vs samples and real vs
  samples; it sees each slice's layout, its texture at full resolution
  (`texture_statistics`: the histograms of intensity, gradient and Laplacian in the brain)
  and its features; on request the same tests by a convolutional network trained on the
  pixels (slower; it checks that those inputs hide nothing a network can see);
- diversity: mean MS-SSIM (Wang, Simoncelli and Bovik 2003) and SSIM over random pairs of
  samples, beside the same for real slices and their reconstructions (higher = less diverse;
  mode collapse shows as a sample value above the real one);
- the power spectrum (`spectral_distance`): how far the sets' azimuthally averaged power
  spectra lie apart, in decades, which shows blur (too little power at fine scales) and the
  periodic patterns of up-convolutions (Durall et al. 2020) that a feature network may not
  weigh; `plot_spectra` draws the spectra;
- implausible samples: a brain mask broken into more islands, or with more holes, than any real
  training slice at the same level of the brain has (`implausible`);
- a figure of samples beside their nearest training slices in feature space (memorisation), and
  the mean distance to it beside the same for real held-out slices.

The features come from `feature_network`. Public API: `frechet_distance`, `precision_recall`,
`texture_statistics`, `classifier_two_sample_accuracy`, `convolutional_two_sample_accuracy`,
`two_sample_p_value`, `pairwise_ms_ssim`, `pairwise_ssim`, `radial_power_spectrum`,
`spectral_distance`, `brain_masks`, `brain_mask_topology`, `implausible`,
`nearest_training_levels`, `realism_report`, `format_realism`, `plot_nearest_training`,
`plot_realism`, `plot_spectra`.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import scipy.linalg

from brain_vqvae.feature_network import FeatureNetwork, image_features, predict_positions
from brain_vqvae.metrics import (
    as_image_batch,
    log_spectral_distance,
    multiscale_structural_similarity,
    radial_power_spectra,
    ssim_per_slice,
)

FRECHET_EPS = 1e-6
IMAGINARY_TOLERANCE = 1e-3
PRECISION_RECALL_K = 3
C2ST_PIXELS = 16  # the classifier two-sample test also sees the image at 16x16
CNN_C2ST_WIDTHS = (16, 32, 64, 64)  # the convolutional two-sample classifier's layers
CNN_C2ST_EPOCHS = 30
CNN_C2ST_LEARNING_RATE = 2e-3
CNN_C2ST_BATCH = 32
TEXTURE_BINS = 16
GRADIENT_RANGE = 0.3  # |grad I| per pixel; larger values count in the last bin
LAPLACIAN_RANGE = 0.6  # |Laplacian of I| per pixel, the same
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
MS_SSIM_FILTER_SIZE = 7
MIN_SSIM_SIZE = 32
MASK_THRESHOLD = 0.1
MASK_SMOOTHING_SIGMA = 1.0
MIN_AREA_FRACTION = 0.002  # 33 pixels of a 128x128 slice
LEVEL_WINDOW = 0.1
# Random pairs for diversity: the estimate's spread over pair draws is a tenth of the gap it
# judges (BENCHMARKS.md, "Diversity over every slice").
MAX_PAIRS = 4096


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


def _area_weights(source: int, target: int) -> np.ndarray:
    """The [target, source] matrix A of area resampling: A[i, j] is the share of output pixel
    i's span, [i, i + 1) x source / target, that input pixel j's [j, j + 1) covers, so that
    A @ X @ A^T averages each output pixel's area of X (`tf.image.resize`'s "area")."""
    scale = source / target
    starts = np.arange(target)[:, None] * scale
    pixels = np.arange(source)[None, :]
    overlap = np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels)
    return np.clip(overlap, 0.0, None) / scale


def _downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 1) -> (N, size * size) block means (area resampling when S % size != 0)."""
    count, side = images.shape[0], images.shape[1]
    if side % size == 0:
        factor = side // size
        blocks = images[..., 0].reshape(count, size, factor, size, factor)
        return blocks.mean(axis=(2, 4)).reshape(count, -1)
    weights = _area_weights(side, size)
    resized = np.einsum("ij,njk,lk->nil", weights, images[..., 0].astype(np.float64), weights)
    return resized.astype(np.float32).reshape(count, -1)


def brain_masks(images: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """(N, S, S) images -> (N, S, S) bool brain masks: each image smoothed by a Gaussian of
    sigma `MASK_SMOOTHING_SIGMA` (1 pixel, so that single noisy pixels neither make islands
    nor break them) and thresholded at `threshold`."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(images, (0, MASK_SMOOTHING_SIGMA, MASK_SMOOTHING_SIGMA)) > threshold


def brain_area(images: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """(N, S, S, 1) slices -> (N,) the share of each slice's pixels inside its `brain_masks`.

    Generated brains drawn too small or too large are told from real ones by their outline
    alone (hifi's were, before their texture: BENCHMARKS.md, "hifi: what tells its samples from
    reconstructions"); the mean share over a set says so in one number."""
    masks = brain_masks(as_image_batch(images)[..., 0], threshold)
    return masks.mean(axis=(1, 2))


def _masked_histograms(values: np.ndarray, masks: np.ndarray, top: float, bins: int):
    """(N, S, S) values and bool masks -> (N, bins): each image's histogram of its masked
    values over [0, top] in `bins` equal bins (values outside go to the end bins), as shares
    of its masked pixels (a row sums to 1, or is 0 for an empty mask)."""
    index = np.clip((values * (bins / top)).astype(np.int64), 0, bins - 1)
    rows = index + bins * np.arange(len(values))[:, None, None]
    counts = np.bincount(rows[masks], minlength=len(values) * bins).reshape(len(values), bins)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def texture_statistics(
    images: np.ndarray, bins: int = TEXTURE_BINS, threshold: float = MASK_THRESHOLD
) -> np.ndarray:
    """The texture of each slice's brain at full resolution: (N, S, S, 1) -> (N, 3 bins).

    Inside the brain, away from its outline (its `brain_masks` eroded by 2 pixels, so that
    neither the outline nor the background beside it counts as texture),
    three histograms of `bins` bins, each as shares of the mask's pixels:

    - the intensity I over [0, 1] (the tissue mix: CSF, grey and white matter);
    - the gradient magnitude |grad I| (central differences) over [0, GRADIENT_RANGE];
    - the 5-point Laplacian |I(r-1,c) + I(r+1,c) + I(r,c-1) + I(r,c+1) - 4 I(r,c)| over
      [0, LAPLACIAN_RANGE].

    Block means (`C2ST_PIXELS`) and the domain network (which sees at most 64x64)
    average away what a reader sees first in generated slices: mottled white matter, speckle,
    edges too sharp or too soft. These statistics keep it.
    """
    from scipy.ndimage import binary_erosion

    images = as_image_batch(images)[..., 0].astype(np.float64)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)[None]
    inner = binary_erosion(brain_masks(images, threshold), structure=cross, iterations=2)
    rows, columns = np.gradient(images, axis=(1, 2))
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    laplacian = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    ) - 4.0 * images
    return np.concatenate(
        [
            _masked_histograms(images, inner, 1.0, bins),
            _masked_histograms(np.hypot(rows, columns), inner, GRADIENT_RANGE, bins),
            _masked_histograms(np.abs(laplacian), inner, LAPLACIAN_RANGE, bins),
        ],
        axis=1,
    )


def _two_sample_design(images_a, images_b, groups_a, groups_b, seed: int, folds: int):
    """What both classifier two-sample tests share: the two image sets checked, the larger
    subsampled at random (`seed`) to the size of the smaller, so that chance is exactly 0.5,
    and the folds.

    Returns (drawn, chosen, labels, splits): the n slices drawn from each set (two float32
    (n, S, S, 1) arrays) and their indices, labels (2n,) 0 for set a then 1 for set b, and the
    (train, held-out) index pairs into the 2n of a stratified cross-validation of
    min(`folds`, people per set) folds that never split a person (`groups_a`, `groups_b`: the
    person of each slice; None: every slice its own)."""
    from sklearn.model_selection import StratifiedGroupKFold

    images_a, images_b = as_image_batch(images_a, "images_a"), as_image_batch(images_b, "images_b")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"images_a {images_a.shape} and images_b {images_b.shape} differ in size")
    count = min(len(images_a), len(images_b))
    if folds < 2 or count < folds:
        raise ValueError(f"folds must be at least 2 and at most the smaller set ({count})")
    rng = np.random.default_rng(seed)
    chosen, groups = [], []
    for images, people, name in ((images_a, groups_a, "a"), (images_b, groups_b, "b")):
        chosen.append(np.sort(rng.choice(len(images), count, replace=False)))
        if people is None:
            people = [f"{name}{index}" for index in range(len(images))]
        elif len(people) != len(images):
            raise ValueError(f"groups_{name} has {len(people)} values for {len(images)} images")
        groups.append(np.asarray(people, dtype=str)[chosen[-1]])
    groups = np.concatenate(groups)
    labels = np.repeat([0, 1], count)
    folds = min(folds, len(np.unique(groups[:count])), len(np.unique(groups[count:])))
    if folds < 2:
        raise ValueError("each set needs slices of at least 2 people (groups)")
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(labels)), labels, groups))
    return (images_a[chosen[0]], images_b[chosen[1]]), chosen, labels, splits


def classifier_two_sample_accuracy(
    images_a: np.ndarray,
    images_b: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    features_a: np.ndarray | None = None,
    features_b: np.ndarray | None = None,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
) -> float:
    """Classifier two-sample test (Lopez-Paz and Oquab 2017): the held-out accuracy of a
    classifier trained to tell set a from set b. 0.5 = the sets cannot be told apart, 1 = they
    are told apart every time.

    `groups_a`, `groups_b` (N,) name the person each slice comes from (None: every slice is its
    own). Folds never split a group, so the classifier is judged on people it did not see: with
    slices of one person in both training and held-out folds it would learn who the people of
    each set are (their intensity and shape signature), and even two halves of real people would
    be told apart.

    The larger set is subsampled (at random, `seed`) to the size of the smaller, so chance is
    exactly 0.5. The classifier is an L2-regularised logistic regression (C = 1) on
    standardised inputs: each image's block means at 16x16 pixels (global layout and contrast,
    which a generator gets wrong first), its `texture_statistics` at full resolution (the
    tissue mix and the fine texture, which the block means and the features average away),
    and its domain features (N, F) if given (anatomy, in the space the network was trained to
    make anatomy-sensitive). A linear classifier on these is cheap (a fraction of a second for
    hundreds of slices) and, being low in capacity, stays at 0.5 on identical distributions
    rather than overfitting noise, while the features carry what a deep classifier would have
    to learn (`convolutional_two_sample_accuracy` is that deep classifier, to check it).
    Accuracy is the share of slices classified correctly when held out, over a stratified
    `folds`-fold cross-validation grouped by person: every slice is judged once by a
    classifier that never saw it nor its person. See `two_sample_p_value` for its significance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if (features_a is None) != (features_b is None):
        raise ValueError("features_a and features_b must be given together")
    for features, images, name in ((features_a, images_a, "a"), (features_b, images_b, "b")):
        if features is not None and len(features) != len(images):
            raise ValueError(f"features_{name} has {len(features)} rows for {len(images)} images")
    drawn, chosen, labels, splits = _two_sample_design(
        images_a, images_b, groups_a, groups_b, seed, folds
    )
    inputs = []
    for images, features, rows in zip(drawn, (features_a, features_b), chosen, strict=True):
        columns = [_downsample(images, min(C2ST_PIXELS, images.shape[1]))]
        columns.append(texture_statistics(images))
        if features is not None:
            columns.append(np.asarray(features, dtype=np.float64)[rows])
        inputs.append(np.concatenate(columns, axis=1))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    predicted = cross_val_predict(classifier, np.concatenate(inputs), labels, cv=splits)
    return float(np.mean(predicted == labels))


def _two_sample_network(image_size: int, seed: int) -> keras.Model:
    """The convolutional two-sample classifier, compiled, its weights drawn from `seed`:

        x [S, S, 1] in [0, 1] -> x - 1/2
          -> per width w in `CNN_C2ST_WIDTHS`: 3x3 conv stride 2 -> GroupNorm(4) -> GELU
          -> global average pooling -> logit (set b against set a)

    Group normalisation rather than batch normalisation: its statistics are each image's own,
    the same in training and at prediction, where batch statistics of a few hundred slices
    trained for a few dozen steps left every held-out slice on one side."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((image_size, image_size, 1))
    x = keras.layers.Rescaling(1.0, offset=-0.5)(x)
    for width in CNN_C2ST_WIDTHS:
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same")(x)
        x = keras.layers.GroupNormalization(groups=4)(x)
        x = keras.layers.Activation("gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    network = keras.Model(inputs, keras.layers.Dense(1)(x), name="two_sample_classifier")
    network.compile(
        optimizer=keras.optimizers.Adam(CNN_C2ST_LEARNING_RATE),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return network


def convolutional_two_sample_accuracy(
    images_a: np.ndarray,
    images_b: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    epochs: int = CNN_C2ST_EPOCHS,
) -> float:
    """The classifier two-sample test with a deep classifier: a small convolutional network
    (`_two_sample_network`) that sees each slice whole at full resolution, trained from scratch
    on each fold's training slices (`epochs` epochs of Adam on the binary cross-entropy, in
    batches of `CNN_C2ST_BATCH`) and judged on its held-out ones, the folds and the
    subsampling as in `classifier_two_sample_accuracy` (grouped by person). It learns its own
    features, so it checks that the linear test's block means, texture statistics and domain
    features do not hide a difference a network can see; training a network per fold makes it
    far slower than the linear test (BENCHMARKS.md, "A convolutional two-sample test"). 0.5 =
    the sets cannot be told apart."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    drawn, _, labels, splits = _two_sample_design(
        images_a, images_b, groups_a, groups_b, seed, folds
    )
    images = np.concatenate(drawn)
    correct = np.zeros(len(labels), dtype=bool)
    for fold, (train, held_out) in enumerate(splits):
        network = _two_sample_network(images.shape[1], seed + fold)
        network.fit(
            images[train],
            labels[train].astype(np.float32),
            batch_size=CNN_C2ST_BATCH,
            epochs=epochs,
            shuffle=True,
            verbose=0,
        )
        logits = network.predict(images[held_out], batch_size=128, verbose=0)[:, 0]
        correct[held_out] = (logits > 0) == (labels[held_out] == 1)
    return float(correct.mean())


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
    images = as_image_batch(images)
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

    `metrics.multiscale_structural_similarity` (the numbers of `tf.image.ssim_multiscale`)
    with data range 1, K1 = 0.01, K2 = 0.03, a 7x7 Gaussian window of sigma 1.5 and
    `ms_ssim_scales(S)` scales with the first that many of the standard weights
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised to sum to 1. The standard 11x11
    window does not fit the 8x8 coarsest scale of a 128x128 image at 5 scales; a 7x7 window
    does (truncating the Gaussian at 2 sigma). The number compares across sets only at the same
    S.
    """
    images = as_image_batch(images)
    scales = ms_ssim_scales(images.shape[1])
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(float(weight) for weight in weights / weights.sum())

    def score(first, second):
        return multiscale_structural_similarity(first, second, weights, MS_SSIM_FILTER_SIZE)

    return _pairwise(images, max_pairs, seed, score)


def pairwise_ssim(images: np.ndarray, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """Diversity: mean SSIM (Wang et al. 2004) over up to `max_pairs` random distinct pairs of
    images (N, S, S, 1), N >= 2, S >= 32: an 11x11 Gaussian window of sigma 1.5, data range 1,
    K1 = 0.01, K2 = 0.03, averaged over the window positions inside the image (the project's
    reconstruction SSIM, `metrics.ssim_per_slice`). 1 = all alike; lower = more diverse."""
    return _pairwise(images, max_pairs, seed, ssim_per_slice)


# ---------------------------------------------------------------------------------------------
# Power spectrum
# ---------------------------------------------------------------------------------------------


def radial_power_spectrum(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The mean of the images' radial power spectra (`metrics.radial_power_spectra`):
    (N, S, S, 1) -> (R,) float64, entry r - 1 for r cycles per image (period S / r pixels),
    r = 1 .. round(S / sqrt 2)."""
    images = as_image_batch(images)
    spectra = [
        np.asarray(radial_power_spectra(images[start : start + chunk]), dtype=np.float64)
        for start in range(0, len(images), chunk)
    ]
    return np.concatenate(spectra).mean(axis=0)


def spectral_distance(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """`metrics.log_spectral_distance` between the two sets' `radial_power_spectrum`s: the
    mean distance in decades, 0 for sets with the same spectrum. Blur shows as a lack of power
    at short periods; the periodic pattern of an up-convolution (a checkerboard, Odena et al.
    2016) as an excess at the periods of 2 and 4 pixels (Durall et al. 2020, "Watch your
    Up-Convolution")."""
    if np.shape(images_a)[1:3] != np.shape(images_b)[1:3]:
        raise ValueError(
            f"the two sets' images differ in size: {np.shape(images_a)[1:3]} and "
            f"{np.shape(images_b)[1:3]}"
        )
    return _spectra_distance(radial_power_spectrum(images_a), radial_power_spectrum(images_b))


def _spectra_distance(spectrum_a: np.ndarray, spectrum_b: np.ndarray) -> float:
    """`metrics.log_spectral_distance` of two (R,) mean spectra, as a float."""
    return float(np.asarray(log_spectral_distance(spectrum_a, spectrum_b)))


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

    The mask is the slice's `brain_masks` at `threshold`. `components` counts
    its 8-connected pieces of at least `min_area_fraction` S^2 pixels (33 at 128x128);
    `holes` counts the 4-connected background pieces of that size that do not touch the
    image border (8/4 connectivity, so that a diagonal gap neither joins two islands nor
    opens a hole).
    """
    from skimage.measure import label

    images = as_image_batch(images)
    min_area = max(1, round(min_area_fraction * images.shape[1] * images.shape[2]))
    components = np.zeros(len(images), dtype=np.int64)
    holes = np.zeros(len(images), dtype=np.int64)
    for index, mask in enumerate(brain_masks(images[..., 0], threshold)):
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
    samples = as_image_batch(samples, "samples")
    real_images = as_image_batch(real_images, "real_images")
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
    ("Fréchet distance, a perfect prior", "fd_perfect_prior", "fd_real_floor", ".4g"),
    ("precision (k = 3)", "precision_samples", "precision_real_floor", ".3f"),
    ("precision, a perfect prior", "precision_perfect_prior", "precision_real_floor", ".3f"),
    ("recall (k = 3)", "recall_samples", "recall_real_floor", ".3f"),
    ("recall, a perfect prior", "recall_perfect_prior", "recall_real_floor", ".3f"),
    ("C2ST accuracy, real vs samples", "c2st_real_vs_samples", "c2st_real_floor", ".3f"),
    ("C2ST accuracy, real vs reconstructions", "c2st_real_vs_reconstructions", "c2st_real_floor",
     ".3f"),
    ("C2ST accuracy, reconstructions vs samples", "c2st_reconstructions_vs_samples",
     "c2st_real_floor", ".3f"),
    ("C2ST accuracy, reconstructions vs a perfect prior", "c2st_reconstructions_vs_perfect_prior",
     "c2st_real_floor", ".3f"),
    ("CNN C2ST accuracy, real vs samples", "cnn_c2st_real_vs_samples", "cnn_c2st_real_floor",
     ".3f"),
    ("CNN C2ST accuracy, real vs reconstructions", "cnn_c2st_real_vs_reconstructions",
     "cnn_c2st_real_floor", ".3f"),
    ("CNN C2ST accuracy, reconstructions vs samples", "cnn_c2st_reconstructions_vs_samples",
     "cnn_c2st_real_floor", ".3f"),
    ("CNN C2ST accuracy, reconstructions vs a perfect prior",
     "cnn_c2st_reconstructions_vs_perfect_prior", "cnn_c2st_real_floor", ".3f"),
    ("diversity: pairwise MS-SSIM", "ms_ssim_samples", "ms_ssim_real", ".4f"),
    ("diversity: pairwise SSIM", "ssim_samples", "ssim_real", ".4f"),
    ("diversity: MS-SSIM, reconstructions", "ms_ssim_reconstructions", "ms_ssim_real", ".4f"),
    ("diversity: MS-SSIM, a perfect prior", "ms_ssim_perfect_prior", "ms_ssim_real", ".4f"),
    ("power spectrum distance", "spectrum_distance_samples", "spectrum_distance_real_floor",
     ".3f"),
    ("power spectrum distance, reconstructions", "spectrum_distance_reconstructions",
     "spectrum_distance_real_floor", ".3f"),
    ("brain's share of the slice", "brain_area_samples", "brain_area_real", ".3f"),
    ("brain's share, reconstructions", "brain_area_reconstructions", "brain_area_real", ".3f"),
    ("brain's share, a perfect prior", "brain_area_perfect_prior", "brain_area_real", ".3f"),
    ("implausible share", "implausible_samples_share", "implausible_real_share", ".1%"),
    ("implausible share, a perfect prior", "implausible_perfect_prior_share",
     "implausible_real_share", ".1%"),
    ("nearest-training distance (mean)", "nearest_training_distance_samples",
     "nearest_training_distance_real", ".4g"),
)  # fmt: skip


def realism_report(
    network: FeatureNetwork,
    real_a: np.ndarray,
    real_b: np.ndarray,
    reconstructions_a: np.ndarray,
    reconstructions_b: np.ndarray,
    samples: np.ndarray,
    training_images: np.ndarray,
    training_levels: np.ndarray,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    seed: int = 0,
    max_pairs: int = MAX_PAIRS,
    folds: int = 5,
    convolutional: bool = False,
    perfect_prior: np.ndarray | None = None,
    perfect_prior_groups: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Every realism measure, for the samples and for its real-vs-real floor: a flat dict of
    floats and ints (JSON-ready).

    `real_a` and `real_b` are two disjoint halves of real held-out slices, of different people
    (`groups_a`, `groups_b` name each slice's person; None: every slice its own);
    `reconstructions_a` and `reconstructions_b` the autoencoder's reconstructions of `real_a`
    and `real_b`, slice by slice; `samples`
    the generated slices; `training_images` and `training_levels` (relative positions in
    [0, 1]) the real training slices (the feature network's training set). n =
    min(len(real_b), len(samples)) slices of `real_b` (with their reconstructions) and of the
    samples are drawn at random (`seed`), so a score and its floor share N and are both measured
    against `real_a`:

    - n_real_a, n_compared, n_samples, n_real: len(real_a), n, len(samples) and the number of
      held-out slices, len(real_a) + len(real_b);
    - fd_samples, fd_reconstructions, fd_real_floor: Fréchet distance of n samples, n
      reconstructions of `real_b` and the n `real_b` slices themselves to all of `real_a`, in
      the network's features;
    - precision_samples, recall_samples, precision_real_floor, recall_real_floor: k = 3
      precision and recall of n samples and of n `real_b` slices against `real_a`;
    - c2st_real_vs_reconstructions (the n `real_b` slices vs their reconstructions: the
      decoder's realism), c2st_reconstructions_vs_samples (the prior alone: a perfect prior's
      samples are distributed like reconstructions), c2st_real_vs_samples (`real_a` vs the
      samples) and c2st_real_floor (`real_a` vs `real_b`): held-out accuracy of a classifier
      judged on people it did not see (`classifier_two_sample_accuracy`), each with a
      `_p_value` key (`two_sample_p_value`);
    - with `convolutional`, the same four tests by a convolutional classifier
      (`convolutional_two_sample_accuracy`, a network trained per fold: slow on a CPU):
      cnn_c2st_real_vs_reconstructions, cnn_c2st_reconstructions_vs_samples,
      cnn_c2st_real_vs_samples and cnn_c2st_real_floor, each with its `_p_value`;
    - ms_ssim_samples, ms_ssim_real, ssim_samples, ssim_real: mean pairwise MS-SSIM and SSIM
      of all the samples and of all the real held-out slices (`real_a` and `real_b` together),
      each over at most `max_pairs` random pairs: unbiased estimates of the mean over every
      pair, whatever the number of slices, so every slice counts; ms_ssim_reconstructions
      and ssim_reconstructions the same of the reconstructions of the held-out slices, on the
      same pairs as the real slices: the diversity of a perfect prior's samples, which are
      decoder outputs too (a decoder's blur alone makes slices more alike than the real ones);
    - spectrum_distance_samples, spectrum_distance_reconstructions,
      spectrum_distance_real_floor: `spectral_distance` of n samples, n reconstructions of
      `real_b` and the n `real_b` slices to all of `real_a`;
    - brain_area_samples, brain_area_reconstructions, brain_area_real: the mean share of the
      slice inside the brain's outline (`brain_area`) of all the samples, of the
      reconstructions of all the held-out slices and of those slices themselves (the
      real value);
    - implausible_samples, implausible_samples_share, implausible_real,
      implausible_real_share: count and share of `implausible` samples, and of all real
      held-out slices, judged at two estimates of each slice's level, the nearest training
      slice's in feature space and the position head's (`predict_positions`; the first only
      for a network trained without positions);
    - nearest_training_distance_samples, nearest_training_distance_real: mean feature
      distance from each of n samples, and of n `real_b` slices, to its nearest training slice
      (far below the real value = copying the training set).

    `perfect_prior`, when given (with `perfect_prior_groups`, the person of each), is what a
    perfect prior's samples would be: the decoded maps it learned from, i.e. reconstructions of
    training slices (`evaluation.perfect_prior_draws`). The held-out people are few, and a
    prior learns the training people's spread, not theirs; the samples are judged by the same
    measures as these, which is what the best prior could score here (n of them, or all if
    fewer, drawn as the samples are; all of them for diversity and size):

    - fd_perfect_prior, precision_perfect_prior, recall_perfect_prior,
      c2st_reconstructions_vs_perfect_prior (with `convolutional`,
      cnn_c2st_reconstructions_vs_perfect_prior too; each with its `_p_value`),
      ms_ssim_perfect_prior, ssim_perfect_prior, brain_area_perfect_prior,
      implausible_perfect_prior, implausible_perfect_prior_share: the measures of the samples'
      keys above, of the perfect prior's draws in their place (the last: a decoder can break a
      brain's outline too).
    """
    real_a, real_b = as_image_batch(real_a, "real_a"), as_image_batch(real_b, "real_b")
    reconstructions_b = as_image_batch(reconstructions_b, "reconstructions_b")
    samples = as_image_batch(samples, "samples")
    training_images = as_image_batch(training_images, "training_images")
    training_levels = np.asarray(training_levels, dtype=np.float64).reshape(-1)
    if len(training_levels) != len(training_images):
        raise ValueError(
            f"training_levels has {len(training_levels)} values for {len(training_images)}"
        )
    reconstructions_a = as_image_batch(reconstructions_a, "reconstructions_a")
    for name, reconstructions, real in (
        ("a", reconstructions_a, real_a),
        ("b", reconstructions_b, real_b),
    ):
        if len(reconstructions) != len(real):
            raise ValueError(
                f"reconstructions_{name} has {len(reconstructions)} slices for {len(real)} of "
                f"real_{name}"
            )
    groups_a = np.arange(len(real_a)).astype(str) if groups_a is None else np.asarray(groups_a)
    groups_b = np.arange(len(real_b)).astype(str) if groups_b is None else np.asarray(groups_b)
    rng = np.random.default_rng(seed)
    n = min(len(real_b), len(samples))
    if n < PRECISION_RECALL_K + 2:
        raise ValueError(f"every set needs at least {PRECISION_RECALL_K + 2} slices, got {n}")
    chosen_b = np.sort(rng.choice(len(real_b), n, replace=False))
    real_b_n, reconstructions_n = real_b[chosen_b], reconstructions_b[chosen_b]
    groups_b_n = groups_b[chosen_b]
    chosen_samples = np.sort(rng.choice(len(samples), n, replace=False))
    samples_n = samples[chosen_samples]
    sets = {
        "real_a": (real_a, groups_a),
        "real_b": (real_b_n, groups_b_n),
        "reconstructions": (reconstructions_n, groups_b_n),
        "samples": (samples_n, None),
    }
    if perfect_prior is not None:
        perfect_prior = as_image_batch(perfect_prior, "perfect_prior")
        if perfect_prior_groups is None or len(perfect_prior_groups) != len(perfect_prior):
            raise ValueError("perfect_prior_groups must name the person of each perfect_prior")
        count = min(n, len(perfect_prior))
        chosen_perfect = np.sort(rng.choice(len(perfect_prior), count, replace=False))
        sets["perfect_prior"] = (
            perfect_prior[chosen_perfect],
            np.asarray(perfect_prior_groups)[chosen_perfect],
        )
    # Every sample's (and perfect prior's draw's) features, once: the implausibility rule
    # reads them all.
    every_features = {"samples": (image_features(network, samples), chosen_samples)}
    if perfect_prior is not None:
        every_features["perfect_prior"] = (image_features(network, perfect_prior), chosen_perfect)
    features = {
        name: image_features(network, images)
        for name, (images, _) in sets.items()
        if name not in every_features
    }
    for name, (all_features, chosen) in every_features.items():
        features[name] = all_features[chosen]
    features["training"] = image_features(network, training_images)
    report: dict[str, float | int] = {
        "n_real_a": len(real_a),
        "n_compared": n,
        "n_samples": len(samples),
        "n_real": len(real_a) + len(real_b),
    }
    report["fd_samples"] = frechet_distance(features["samples"], features["real_a"])
    report["fd_reconstructions"] = frechet_distance(features["reconstructions"], features["real_a"])
    report["fd_real_floor"] = frechet_distance(features["real_b"], features["real_a"])
    compared = {"samples": "samples", "real_b": "real_floor"}
    if perfect_prior is not None:
        report["fd_perfect_prior"] = frechet_distance(features["perfect_prior"], features["real_a"])
        compared["perfect_prior"] = "perfect_prior"
    for name, key in compared.items():
        precision, recall = precision_recall(features["real_a"], features[name])
        report |= {f"precision_{key}": precision, f"recall_{key}": recall}

    pairs = {
        "c2st_real_vs_reconstructions": ("real_b", "reconstructions"),
        "c2st_reconstructions_vs_samples": ("reconstructions", "samples"),
        "c2st_real_vs_samples": ("real_a", "samples"),
        "c2st_real_floor": ("real_a", "real_b"),
    }
    if perfect_prior is not None:
        pairs["c2st_reconstructions_vs_perfect_prior"] = ("reconstructions", "perfect_prior")
    for key, (first, second) in pairs.items():
        (images_a, people_a), (images_b, people_b) = sets[first], sets[second]
        accuracy = classifier_two_sample_accuracy(
            images_a,
            images_b,
            seed=seed,
            folds=folds,
            features_a=features[first],
            features_b=features[second],
            groups_a=people_a,
            groups_b=people_b,
        )
        judged = 2 * min(len(images_a), n)
        report[key] = accuracy
        report[f"{key}_p_value"] = two_sample_p_value(accuracy, judged)
        if convolutional:
            accuracy = convolutional_two_sample_accuracy(
                images_a, images_b, seed=seed, folds=folds, groups_a=people_a, groups_b=people_b
            )
            report[f"cnn_{key}"] = accuracy
            report[f"cnn_{key}_p_value"] = two_sample_p_value(accuracy, judged)

    held_out = np.concatenate([real_a, real_b])
    every_slice = {  # the diversity and the brain's size count every slice of each set
        "samples": samples,
        "real": held_out,
        "reconstructions": np.concatenate([reconstructions_a, reconstructions_b]),
    }
    if perfect_prior is not None:
        every_slice["perfect_prior"] = perfect_prior
    for name, images in every_slice.items():
        report[f"ms_ssim_{name}"] = pairwise_ms_ssim(images, max_pairs, seed)
        report[f"ssim_{name}"] = pairwise_ssim(images, max_pairs, seed)
        report[f"brain_area_{name}"] = float(brain_area(images).mean())

    real_spectrum = radial_power_spectrum(real_a)
    for name, key in (
        ("samples", "samples"),
        ("reconstructions", "reconstructions"),
        ("real_b", "real_floor"),
    ):
        spectrum = radial_power_spectrum(sets[name][0])
        report[f"spectrum_distance_{key}"] = _spectra_distance(spectrum, real_spectrum)

    # Levels by the nearest training slice in feature space and, if trained, the position
    # head: a slice is implausible only at both.
    held_out_features = np.concatenate([features["real_a"], image_features(network, real_b)])
    judged = {
        "samples": (samples, every_features["samples"][0]),
        "real": (held_out, held_out_features),
    }
    if perfect_prior is not None:
        judged["perfect_prior"] = (perfect_prior, every_features["perfect_prior"][0])
    levels = []
    for images, set_features in judged.values():
        nearest = nearest_training_levels(set_features, features["training"], training_levels)
        predicted = predict_positions(network, images)
        levels.append(nearest if predicted is None else np.stack([nearest, predicted], axis=1))
    flagged = implausible(
        np.concatenate([images for images, _ in judged.values()]),
        np.concatenate(levels),
        training_images,
        training_levels,
    )
    sizes = [len(images) for images, _ in judged.values()]
    for name, flags in zip(judged, np.split(flagged, np.cumsum(sizes)[:-1]), strict=True):
        report[f"implausible_{name}"] = int(flags.sum())
        report[f"implausible_{name}_share"] = float(flags.mean())

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
        f"{report.get('n_real_a', '?')} real held-out slices; diversity, brain size and the "
        f"implausible share of all {report.get('n_samples', '?')} samples and "
        f"{report.get('n_real', '?')} held-out slices"
    )
    return "\n".join([title, *lines])


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_nearest_training(
    network: FeatureNetwork,
    samples: np.ndarray,
    training_images: np.ndarray,
    path: str | Path,
    count: int = 8,
) -> Path:
    """PNG of the first `count` samples (top row) above their nearest training slices in
    the `network`'s feature space (bottom row), each titled with the feature distance: a sample
    that is a copy of a training slice shows as a twin at a small distance."""
    from matplotlib.figure import Figure

    samples = as_image_batch(samples, "samples")
    training_images = as_image_batch(training_images, "training_images")
    count = min(count, len(samples))
    if count < 1:
        raise ValueError("samples must hold at least one slice")
    nearest, distances = _nearest(
        image_features(network, samples[:count]), image_features(network, training_images)
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
    """PNG bar chart of `realism_report`: for each measure, samples (or reconstructions, or
    a perfect prior's draws, for their rows) beside the real-vs-real floor, one small panel per
    measure (their scales differ)."""
    from matplotlib.figure import Figure

    rows = [row for row in REPORT_ROWS if row[1] in report]
    columns = 4
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * lines))
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for axis, (label, key, floor, _) in zip(axes, rows, strict=False):
        values = [report[key], report[floor]]
        measured = "samples"
        for name in ("reconstructions", "perfect prior"):
            measured = name if key.endswith(name.replace(" ", "_")) else measured
        axis.bar([measured, "real floor"], values, color=["tab:orange", "tab:blue"])
        axis.set_title(label, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes[len(rows) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)


def plot_spectra(sets: dict[str, np.ndarray], path: str | Path) -> Path:
    """PNG of the `radial_power_spectrum` of each named image set ({"real": images, ...}, each
    (N, S, S, 1)) on log axes, power against the period in pixels (S / r): a generator's curve
    on the real one at every scale is what real images show; one below it at short periods is
    blur, a bump at 2 or 4 pixels a periodic pattern."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0))
    axis = figure.subplots()
    for label, images in sets.items():
        spectrum = radial_power_spectrum(images)
        periods = images.shape[1] / np.arange(1, len(spectrum) + 1)
        axis.loglog(periods, spectrum, label=label)
    axis.invert_xaxis()
    ticks = [period for period in (64, 32, 16, 8, 4, 2) if period <= images.shape[1]]
    axis.set_xticks(ticks, [str(period) for period in ticks])
    axis.set_xlabel("period (pixels)")
    axis.set_ylabel("power (azimuthal mean)")
    axis.set_title("power spectrum", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
