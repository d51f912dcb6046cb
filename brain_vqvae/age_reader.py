"""Reading a person's age from one axial slice: the regressor that judges whether a prior
conditioned on age obeys (`evaluation.judge_conditions`, `obedience.condition_obedience`), and
on the diagnosis, read as ageing (`evaluation.judge_diagnosis`).

Brains age visibly: the ventricles widen, the sulci open and the brain shrinks inside the
skull (OASIS-1's normalised whole-brain volume nWBV falls from about 0.85 at 20 to 0.70 at
90; Fotenos et al., Neurology 2005). The reader measures this as tissue composition, in the
brain's centre (where the ventricles are) and its rim (cortex and sulci), and regresses the age
on it linearly. A linear model over a few dozen tissue fractions cannot memorise people, so it
reads new people about as well as the training ones; an image network trained on the demo's 64
people learns who they are, not how old (the feature network's age regression read new people
at r -0.2, BENCHMARKS.md).

Features of a slice x (S x S, values in [0, 1]) at relative level p (0 = lowest slice):

    B    = {x > BRAIN_LEVEL}, the brain's pixels (the background of skull-stripped slices is 0)
    s    = the 95th percentile of x over B, the slice's white-matter brightness: x / s cancels
           the scanner's gain
    r0   = sqrt(|B| / pi), the radius of a disc of the brain's area, around B's centroid;
           centre C = pixels of B closer than r0 / 2 to it, rim R = the rest of B
    h_C, h_R = the fractions of C's and of R's pixels in `HISTOGRAM_BINS` equal bins of x / s
           over [0, `HISTOGRAM_TOP`)
    g    = (|B| / S^2, mean_B x / s, std_B x / s, r0 / S)
    f    = (h_C, h_R, g), phi(x, p) = (f, p f, p^2 f, p, p^2)

so the composition is read relative to what is normal at that level. The age is a ridge
regression on the standardised phi, its penalty chosen by leave-one-out cross-validation
(scikit-learn's `RidgeCV`). Only slices at the levels `READ_LEVELS` are read: the lowest
slices (cerebellum, temporal lobes) and the highest (the vertex) show little of the ventricles.

Which images to train it on. A reader trained on real slices reads blurred ones wrongly (a
decoder's blur moves intensities between the histogram's bins), and a generator's slices are
decoder outputs. `judge_conditions` therefore trains it on the reconstructions of the real
training slices, and its ceiling is the reconstructions of the held-out slices: the age a
perfect prior's slices could show through this decoder.

How much a reader reads is measured on people it was not trained on. A data set's held-out
split can be small (the demo's test split has 8 people, so an r over their slices moves by
about 0.1 with who they are); `AgeReader.cross_validate` reads every training person by a
reader trained on the others (K folds of whole people), which gives a ceiling over all of
them.

Public API: `AgeReader` (`AgeReader.fit`, `AgeReader.predict`, `AgeReader.cross_validate`),
`tissue_features`, `readable_levels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["READ_LEVELS", "AgeReader", "readable_levels", "tissue_features"]

READ_LEVELS = (0.25, 0.75)  # the relative slice levels the reader reads
BRAIN_LEVEL = 0.02  # pixels above this (of 1) are brain
HISTOGRAM_BINS = 12
HISTOGRAM_TOP = 1.2  # the histograms span x / s in [0, 1.2): bright voxels above s included
MIN_BRAIN_PIXELS = 20  # fewer brain pixels: the slice's features are all zero
RIDGE_PENALTIES = np.logspace(-2, 4, 13)
MIN_TRAINING_SLICES = 8
CROSS_VALIDATION_FOLDS = 8


def _as_slices(images) -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) -> float32 (N, S, S)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be shaped (N, S, S) or (N, S, S, 1), got {images.shape}")
    return images


def _as_levels(positions, count: int) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(positions) != count:
        raise ValueError(f"positions has {len(positions)} values for {count} images")
    if not np.all((positions >= 0) & (positions <= 1)):
        raise ValueError("positions must be relative slice levels in [0, 1]")
    return positions


def readable_levels(positions) -> np.ndarray:
    """(N,) bool: which slice levels (relative, 0 = lowest) the reader reads, `READ_LEVELS`."""
    positions = np.asarray(positions, dtype=np.float64)
    low, high = READ_LEVELS
    return (positions >= low) & (positions <= high)


def _composition(image: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """f = (h_C, h_R, g) of the module docstring for one (S, S) slice."""
    size = image.shape[0]
    brain = image > BRAIN_LEVEL
    count = int(brain.sum())
    if count < MIN_BRAIN_PIXELS:
        return np.zeros(2 * HISTOGRAM_BINS + 4)
    values = image[brain]
    brightness = float(np.percentile(values, 95))
    radius = np.sqrt(count / np.pi)
    distance = np.hypot(rows - rows[brain].mean(), columns - columns[brain].mean())
    centre = brain & (distance < radius / 2)
    histograms = []
    for region in (centre, brain & ~centre):
        counts, _ = np.histogram(
            image[region] / brightness, bins=HISTOGRAM_BINS, range=(0.0, HISTOGRAM_TOP)
        )
        histograms.append(counts / max(int(region.sum()), 1))
    overall = [
        count / size**2,
        values.mean() / brightness,
        values.std() / brightness,
        radius / size,
    ]
    return np.concatenate([*histograms, overall])


def tissue_features(images, positions) -> np.ndarray:
    """phi(x, p) of the module docstring for each slice.

    Args:
        images: (N, S, S) or (N, S, S, 1) float in [0, 1].
        positions: (N,) the slices' relative levels in [0, 1].

    Returns:
        (N, 3 (2 HISTOGRAM_BINS + 4) + 2) float64.
    """
    images = _as_slices(images)
    positions = _as_levels(positions, len(images))
    rows, columns = np.indices(images.shape[1:], dtype=np.float64)
    composition = np.array([_composition(image, rows, columns) for image in images]).reshape(
        len(images), 2 * HISTOGRAM_BINS + 4
    )
    level = positions[:, None]
    return np.concatenate(
        [composition, level * composition, level**2 * composition, level, level**2], axis=1
    )


def _regression() -> Pipeline:
    """A ridge regression on standardised features, its penalty by leave-one-out."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_PENALTIES))


def _training_slices(images, positions, ages):
    """Checked (images (N, S, S), positions (N,), ages (N,), used (N,) bool): the slices at
    `READ_LEVELS` of known age are used; ValueError with fewer than `MIN_TRAINING_SLICES` of
    them or their ages all equal."""
    images = _as_slices(images)
    positions = _as_levels(positions, len(images))
    ages = np.asarray(ages, dtype=np.float64).reshape(-1)
    if len(ages) != len(images):
        raise ValueError(f"ages has {len(ages)} values for {len(images)} images")
    used = readable_levels(positions) & np.isfinite(ages)
    if used.sum() < MIN_TRAINING_SLICES:
        raise ValueError(
            f"the age reader needs at least {MIN_TRAINING_SLICES} slices of known age at "
            f"levels {READ_LEVELS[0]}-{READ_LEVELS[1]}, got {int(used.sum())}"
        )
    if np.ptp(ages[used]) == 0:
        raise ValueError("the age reader needs people of different ages, all are equal")
    return images, positions, ages, used


@dataclass(frozen=True)
class AgeReader:
    """A person's age in years read from one slice at a known level (module docstring), within
    the ages it was trained on (`ages_seen`, youngest and oldest): a linear read of a slice
    unlike every training slice (a generator's can be) extrapolates to ages no one has, which
    would make the mean absolute error of a set of such slices meaningless."""

    regression: Pipeline
    ages_seen: tuple[float, float]

    @classmethod
    def fit(cls, images, positions, ages) -> AgeReader:
        """Train on slices (N, S, S[, 1]) in [0, 1] at relative levels `positions` (N,) of
        people of `ages` (N,) years; slices outside `READ_LEVELS` or of unknown age (NaN) are
        left out. Raises ValueError with fewer than `MIN_TRAINING_SLICES` slices left or ages
        that are all equal."""
        images, positions, ages, used = _training_slices(images, positions, ages)
        regression = _regression()
        regression.fit(tissue_features(images[used], positions[used]), ages[used])
        return cls(regression, (float(ages[used].min()), float(ages[used].max())))

    @staticmethod
    def cross_validate(
        images, positions, ages, people, folds: int = CROSS_VALIDATION_FOLDS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every person's slices read by a reader trained on the other people.

        The slices (N, S, S[, 1]) in [0, 1], their levels (N,), ages (N,) and `people` (N,)
        (whose slice each is) are those of `fit`; the people are split into `folds` groups
        (scikit-learn's `GroupKFold`), and each group's slices are read by a reader `fit` on
        the rest, reads clipped to the ages that reader saw, as `predict` clips them.

        Returns (ages (U,), reads (U,)) of the U slices `fit` would use (at `READ_LEVELS`, of
        known age), in their order. Raises ValueError as `fit` does, and with fewer than
        `folds` people among them.
        """
        images, positions, ages, used = _training_slices(images, positions, ages)
        people = np.asarray(people).reshape(-1)
        if len(people) != len(images):
            raise ValueError(f"people has {len(people)} values for {len(images)} images")
        people = people[used]
        if len(np.unique(people)) < folds:
            raise ValueError(
                f"cross-validating the age reader in {folds} folds needs at least {folds} "
                f"people, got {len(np.unique(people))}"
            )
        features, ages = tissue_features(images[used], positions[used]), ages[used]
        reads = np.empty(len(ages))
        for training, held_out in GroupKFold(folds).split(features, ages, people):
            regression = _regression().fit(features[training], ages[training])
            seen = ages[training]
            reads[held_out] = np.clip(
                regression.predict(features[held_out]), seen.min(), seen.max()
            )
        return ages, reads

    def predict(self, images, positions) -> np.ndarray:
        """(N,) float64 ages in years, clipped to `ages_seen`, read from slices (N, S, S[, 1])
        in [0, 1] at relative levels `positions` (N,), all within `READ_LEVELS` (ValueError
        otherwise)."""
        images = _as_slices(images)
        positions = _as_levels(positions, len(images))
        if not np.all(readable_levels(positions)):
            raise ValueError(
                f"the age reader reads slices at levels {READ_LEVELS[0]}-{READ_LEVELS[1]} only"
            )
        if len(images) == 0:
            return np.zeros(0)
        ages = self.regression.predict(tissue_features(images, positions))
        return np.clip(ages, *self.ages_seen).astype(np.float64)
