"""The loaded data's types, the split names, and the OASIS PNG tree's folder names.

`SPLITS` and `png_folder` are the one definition of the split names and of the folders
keras_png_slices_{split} (images) and keras_png_slices_seg_{split} (tissue masks) that the PNG
tree loader reads and the demo builder writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MASK_GREY_STEP",
    "SPLITS",
    "BrainSlices",
    "DataError",
    "SliceSet",
    "capped_indices",
    "make_slice_set",
    "png_folder",
    "slice_sets_from",
]

SPLITS = ("train", "validate", "test")
MASK_GREY_STEP = 85  # mask PNG grey value = 85 * tissue class 0..3


def png_folder(split: str, masks: bool = False) -> str:
    """The folder name of a split in the OASIS PNG tree: "keras_png_slices_train", or with
    `masks` "keras_png_slices_seg_train"."""
    return f"keras_png_slices_{'seg_' if masks else ''}{split}"


class DataError(ValueError):
    """Input data that cannot be loaded; the message names the file or folder and the fault."""


@dataclass(frozen=True)
class SliceSet:
    """The slices of one split.

    images: (N, S, S) uint8 in 0..255; subject_ids: (N,) str; slice_indices: (N,) int32, the
    slice's position within its subject; masks: (N, S, S) uint8 tissue classes 0..3 or None;
    labels: (N,) int64 class labels or None.
    """

    images: np.ndarray
    subject_ids: np.ndarray
    slice_indices: np.ndarray
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def float_images(self) -> np.ndarray:
        """(N, S, S, 1) float32 in [0, 1]: images / 255 with a channel axis."""
        return (self.images.astype(np.float32) / 255.0)[..., np.newaxis]

    def relative_positions(self) -> np.ndarray | None:
        """(N,) float64 in [0, 1]: each slice's level in its subject's volume, slice_index / the
        subject's highest slice_index here (0 = lowest slice, 1 = highest); None when a subject
        has a single slice (a plain image, a MedMNIST image), whose level is unknown."""
        subjects, inverse = np.unique(self.subject_ids, return_inverse=True)
        highest = np.zeros(len(subjects), dtype=np.int64)
        np.maximum.at(highest, inverse, self.slice_indices)
        if len(self) == 0 or highest.min() == 0:
            return None
        return self.slice_indices / highest[inverse].astype(np.float64)


def capped_indices(count: int, cap: int, seed: int) -> np.ndarray:
    """All of range(count) if it has at most `cap` items, else `cap` of them drawn without
    replacement with `seed`; sorted, so the rows keep their order."""
    if count <= cap:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=cap, replace=False))


@dataclass(frozen=True)
class BrainSlices:
    """Everything `load_slices` found: the splits, OASIS demographics and the problems met.

    demographics maps a subject id to {"age", "sex", "cdr", "mmse"} (float, "M"/"F", float,
    float; None where the table is blank or lacks the column); it is {} without a table.
    """

    source: Path
    format: str
    splits: dict[str, SliceSet]
    demographics: dict[str, dict]
    problems: list[str]


def make_slice_set(
    images: Sequence[np.ndarray],
    subject_ids: Sequence[str],
    slice_indices: Sequence[int],
    size: int,
    masks: Sequence[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> SliceSet:
    """A `SliceSet` from lists of (S, S) arrays; an empty list gives (0, S, S) arrays."""

    def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(arrays) if len(arrays) else np.zeros((0, size, size), dtype=np.uint8)

    return SliceSet(
        images=stack(images),
        subject_ids=np.asarray(subject_ids, dtype=str),
        slice_indices=np.asarray(slice_indices, dtype=np.int32),
        masks=None if masks is None else stack(masks),
        labels=labels,
    )


def slice_sets_from(
    records: Iterable[tuple[str, str, int, np.ndarray]], size: int
) -> dict[str, SliceSet]:
    """A `SliceSet` per split from (split, subject id, slice index, (S, S) image) records."""
    gathered: dict[str, tuple[list, list, list]] = {split: ([], [], []) for split in SPLITS}
    for split, subject_id, slice_index, image in records:
        images, subject_ids, slice_indices = gathered[split]
        images.append(image)
        subject_ids.append(subject_id)
        slice_indices.append(slice_index)
    return {split: make_slice_set(*gathered[split], size) for split in SPLITS}
