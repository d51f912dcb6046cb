"""MedMNIST-style `.npz` archives (format "npz").

Give the file: `train_images`, `val_images`, `test_images` of shape (N, H, W) or (N, H, W, 1),
uint8 or float in [0, 1], with optional `*_labels`. Each image is its own subject "npz_000123"
(numbered across the splits), slice 0; "val" becomes "validate".
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .decoding import GREY_TOLERANCE, decode_all
from .geometry import fit_square
from .slices import DataError, SliceSet, make_slice_set
from .sources import Found, Options

__all__ = ["find_npz"]

_NPZ_KEYS = {"train": "train", "validate": "val", "test": "test"}


def find_npz(path: Path) -> Found:
    """The `.npz` file `path` as a data set (its keys are checked when it loads)."""
    return Found("npz", path, (path,), partial(_load_npz, path))


def _load_npz(path: Path, options: Options, problems: list[str]) -> dict[str, SliceSet]:
    arrays = _read_npz(path)
    present = [key for key in _NPZ_KEYS.values() if f"{key}_images" in arrays]
    if not present:
        wanted = ", ".join(f"{key}_images" for key in _NPZ_KEYS.values())
        raise DataError(f"{path}: none of the keys {wanted} (it has: {', '.join(arrays)})")
    splits, first_subject = {}, 0
    for split, key in _NPZ_KEYS.items():
        if key not in present:
            splits[split] = make_slice_set([], [], [], options.image_size)
            continue
        pixels = _npz_uint8_images(arrays[f"{key}_images"], path, f"{key}_images")
        labels = _npz_labels(arrays.get(f"{key}_labels"), len(pixels), path, key, problems)
        resize = partial(fit_square, size=options.image_size)
        images = decode_all(resize, list(pixels), skip_bad=False, problems=problems)
        subject_ids = [f"npz_{first_subject + index:06d}" for index in range(len(pixels))]
        first_subject += len(pixels)
        splits[split] = make_slice_set(
            images, subject_ids, [0] * len(pixels), options.image_size, labels=labels
        )
    return splits


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as error:  # BadZipFile, pickled objects, truncation, ...
        raise DataError(f"{path}: cannot read .npz ({type(error).__name__}: {error})") from None


def _npz_uint8_images(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(N, H, W) uint8 from (N, H, W[, 1]) uint8, or float in [0, 1] (x 255) or [0, 255]."""
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        if np.ptp(array[..., :3].astype(np.float32), axis=-1).max(initial=0) > GREY_TOLERANCE:
            raise DataError(f"{path}: {key} is not greyscale (its colour channels differ)")
        array = array[..., :1]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(
            f"{path}: {key} has shape {array.shape}; expected (N, H, W) or (N, H, W, 1)"
        )
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise DataError(f"{path}: {key} must hold finite numbers, got dtype {array.dtype}")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        array = array * 255.0
    elif low < 0.0 or high > 255.0:
        raise DataError(
            f"{path}: {key} values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]"
        )
    return np.rint(array).astype(np.uint8)


def _npz_labels(
    labels: np.ndarray | None, count: int, path: Path, key: str, problems: list[str]
) -> np.ndarray | None:
    """(N,) int64 labels from (N,) or (N, 1); multi-label (N, K) tables are left out."""
    if labels is None:
        return None
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        problems.append(f"{path}: {key}_labels has shape {labels.shape}; only (N,) labels are kept")
        return None
    if len(labels) != count:
        raise DataError(f"{path}: {key}_labels has {len(labels)} entries for {count} images")
    return labels.astype(np.int64)
