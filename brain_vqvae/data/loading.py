"""`load_slices`: brain MRI slices from the forms users keep them in, as uint8 splits.

`load_slices(path)` finds the format itself (`discovery`) and returns a `BrainSlices`: per split
("train", "validate", "test") a `SliceSet` of (N, S, S) uint8 images (S = `image_size`) with the
subject id and slice position of every slice, tissue masks where the data has them, class
labels where it has them, demographics where an OASIS table is found, and every problem met on
the way. The formats are those of the README's "Data" section, described in full by the
modules that read them: `png_tree`, `volumes` (oasis_raw, nifti_folder), `npz`,
`image_folder`. Slices are shown in the neurological convention (anterior at the top, the
subject's left on the image's left; `geometry`). Data without its own splits is split by person
(`splits`). Decoded arrays are cached (`cache`); nothing is ever written into the data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hyperparameters import Hyperparameters

from .cache import load_cached
from .demographics import join_demographics, read_demographics_tables
from .discovery import discover
from .image_folder import IMAGE_SUFFIXES, load_image_slice
from .slices import BrainSlices, DataError
from .sources import Options
from .volumes import VOLUME_SUFFIXES, load_volume_slices

__all__ = ["load_file_slices", "load_slices"]

_DEFAULTS = Hyperparameters()


def load_slices(
    path: str | os.PathLike,
    image_size: int = _DEFAULTS.image_size,
    slices_per_volume: int = _DEFAULTS.slices_per_volume,
    seed: int = _DEFAULTS.seed,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    demographics_csv: str | os.PathLike | None = None,
) -> BrainSlices:
    """Load the brain slices at `path` (any format in the module docstring) as uint8 splits.

    A file that cannot be used raises `DataError`, or with `skip_bad` is left out and named in
    `problems`. Decoded arrays come from, or go to, the cache in `cache_dir`; demographics come
    from `demographics_csv` or an OASIS table found in or above the data folder.
    """
    if image_size < 1 or slices_per_volume < 1:
        raise ValueError(
            f"image_size and slices_per_volume must be at least 1, "
            f"got {image_size} and {slices_per_volume}"
        )
    options = Options(image_size, slices_per_volume, seed, skip_bad)
    found = discover(Path(path).expanduser().absolute())
    problems = list(found.notes)
    if found.faults and not skip_bad:
        raise DataError(found.faults[0])
    problems += [f"skipped {fault}" for fault in found.faults]
    splits, load_problems = load_cached(found, options, cache_dir)
    problems += load_problems
    if not any(len(slice_set) for slice_set in splits.values()):
        first = f"; first problem: {problems[0]}" if problems else ""
        raise DataError(f"{found.root}: no usable slices{first}")
    table = read_demographics_tables(found.root, demographics_csv, problems)
    demographics = join_demographics(table, splits, problems)
    return BrainSlices(found.root, found.format, splits, demographics, problems)


def load_file_slices(
    path: str | os.PathLike,
    image_size: int = _DEFAULTS.image_size,
    slices_per_volume: int = _DEFAULTS.slices_per_volume,
) -> np.ndarray:
    """The slices of one file, read as `load_slices` reads such files: (M, S, S) uint8. A
    PNG/JPEG slice gives one slice (`load_image_slice`); a volume (.nii, .nii.gz, .mgz,
    Analyze .hdr + .img) gives `slices_per_volume` axial slices over the brain's extent,
    inferior to superior, or one for a single plane (`load_volume_slices`). A file of another
    type, a missing file or one that cannot be decoded raises `DataError` naming it."""
    path = Path(path).expanduser()
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return load_volume_slices(path, image_size, slices_per_volume)[0]
    if not name.endswith(IMAGE_SUFFIXES):
        expected = ", ".join((*IMAGE_SUFFIXES, *VOLUME_SUFFIXES))
        raise DataError(f"{path}: cannot read this type of file; expected one of {expected}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return load_image_slice(path, image_size)[None]
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from None
