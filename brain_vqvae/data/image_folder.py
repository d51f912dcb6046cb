"""A plain folder of greyscale slices (format "image_folder").

`*.png` / `*.jpg` / `*.jpeg` files directly in the folder, 8-bit or deeper grey (see
`decoding.read_greyscale`); each file is one slice of its own subject, id = file stem, and the
subjects are split by person (`splits`). Each image is padded to a square with 0 and resized.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .decoding import decode_all, read_greyscale
from .geometry import fit_square
from .slices import SliceSet, slice_sets_from
from .sources import Found, Options, natural_key, visible_files
from .splits import split_subjects

__all__ = ["IMAGE_SUFFIXES", "find_image_folder", "load_image_slice"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_image_folder(path: Path) -> Found | None:
    """The image files directly in `path`, in natural order; None if there are none."""
    files = [file for file in visible_files(path) if file.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        return None
    files.sort(key=lambda file: natural_key(file.name))
    return Found("image_folder", path, tuple(files), partial(_load_image_folder, files))


def _load_image_folder(
    files: list[Path], options: Options, problems: list[str]
) -> dict[str, SliceSet]:
    split_of = split_subjects([file.stem for file in files], options.seed)
    decode = partial(load_image_slice, image_size=options.image_size)
    decoded = decode_all(decode, files, options.skip_bad, problems)
    records = (
        (split_of[file.stem], file.stem, 0, image)
        for file, image in zip(files, decoded, strict=True)
        if image is not None
    )
    return slice_sets_from(records, options.image_size)


def load_image_slice(path: Path, image_size: int) -> np.ndarray:
    """One greyscale image file as an (S, S) uint8 slice, S = `image_size`: padded to a square
    with 0 and resized, as every slice of an image folder is."""
    return fit_square(read_greyscale(path), image_size)
