"""Does a conditioned generator obey, and do its slices make volumes? Measures of conditioning
and of whole volumes, on images, arrays and numbers, whatever made them.

Obedience. A prior conditioned on a slice's level (and on its subject's age) obeys when what it
makes shows what was asked for. A regressor trained on the training slices reads the value
back from each generated slice: the level by the run's feature network (`feature_network`,
its position head), the age by a tissue-composition `age_reader.AgeReader`.
`condition_obedience` scores the requested against the predicted values by Pearson's r and the
mean absolute error. The same regressor on held-out slices, requested = their true value, is
the ceiling: a generator cannot be measured more obedient than the regressor reads the slices
it stands for. `plot_obedience` draws both.

The diagnosis (the clinical dementia rating, CDR) is read as ageing: dementia shrinks a brain
beyond its years, so an age reader finds a demented brain older than it is.
`apparent_age_effect` is the years per CDR point by which brains read older, their age held
fixed; `plot_diagnosis` draws the read age minus the age by CDR.

Volumes. A volume is D axial slices of one subject, float32 in [0, 1], shaped [V, D, S, S]
(or [V, D, S, S, 1]) for V volumes, indexed volume[d, r, c]:

- d = 0 .. D-1: the axial slice, from the lowest (inferior) to the highest (superior);
- r = 0 .. S-1: the slice's image row, anterior (r = 0, the top of the shown slice) to
  posterior;
- c = 0 .. S-1: the slice's image column, the subject's left (c = 0, the image's left) to the
  subject's right: the neurological convention of the loaders (`brain_vqvae.data.geometry`).

`real_volumes` stacks a split's slices into such volumes. `adjacent_slice_ssim` measures how
alike neighbouring slices are (a generator that makes each slice on its own shows as less alike
than real volumes are); `orthogonal_cuts` cuts the volumes coronally and sagittally into
images (`cut_images` as one batch, each with its volume) that a two-sample test (`realism`)
compares as it compares axial slices: axial slices that look real one by one but do not fit
together show as broken anatomy in those cuts. `plot_volume_cuts` draws them side by side.

Public API: `condition_obedience`, `apparent_age_effect`, `adjacent_slice_ssim`,
`orthogonal_cuts`, `cut_images`, `real_volumes`, `plot_obedience`, `plot_diagnosis`,
`plot_volume_cuts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from keras import ops

from brain_vqvae.metrics import SSIM_FILTER_SIZE, ssim_per_slice

__all__ = [
    "CUT_FRACTIONS",
    "adjacent_slice_ssim",
    "apparent_age_effect",
    "condition_obedience",
    "cut_images",
    "orthogonal_cuts",
    "plot_diagnosis",
    "plot_obedience",
    "plot_volume_cuts",
    "real_volumes",
]

MIN_OBEDIENCE_VALUES = 3
CUT_FRACTIONS = (0.35, 0.5, 0.65)  # where the cuts pass, as fractions of the rows or columns


# ---------------------------------------------------------------------------------------------
# Obedience to a condition
# ---------------------------------------------------------------------------------------------


def _as_values(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite numbers")
    return values


def condition_obedience(requested, predicted) -> dict:
    """How well the values a regressor reads from generated images follow the requested ones.

    Args:
        requested: (N,) the condition each image was generated with (a relative slice level,
            an age in years, ...), N >= 3, not all equal.
        predicted: (N,) the regressor's estimate of the same quantity from each image
            (`feature_network.predict_positions`, `AgeReader.predict`).

    Returns:
        {"r": Pearson's correlation sum_i (x_i - mean x)(y_i - mean y)
              / sqrt(sum_i (x_i - mean x)^2 sum_i (y_i - mean y)^2), x requested, y predicted,
              in [-1, 1]; 0 when the predictions are all equal (they then say nothing of the
              request),
         "mae": mean_i |y_i - x_i|, in the condition's unit,
         "count": N}.

    Raises ValueError for different lengths, fewer than 3 values, values that are not finite
    and requested values that are all equal (r is then undefined).
    """
    requested = _as_values(requested, "requested")
    predicted = _as_values(predicted, "predicted")
    if len(requested) != len(predicted):
        raise ValueError(
            f"requested has {len(requested)} values but predicted has {len(predicted)}"
        )
    if len(requested) < MIN_OBEDIENCE_VALUES:
        raise ValueError(
            f"obedience needs at least {MIN_OBEDIENCE_VALUES} values, got {len(requested)}"
        )
    requested_deviation = requested - requested.mean()
    predicted_deviation = predicted - predicted.mean()
    requested_spread = np.sqrt(np.sum(requested_deviation**2))
    predicted_spread = np.sqrt(np.sum(predicted_deviation**2))
    if requested_spread == 0:
        raise ValueError("requested values are all equal: their correlation is undefined")
    correlation = (
        float(
            np.sum(requested_deviation * predicted_deviation)
            / (requested_spread * predicted_spread)
        )
        if predicted_spread > 0
        else 0.0
    )
    return {
        "r": correlation,
        "mae": float(np.mean(np.abs(predicted - requested))),
        "count": len(requested),
    }


def apparent_age_effect(cdr, ages, reads) -> dict:
    """How much older brains of a higher clinical dementia rating look, their age held fixed.

    Args:
        cdr: (N,) each brain's CDR (asked of a generated slice, or a person's), not all equal.
        ages: (N,) each brain's age in years (asked, or the person's).
        reads: (N,) the age an age reader reads from each (`AgeReader.predict`; a person's
            mean over their slices).

    Returns:
        {"years_per_cdr": b, the CDR's coefficient in the least-squares fit
              read = b0 + b cdr + b2 age (without the age term when the ages are all equal),
              the years by which one CDR point ages the brain's look,
         "standard_error": its standard error, sqrt(s^2 [(X^T X)^-1]_bb) with
              s^2 = residual sum of squares / (N - columns of X),
         "count": N}.

    Raises ValueError for different lengths, values that are not finite, CDRs all equal, or
    no more brains than the fit has terms.
    """
    cdr, ages, reads = _as_values(cdr, "cdr"), _as_values(ages, "ages"), _as_values(reads, "reads")
    if not len(cdr) == len(ages) == len(reads):
        raise ValueError(
            f"cdr, ages and reads have {len(cdr)}, {len(ages)} and {len(reads)} values"
        )
    if len(cdr) == 0 or np.ptp(cdr) == 0:
        raise ValueError("the CDRs are all equal (or none): their effect is undefined")
    columns = [np.ones_like(cdr), cdr] + ([ages] if np.ptp(ages) > 0 else [])
    design = np.stack(columns, axis=1)
    if len(cdr) <= design.shape[1]:
        raise ValueError(
            f"{len(cdr)} brains cannot fit {design.shape[1]} terms and leave a residual"
        )
    inverse = np.linalg.pinv(design.T @ design)
    coefficients = inverse @ design.T @ reads
    residual = reads - design @ coefficients
    variance = float(residual @ residual) / (len(cdr) - design.shape[1])
    return {
        "years_per_cdr": float(coefficients[1]),
        "standard_error": float(np.sqrt(variance * inverse[1, 1])),
        "count": len(cdr),
    }


# ---------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------


def _as_volumes(volumes) -> np.ndarray:
    """[V, D, S, S] or [V, D, S, S, 1] -> float32 [V, D, S, S], V >= 1, D >= 2."""
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim == 5 and volumes.shape[-1] == 1:
        volumes = volumes[..., 0]
    if volumes.ndim != 4 or volumes.shape[2] != volumes.shape[3]:
        raise ValueError(
            f"volumes must be shaped [V, D, S, S] or [V, D, S, S, 1], got {volumes.shape}"
        )
    if volumes.shape[0] < 1 or volumes.shape[1] < 2:
        raise ValueError(f"volumes must hold at least one volume of 2 slices, got {volumes.shape}")
    return volumes


def adjacent_slice_ssim(volumes) -> dict:
    """The mean SSIM (`metrics.ssim_per_slice`) between neighbouring axial slices of volumes.

    Args:
        volumes: [V, D, S, S] (or [V, D, S, S, 1]) float in [0, 1], slices bottom to top,
            S >= 11 (the SSIM window).

    Returns:
        {"mean": (1 / (V (D - 1))) sum_v sum_{d < D-1} SSIM(volume_v[d], volume_v[d + 1]),
         "per_gap": (D - 1,) float64, entry d the mean over volumes of SSIM(slice d,
             slice d + 1): where in the volume neighbours stop fitting together,
         "count": V}.

    Compare volumes of the same D over the same extent: a wider slice spacing makes real
    neighbours less alike too.
    """
    volumes = _as_volumes(volumes)
    count, depth, size = volumes.shape[:3]
    if size < SSIM_FILTER_SIZE:
        raise ValueError(f"slices must be at least {SSIM_FILTER_SIZE} pixels wide, got {size}")
    lower = volumes[:, :-1].reshape(-1, size, size)
    upper = volumes[:, 1:].reshape(-1, size, size)
    per_pair = ssim_per_slice(lower, upper).reshape(count, depth - 1)
    return {"mean": float(per_pair.mean()), "per_gap": per_pair.mean(axis=0), "count": count}


def orthogonal_cuts(
    volumes, size: int, fractions: Sequence[float] = CUT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Coronal and sagittal cuts through volumes, as images [*, size, size, 1] in [0, 1].

    With volume[d, r, c] as in the module's docstring (d inferior to superior, r anterior to
    posterior, c the subject's left to right) and F = len(fractions), each fraction f gives

    - a coronal cut at row r_f = round(f (S - 1)) (a plane of one anterior-posterior level):
      picture[i, j] = volume[D - 1 - i, r_f, j], superior at the top, the subject's left on
      the image's left (the neurological convention of the axial slices);
    - a sagittal cut at column c_f = round(f (S - 1)) (a plane of one left-right level; 0.5 is
      the midline of a centred brain): picture[i, j] = volume[D - 1 - i, j, c_f], superior at
      the top, anterior on the image's left.

    Each (D, S) picture is resized bilinearly (antialiased when shrinking) to (size, size): the
    D slices are stretched to the image's height whatever the slice spacing, so compare real
    and generated volumes of the same D.

    Args:
        volumes: [V, D, S, S] (or [V, D, S, S, 1]) float in [0, 1].
        size: the side of the cut images, e.g. the axial slices' S, or the feature network's.
        fractions: where the cuts pass, each in [0, 1].

    Returns:
        {"coronal": [V F, size, size, 1] float32, "sagittal": the same}, row v F + k the cut of
        volume v at fractions[k].
    """
    volumes = _as_volumes(volumes)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if len(fractions) == 0 or fractions.min() < 0 or fractions.max() > 1:
        raise ValueError(f"fractions must be one or more values in [0, 1], got {fractions}")
    count, depth, width = volumes.shape[:3]
    levels = np.round(fractions * (width - 1)).astype(np.int64)
    superior_first = volumes[:, ::-1]  # [V, D, S, S], index 0 now the highest slice
    coronal = superior_first[:, :, levels, :].transpose(0, 2, 1, 3)  # [V, F, D, S]
    sagittal = superior_first[:, :, :, levels].transpose(0, 3, 1, 2)  # [V, F, D, S]

    def resized(pictures: np.ndarray) -> np.ndarray:
        pictures = pictures.reshape(count * len(levels), depth, width, 1)
        images = ops.image.resize(pictures, (size, size), interpolation="bilinear", antialias=True)
        return np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)

    return {"coronal": resized(coronal), "sagittal": resized(sagittal)}


def cut_images(
    volumes, size: int, fractions: Sequence[float] = CUT_FRACTIONS
) -> tuple[np.ndarray, np.ndarray]:
    """The coronal and sagittal `orthogonal_cuts` of volumes [V, D, S, S] as one batch of
    images [2 V F, size, size, 1] (the coronal cuts, then the sagittal ones), and the index of
    the volume each comes from (2 V F,) int64, for tests that must keep a volume's cuts
    together."""
    cuts = orthogonal_cuts(volumes, size, fractions)
    per_volume = len(np.ravel(fractions))
    volume_of_cut = np.repeat(np.arange(len(cuts["coronal"]) // per_volume), per_volume)
    return np.concatenate([cuts["coronal"], cuts["sagittal"]]), np.tile(volume_of_cut, 2)


def real_volumes(slice_set) -> tuple[np.ndarray, np.ndarray]:
    """Each subject's slices of a split stacked bottom to top into a volume.

    Args:
        slice_set: a `SliceSet` (images (N, S, S) uint8, subject_ids (N,), slice_indices (N,),
            the slice's level within its subject, higher = more superior).

    Returns:
        (volumes [V, D, S, S] float32 in [0, 1] (images / 255), slice d of a volume the
        subject's d-th lowest slice; subject_ids (V,) str, sorted), for the V subjects with the
        most common number D of slices (the larger D if two are equally common): a subject
        with more or fewer slices would not stack with the rest, and is skipped.

    Raises ValueError when the split is empty or its subjects have a single slice each.
    """
    subject_ids = np.asarray(slice_set.subject_ids)
    if len(subject_ids) == 0:
        raise ValueError("the slice set is empty")
    subjects, inverse, slice_counts = np.unique(
        subject_ids, return_inverse=True, return_counts=True
    )
    depths, subjects_per_depth = np.unique(slice_counts, return_counts=True)
    depth = int(depths[subjects_per_depth == subjects_per_depth.max()].max())
    if depth < 2:
        raise ValueError("the slice set has one slice per subject: it holds no volumes")
    kept = np.flatnonzero(slice_counts == depth)
    volumes = []
    for subject in kept:
        rows = np.flatnonzero(inverse == subject)
        rows = rows[np.argsort(np.asarray(slice_set.slice_indices)[rows], kind="stable")]
        volumes.append(np.asarray(slice_set.images)[rows])
    return np.stack(volumes).astype(np.float32) / np.float32(255.0), subjects[kept]


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def plot_obedience(
    requested,
    predicted,
    ceiling_requested,
    ceiling_predicted,
    path: str | Path,
    label: str,
    ceiling_label: str = "real held-out slices",
) -> Path:
    """PNG scatter of requested (x) against predicted (y) values of one condition: generated
    slices (requested, predicted) and the ceiling's slices, named by `ceiling_label` (their
    true value, the same regressor's estimate), each with its `condition_obedience` r in the
    legend, beside the line y = x of perfect obedience. `label` names the condition with its
    unit, e.g. "slice position" or "age (years)"."""
    from matplotlib.figure import Figure

    generated = condition_obedience(requested, predicted)
    ceiling = condition_obedience(ceiling_requested, ceiling_predicted)
    shown = (requested, predicted, ceiling_requested, ceiling_predicted)
    values = np.concatenate([np.ravel(part) for part in shown]).astype(np.float64)
    figure = Figure(figsize=(4.6, 4.4))
    axis = figure.subplots()
    line = [values.min(), values.max()]
    axis.plot(line, line, color="grey", lw=1, label="perfect obedience (y = x)")
    axis.scatter(
        ceiling_requested,
        ceiling_predicted,
        s=10,
        alpha=0.5,
        color="tab:blue",
        label=f"{ceiling_label} (ceiling), r = {ceiling['r']:.2f}",
    )
    axis.scatter(
        requested,
        predicted,
        s=10,
        alpha=0.6,
        color="tab:orange",
        label=f"generated, r = {generated['r']:.2f}",
    )
    axis.set(xlabel=f"requested {label}", ylabel=f"predicted {label}", title=f"obedience: {label}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)


def plot_diagnosis(generated, people, path: str | Path) -> Path:
    """PNG of how much older than their age brains of each CDR look: the read age minus the
    age (y) against the age (x), one colour per CDR, for the generated slices and, when given,
    the people they are set against, each panel titled with its `apparent_age_effect`.
    `generated` and `people` are (cdr, ages, reads) triples of (N,) arrays; `people` None
    draws the generated panel alone."""
    from matplotlib.figure import Figure

    panels = [("generated slices", generated)]
    if people is not None:
        panels.append(("training people, reconstructed (ceiling)", people))
    every_cdr = np.unique(np.concatenate([np.asarray(values[0], float) for _, values in panels]))
    colours = {value: f"C{index}" for index, value in enumerate(every_cdr)}  # one per CDR
    figure = Figure(figsize=(4.6 * len(panels), 4.2))
    axes = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axis, (title, (cdr, ages, reads)) in zip(axes, panels, strict=True):
        cdr, ages, reads = (np.asarray(values, dtype=np.float64) for values in (cdr, ages, reads))
        for value in np.unique(cdr):
            chosen = cdr == value
            axis.scatter(
                ages[chosen],
                reads[chosen] - ages[chosen],
                s=12,
                alpha=0.6,
                color=colours[value],
                label=f"CDR {value:g}",
            )
        effect = apparent_age_effect(cdr, ages, reads)
        axis.axhline(0.0, color="grey", lw=1)
        axis.set(
            xlabel="age (years)",
            title=f"{title}\n{effect['years_per_cdr']:+.1f} ± {effect['standard_error']:.1f} "
            "years per CDR point",
        )
        axis.legend(fontsize=8)
    axes[0].set_ylabel("read age − age (years)")
    figure.suptitle("obedience: CDR, read as ageing", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)


def plot_volume_cuts(sets: dict[str, np.ndarray], path: str | Path, shown: int = 4) -> Path:
    """PNG of the middle coronal and sagittal cut (`orthogonal_cuts` at 0.5) of the first
    `shown` volumes of each set: two rows per set ({name: volumes [V, D, S, S] in [0, 1]}, in
    its order), one column per volume, superior at the top, each stretched to a square as the
    two-sample test of `evaluation.judge_volumes` sees it: whether the slices make one brain."""
    from matplotlib.figure import Figure

    columns = min(shown, min(len(volumes) for volumes in sets.values()))
    figure = Figure(figsize=(1.6 * columns + 1.2, 3.2 * len(sets)))
    axes = figure.subplots(2 * len(sets), columns, squeeze=False)
    for row, (name, volumes) in enumerate(sets.items()):
        volumes = _as_volumes(volumes)[:columns]
        cuts = orthogonal_cuts(volumes, volumes.shape[2], fractions=(0.5,))
        for offset, plane in enumerate(("coronal", "sagittal")):
            for column in range(columns):
                axis = axes[2 * row + offset, column]
                axis.imshow(cuts[plane][column, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
                axis.set_xticks([])
                axis.set_yticks([])
            axes[2 * row + offset, 0].set_ylabel(f"{name}\n{plane}", fontsize=8)
    figure.suptitle("middle coronal and sagittal cuts, superior at the top", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
