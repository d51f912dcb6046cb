"""The preprocessed OASIS PNG slices (format "png_tree").

Folders keras_png_slices_{train,validate,test} of 8-bit `case_NNN_slice_S.nii.png` (subject
"NNN", slice S; sorted numerically) and, optionally, keras_png_slices_seg_{train,validate,test}
of `seg_NNN_slice_S.nii.png` masks whose grey values {0, 85, 170, 255} are the tissue classes
value // 85 (background, CSF, grey matter, white matter). The six folders may sit in the given
folder or under keras_png_slices_data/ once or twice. The tree's own splits are kept.

No training stage needs the masks, so they never stop a load: a mask with no image is a fault
(an error unless `skip_bad`), but images with no mask are all loaded, named in the problems,
and their split is loaded without masks (`SliceSet.masks` is None), since a mask array must
have one mask per image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .decoding import decode_all, read_greyscale
from .geometry import fit_square
from .slices import MASK_GREY_STEP, SPLITS, DataError, SliceSet, make_slice_set, png_folder
from .sources import Found, Options, visible_files

__all__ = ["find_png_tree"]

_PNG_SLICE_NAME = re.compile(r"(case|seg)_(\d+)_slice_(\d+)(?:\.nii)?\.png", re.IGNORECASE)


@dataclass(frozen=True)
class _PngSlice:
    image: Path
    mask: Path | None
    case: str
    slice_index: int


def find_png_tree(path: Path) -> Found | None:
    """The PNG tree in `path`, or under keras_png_slices_data/ once or twice; None if absent."""
    nested_once = path / "keras_png_slices_data"
    for root in (path, nested_once, nested_once / "keras_png_slices_data"):
        if any(
            (root / png_folder(split, masks)).is_dir()
            for split in SPLITS
            for masks in (False, True)
        ):
            return _list_png_tree(root)
    return None


def _list_png_tree(root: Path) -> Found:
    entries, inputs, faults, notes = {}, [], [], []
    for split in SPLITS:
        images = _named_slices(root / png_folder(split), "case", notes)
        masks = _named_slices(root / png_folder(split, masks=True), "seg", notes)
        inputs += [*images.values(), *masks.values()]
        entries[split] = _pair_png_slices(split, images, masks, faults, notes)
    return Found(
        "png_tree",
        root,
        tuple(inputs),
        partial(_load_png_tree, entries),
        tuple(faults),
        tuple(notes),
    )


def _named_slices(folder: Path, prefix: str, notes: list[str]) -> dict[tuple[str, int], Path]:
    """{(case, slice): file} for the `prefix`_NNN_slice_S.nii.png files in `folder`."""
    if not folder.is_dir():
        return {}
    slices = {}
    for file in visible_files(folder):
        match = _PNG_SLICE_NAME.fullmatch(file.name)
        if match is None or match.group(1).lower() != prefix:
            notes.append(f"ignored {file}: not a {prefix}_NNN_slice_S.nii.png name")
            continue
        slices[(match.group(2), int(match.group(3)))] = file
    return slices


def _pair_png_slices(
    split: str,
    images: dict[tuple[str, int], Path],
    masks: dict[tuple[str, int], Path],
    faults: list[str],
    notes: list[str],
) -> list[_PngSlice]:
    """Image/mask pairs sorted by (case, slice) as numbers.

    A mask with no image is a fault. If any image has no mask, each such image is named in
    `notes` and the split's pairs carry no masks at all.
    """
    for key in sorted(masks.keys() - images.keys()):
        expected = masks[key].name.replace("seg_", "case_", 1)
        faults.append(f"{masks[key]}: mask with no image (expected {expected} beside the images)")
    keys = sorted(images, key=lambda key: (int(key[0]), key))
    unmasked = [key for key in keys if key not in masks]
    if masks and unmasked:
        for key in unmasked:
            expected = images[key].name.replace("case_", "seg_", 1)
            notes.append(
                f"{images[key]}: image with no mask (expected {expected} beside the masks); "
                f"the {split} split is loaded without masks"
            )
        masks = {}
    return [_PngSlice(images[key], masks.get(key), *key) for key in keys]


def _load_png_tree(
    entries: dict[str, list[_PngSlice]], options: Options, problems: list[str]
) -> dict[str, SliceSet]:
    decode = partial(_decode_png_pair, size=options.image_size)
    splits = {}
    for split in SPLITS:
        pairs = entries[split]
        decoded = decode_all(decode, pairs, options.skip_bad, problems)
        kept = [
            (pair, *pictures) for pair, pictures in zip(pairs, decoded, strict=True) if pictures
        ]
        has_masks = any(pair.mask is not None for pair in pairs)
        splits[split] = make_slice_set(
            [image for _, image, _ in kept],
            [pair.case for pair, _, _ in kept],
            [pair.slice_index for pair, _, _ in kept],
            options.image_size,
            masks=[mask for _, _, mask in kept] if has_masks else None,
        )
    return splits


def _decode_png_pair(pair: _PngSlice, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(S, S) uint8 image and (S, S) uint8 class mask (or None) of one PNG-tree slice."""
    image = read_greyscale(pair.image)
    if pair.mask is None:
        return fit_square(image, size, Image.Resampling.LANCZOS), None
    classes = read_greyscale(pair.mask) // MASK_GREY_STEP
    if classes.shape != image.shape:
        raise DataError(
            f"{pair.mask}: mask is {classes.shape[1]}x{classes.shape[0]} but its image "
            f"{pair.image.name} is {image.shape[1]}x{image.shape[0]}"
        )
    return (
        fit_square(image, size, Image.Resampling.LANCZOS),
        fit_square(classes, size, Image.Resampling.NEAREST),
    )
