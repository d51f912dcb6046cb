"""Brain MRI slices from the forms users keep them in, as uint8 arrays split by subject.

`load_slices(path)` finds the format itself and returns a `BrainSlices`: per split ("train",
"validate", "test") a `SliceSet` of (N, S, S) uint8 images (S = `image_size`) with the subject
id and slice position of every slice, tissue masks where the data has them, class labels where
it has them, demographics where an OASIS table is found, and every problem met on the way.
Formats, tried in this order (the data layouts are described in shared/DATA.md):

png_tree
    The preprocessed OASIS PNG slices: folders keras_png_slices_{train,validate,test} of 8-bit
    `case_NNN_slice_S.nii.png` (subject "NNN", slice S; sorted numerically) and, optionally,
    keras_png_slices_seg_{train,validate,test} of `seg_NNN_slice_S.nii.png` masks whose grey
    values {0, 85, 170, 255} are the tissue classes value // 85 (background, CSF, grey matter,
    white matter). The six folders may sit in the given folder or under keras_png_slices_data/
    once or twice. The tree's own splits are kept.
oasis_raw
    The raw OASIS-1 release: disc*/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/*_masked_gfc.hdr/.img,
    skull-stripped atlas-registered 16-bit big-endian Analyze of shape (176, 208, 176, 1); the
    given folder may also be one disc or a folder of subject folders. Also the OASIS-2 layout
    OAS2_xxxx_MRn/RAW/mpr-1.nifti.hdr/.img (raw scans with skull). Subject id "OAS1_0001_MR1".
nifti_folder
    `*.nii`, `*.nii.gz`, FreeSurfer `*.mgz` or Analyze `*.hdr`/`*.img` volumes anywhere under the
    folder; the subject id is the path below the folder without the suffix (the file stem for a
    flat folder).
npz
    A MedMNIST-style `.npz` (give the file): `train_images`, `val_images`, `test_images` of shape
    (N, H, W) or (N, H, W, 1), uint8 or float in [0, 1], with optional `*_labels`. Each image is
    its own subject "npz_000123" (numbered across the splits), slice 0; "val" becomes "validate".
image_folder
    Greyscale `*.png` / `*.jpg` / `*.jpeg` slices directly in the folder; subject id = file stem.

Volumes are reoriented to RAS+ with `nibabel.as_closest_canonical` (a plain Analyze image gets
the axes its header's `orient` field names, transverse LAS by default), so the third axis is
axial. The foreground is the non-zero voxels of the skull-stripped OASIS-1 volumes and of any
volume with a masked background (at least MASKED_BACKGROUND, 25 %, of its voxels exactly at its
minimum: skull-stripped or zero-padded scans, whose dark CSF must not be cut away), and the
voxels above Otsu's threshold otherwise (scans with noisy air around the head).
`slices_per_volume` axial planes are spread evenly from the plane with AXIAL_TRIM (3 %) of the
foreground below it to the one with 3 % above it (the brain without the thin brainstem and
vertex ends); every slice is cropped to the volume's in-plane foreground box plus a 5 % margin,
so the brain fills the picture whatever the field of view. Intensities map linearly to 0..255
(clipped) from the background value of a masked volume, or the 0.5th percentile of the
foreground voxels in noisy air, to their 99.5th percentile, and each slice is rotated to show
anterior at the top and the subject's left on the left, with square pixels.

Volumes, npz images and plain image slices are split by person: people are ordered by a SHA-256
hash of (seed, person) and dealt out 5 % test, 10 % validate, the rest train (at least one each
from three people on). A person is the BIDS "sub-xx" label in a subject id if it has one, else
the id without an OASIS "_MRn" session suffix, so repeat scans never straddle two splits.

Every image is padded to a square with 0 (keeping its aspect ratio) and resized to S x S with
Lanczos; masks are resized with nearest neighbour. Files are decoded on all cores (threads:
as fast as processes here, and safe after TensorFlow has started). The decoded arrays are cached
as one uncompressed `.npz` under `cache_dir` (default `$BRAIN_VQVAE_CACHE` or
~/.cache/brain-vqvae), keyed by this module's code, the source folder, format, options and the
(relative path, size, mtime_ns) of every input file, so a second load takes seconds and touching
any input reloads.
Nothing is ever written into the data folder.

    slices = load_slices("keras_png_slices_data", image_size=128)
    train = make_tf_dataset(slices.splits["train"], batch_size=32, shuffle=True, augment=True)

Command line: `python dataset.py summary PATH [--json]` describes what loads from PATH;
`python dataset.py demo --out DIR` builds the synthetic demo set (demo_data.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from PIL import Image

from hyperparameters import Hyperparameters

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "validate", "test")
SPLIT_FRACTIONS = {"validate": 0.10, "test": 0.05}  # of the people; train takes the rest
MASK_GREY_STEP = 85  # mask grey value // 85 = tissue class 0..3
AXIAL_TRIM = 0.03  # fraction of the foreground voxels below the first / above the last slice
BOX_TRIM = 0.002  # fraction of the foreground voxels left outside the in-plane crop per side
BOX_MARGIN = 0.05  # of the crop's size, added around it on each side
MASKED_BACKGROUND = 0.25  # share of voxels at the minimum that marks a masked background
INTENSITY_PERCENTILES = (0.5, 99.5)  # of foreground voxels, mapped to 0 and 255
GREY_TOLERANCE = 2  # grey levels by which the channels of a "greyscale" colour file may differ

FORMAT_EXPECTATIONS = {
    "png_tree": "folders keras_png_slices_{train,validate,test} of case_NNN_slice_S.nii.png "
    "(masks in keras_png_slices_seg_*), here or under keras_png_slices_data/ once or twice",
    "oasis_raw": "OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/*_masked_gfc.hdr + .img (OASIS-1) or "
    "OAS2_xxxx_MRn/RAW/mpr-1.nifti.hdr + .img (OASIS-2), here or one or two folders down "
    "(disc*/)",
    "nifti_folder": "*.nii, *.nii.gz, *.mgz or Analyze *.hdr + *.img volumes, here or below",
    "npz": "a .npz file (give the file itself) with train_images / val_images / test_images",
    "image_folder": "greyscale *.png, *.jpg or *.jpeg slices directly in the folder",
}

_DEFAULTS = Hyperparameters()
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
_PNG_SLICE_NAME = re.compile(r"(case|seg)_(\d+)_slice_(\d+)(?:\.nii)?\.png", re.IGNORECASE)
_OASIS_LAYOUTS = (  # (glob below a subject folder's parent, volume is skull-stripped)
    ("OAS1_*_MR*/PROCESSED/MPRAGE/T88_111/*_masked_gfc.hdr", True),
    ("OAS2_*_MR*/RAW/mpr-1.nifti.hdr", False),
)
_OASIS_SESSION = re.compile(r"OAS[12]_\d+_MR\d+")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".hdr")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = frozenset({"L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})  # PIL image modes
_NPZ_KEYS = {"train": "train", "validate": "val", "test": "test"}
# Analyze 7.5 `orient` codes -> the direction each voxel axis runs towards (nibabel axis codes).
_ANALYZE_AXES = {0: "LAS", 1: "LSA", 2: "ASL", 3: "LPS", 4: "LIA", 5: "ASR"}
_DEMOGRAPHICS_FILES = ("oasis_cross-sectional.csv", "oasis_longitudinal.csv")
_DEMOGRAPHICS_SEARCH_DEPTH = 3  # folders above the data in which to look for the tables
_DEMOGRAPHIC_COLUMNS = {"age": "Age", "sex": "M/F", "cdr": "CDR", "mmse": "MMSE"}
_SESSION_ID_COLUMNS = ("ID", "MRI ID")  # cross-sectional, longitudinal
_MISSING_VALUES = frozenset({"", "N/A", "NA", "NaN"})
_DECODE_CHUNK = 64  # at most this many files per thread task


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


@dataclass(frozen=True)
class BrainSlices:
    """Everything `load_slices` found: the splits, OASIS demographics and the problems met.

    demographics maps a subject id to {"age", "sex", "cdr", "mmse"} (float, "M"/"F", float,
    float; None where the table is blank); it is {} without a table.
    """

    source: Path
    format: str
    splits: dict[str, SliceSet]
    demographics: dict[str, dict]
    problems: list[str]


@dataclass(frozen=True)
class _Options:
    image_size: int
    slices_per_volume: int
    seed: int
    skip_bad: bool


@dataclass(frozen=True)
class _Found:
    """A data set located on disk, before anything is decoded."""

    format: str
    root: Path  # the folder (or .npz file) holding the data
    inputs: tuple[Path, ...]  # every file the load reads; their stats key the cache
    load: Callable[[_Options, list[str]], dict[str, SliceSet]]  # appends to the problems
    faults: tuple[str, ...] = ()  # files that cannot be used: an error unless skip_bad
    notes: tuple[str, ...] = ()  # files ignored on purpose, reported as problems


@dataclass(frozen=True)
class _PngSlice:
    image: Path
    mask: Path | None
    case: str
    slice_index: int


@dataclass(frozen=True)
class _VolumeFile:
    path: Path
    subject_id: str
    skull_stripped: bool  # foreground = non-zero voxels, else voxels above Otsu's threshold


# ----------------------------------------------------------------------------- public API


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
    options = _Options(image_size, slices_per_volume, seed, skip_bad)
    found = _discover(Path(path).expanduser().absolute())
    problems = list(found.notes)
    if found.faults and not skip_bad:
        raise DataError(found.faults[0])
    problems += [f"skipped {fault}" for fault in found.faults]
    splits, load_problems = _load_cached(found, options, cache_dir)
    problems += load_problems
    if not any(len(slice_set) for slice_set in splits.values()):
        first = f"; first problem: {problems[0]}" if problems else ""
        raise DataError(f"{found.root}: no usable slices{first}")
    table = _read_demographics_tables(found.root, demographics_csv, problems)
    demographics = _join_demographics(table, splits, problems)
    return BrainSlices(found.root, found.format, splits, demographics, problems)


def make_tf_dataset(
    slice_set: SliceSet,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of float32 (B, S, S, 1) batches in [0, 1] from `slice_set`.

    Shuffling is seeded and different in every epoch. With `augment`, each image gets a random
    left-right flip, rotation (+-10 degrees) and zoom (+-10 %) about its centre (bilinear, 0 fill),
    then intensity x -> clip(gain * x**gamma, 0, 1) with gain in [0.9, 1.1] and gamma in
    [0.8, 1.25]; the draws are seeded by `seed` and change from epoch to epoch.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(slice_set) == 0:
        raise ValueError("slice_set is empty: there is nothing to make a dataset from")
    dataset = tf.data.Dataset.from_tensor_slices(slice_set.images)
    if shuffle:
        dataset = dataset.shuffle(len(slice_set), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augment:
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, batch_seeds).map(
            _augment_batch, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = dataset.map(_to_unit_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------ format discovery


def _discover(path: Path) -> _Found:
    """Which format `path` holds, and its files; `DataError` when it holds none."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _find_npz(path)
        raise DataError(
            f"{path}: a data file must be a MedMNIST-style .npz; "
            "give the folder for the other formats"
        )
    if not any(not _is_stray(entry) for entry in path.iterdir()):
        raise DataError(f"{path}: folder is empty")
    for find in (_find_png_tree, _find_oasis_raw, _find_volume_folder, _find_image_folder):
        found = find(path)
        if found is not None:
            return found
    looked_for = "\n".join(f"  {name}: {what}" for name, what in FORMAT_EXPECTATIONS.items())
    raise DataError(f"{path}: no known data format found. Looked for:\n{looked_for}")


def _is_stray(path: Path) -> bool:
    """Hidden files (.DS_Store, ._x) and system files (Thumbs.db) that are never data."""
    return path.name.startswith(".") or path.name.lower() in _SYSTEM_FILES


def _visible_files(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_file() and not _is_stray(entry))


def _natural_key(text: str) -> list:
    """Sort key that orders digit runs by value: "slice_2" before "slice_10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _png_folder(root: Path, split: str, masks: bool) -> Path:
    return root / f"keras_png_slices_{'seg_' if masks else ''}{split}"


def _find_png_tree(path: Path) -> _Found | None:
    nested_once = path / "keras_png_slices_data"
    for root in (path, nested_once, nested_once / "keras_png_slices_data"):
        if any(
            _png_folder(root, split, masks).is_dir() for split in SPLITS for masks in (False, True)
        ):
            return _list_png_tree(root)
    return None


def _list_png_tree(root: Path) -> _Found:
    entries, inputs, faults, notes = {}, [], [], []
    for split in SPLITS:
        images = _named_slices(_png_folder(root, split, masks=False), "case", notes)
        masks = _named_slices(_png_folder(root, split, masks=True), "seg", notes)
        inputs += [*images.values(), *masks.values()]
        entries[split] = _pair_png_slices(images, masks, faults)
    return _Found(
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
    for file in _visible_files(folder):
        match = _PNG_SLICE_NAME.fullmatch(file.name)
        if match is None or match.group(1).lower() != prefix:
            notes.append(f"ignored {file}: not a {prefix}_NNN_slice_S.nii.png name")
            continue
        slices[(match.group(2), int(match.group(3)))] = file
    return slices


def _pair_png_slices(
    images: dict[tuple[str, int], Path], masks: dict[tuple[str, int], Path], faults: list[str]
) -> list[_PngSlice]:
    """Image/mask pairs sorted by (case, slice) as numbers; unpaired files become faults."""
    for key in sorted(masks.keys() - images.keys()):
        expected = masks[key].name.replace("seg_", "case_", 1)
        faults.append(f"{masks[key]}: mask with no image (expected {expected} beside the images)")
    pairs = []
    for case, slice_index in sorted(images, key=lambda key: (int(key[0]), key)):
        image, mask = images[(case, slice_index)], masks.get((case, slice_index))
        if masks and mask is None:
            expected = image.name.replace("case_", "seg_", 1)
            faults.append(f"{image}: image with no mask (expected {expected} beside the masks)")
            continue
        pairs.append(_PngSlice(image, mask, case, slice_index))
    return pairs


def _find_oasis_raw(path: Path) -> _Found | None:
    for pattern, skull_stripped in _OASIS_LAYOUTS:
        headers = sorted(
            {file for depth in ("", "*/", "*/*/") for file in path.glob(depth + pattern)}
        )
        if headers:
            volumes = [_VolumeFile(h, _oasis_session(h), skull_stripped) for h in headers]
            return _volume_set("oasis_raw", path, volumes)
    return None


def _oasis_session(header: Path) -> str:
    """The session a volume belongs to, from the folder it sits in: "OAS1_0001_MR1"."""
    sessions = (_OASIS_SESSION.match(part) for part in reversed(header.parent.parts))
    return next(session.group(0) for session in sessions if session)


def _find_volume_folder(path: Path) -> _Found | None:
    files = sorted(
        (
            file
            for file in path.rglob("*")
            if file.is_file()
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
        ),
        key=lambda file: _natural_key(file.relative_to(path).as_posix()),
    )
    volumes = [
        _VolumeFile(file, _volume_subject_id(file, path), skull_stripped=False)
        for file in files
        if _volume_suffix(file)
    ]
    orphans = [
        f"{file}: Analyze image with no {file.with_suffix('.hdr').name} header beside it"
        for file in files
        if file.suffix == ".img" and not file.with_suffix(".hdr").is_file()
    ]
    if not volumes and not orphans:
        return None
    return _volume_set("nifti_folder", path, volumes, orphans)


def _volume_suffix(file: Path) -> str:
    name = file.name.lower()
    return next((suffix for suffix in _VOLUME_SUFFIXES if name.endswith(suffix)), "")


def _volume_subject_id(file: Path, root: Path) -> str:
    """Path below `root` without the volume suffix: "sub-01/anat/sub-01_T1w", "brain01"."""
    relative = file.relative_to(root).as_posix()
    return relative[: len(relative) - len(_volume_suffix(file))]


def _volume_set(
    format_name: str, root: Path, volumes: list[_VolumeFile], faults: Iterable[str] = ()
) -> _Found:
    """A `_Found` for volumes; an Analyze header without its .img beside it is a fault."""
    usable, inputs, faults = [], [], list(faults)
    for volume in volumes:
        if volume.path.suffix == ".hdr":
            image_file = volume.path.with_suffix(".img")
            if not image_file.is_file():
                faults.append(f"{volume.path}: Analyze header with no {image_file.name} beside it")
                continue
            inputs.append(image_file)
        inputs.append(volume.path)
        usable.append(volume)
    return _Found(format_name, root, tuple(inputs), partial(_load_volumes, usable), tuple(faults))


def _find_npz(path: Path) -> _Found:
    return _Found("npz", path, (path,), partial(_load_npz, path))


def _find_image_folder(path: Path) -> _Found | None:
    files = [file for file in _visible_files(path) if file.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        return None
    files.sort(key=lambda file: _natural_key(file.name))
    return _Found("image_folder", path, tuple(files), partial(_load_image_folder, files))


# -------------------------------------------------------------------------- format loading


def _load_png_tree(
    entries: dict[str, list[_PngSlice]], options: _Options, problems: list[str]
) -> dict[str, SliceSet]:
    decode = partial(_decode_png_pair, size=options.image_size)
    splits = {}
    for split in SPLITS:
        pairs = entries[split]
        decoded = _decode_all(decode, pairs, options.skip_bad, problems)
        kept = [
            (pair, *pictures) for pair, pictures in zip(pairs, decoded, strict=True) if pictures
        ]
        has_masks = any(pair.mask is not None for pair in pairs)
        splits[split] = _make_slice_set(
            [image for _, image, _ in kept],
            [pair.case for pair, _, _ in kept],
            [pair.slice_index for pair, _, _ in kept],
            options.image_size,
            masks=[mask for _, _, mask in kept] if has_masks else None,
        )
    return splits


def _decode_png_pair(pair: _PngSlice, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(S, S) uint8 image and (S, S) uint8 class mask (or None) of one PNG-tree slice."""
    image = _read_greyscale(pair.image)
    if pair.mask is None:
        return _fit_square(image, size, Image.Resampling.LANCZOS), None
    classes = _read_greyscale(pair.mask) // MASK_GREY_STEP
    if classes.shape != image.shape:
        raise DataError(
            f"{pair.mask}: mask is {classes.shape[1]}x{classes.shape[0]} but its image "
            f"{pair.image.name} is {image.shape[1]}x{image.shape[0]}"
        )
    return (
        _fit_square(image, size, Image.Resampling.LANCZOS),
        _fit_square(classes, size, Image.Resampling.NEAREST),
    )


def _load_volumes(
    volumes: list[_VolumeFile], options: _Options, problems: list[str]
) -> dict[str, SliceSet]:
    split_of = _split_subjects([volume.subject_id for volume in volumes], options.seed)
    decoded = _decode_all(
        partial(_volume_slices, options=options), volumes, options.skip_bad, problems
    )
    records = (
        (split_of[volume.subject_id], volume.subject_id, slice_index, image)
        for volume, slices in zip(volumes, decoded, strict=True)
        if slices is not None
        for slice_index, image in enumerate(slices)
    )
    return _slice_sets_from(records, options.image_size)


def _volume_slices(volume: _VolumeFile, options: _Options) -> np.ndarray:
    """(slices_per_volume, S, S) uint8 axial slices of one volume, inferior to superior.

    Each slice is cropped to the volume's foreground box, so brains fill the picture whatever
    the scan's field of view.
    """
    voxels, spacing = _read_canonical_volume(volume.path)
    if not np.isfinite(voxels).all():
        raise DataError(f"{volume.path}: volume holds NaN or infinite values")
    if not voxels.any():
        raise DataError(f"{volume.path}: volume is all zeros")
    foreground, background = _foreground(voxels, volume.skull_stripped)
    if not foreground.any():
        raise DataError(f"{volume.path}: no voxel stands out from the background")
    planes = _spread_planes(foreground, options.slices_per_volume)
    columns, rows = _foreground_box(foreground)
    scaled = _robust_uint8(voxels[columns, rows][:, :, planes], voxels[foreground], background)
    return np.stack(
        [
            _fit_square(_upright(scaled[:, :, k], spacing), options.image_size)
            for k in range(len(planes))
        ]
    )


def _read_canonical_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(X, Y, Z) float32 voxels in RAS+ axis order and the voxel sizes in mm along X, Y, Z."""
    try:
        image = nib.load(path)
        if path.suffix == ".hdr":
            _check_analyze_size(image, path.with_suffix(".img"))
        canonical = nib.as_closest_canonical(_with_analyze_orientation(image))
        voxels = canonical.get_fdata(dtype=np.float32)
    except DataError:
        raise
    except Exception as error:  # readers fail in many ways on damaged files
        raise DataError(f"{path}: cannot read volume ({type(error).__name__}: {error})") from None
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {voxels.shape}")
    spacing = nib.affines.voxel_sizes(canonical.affine)
    return voxels, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _check_analyze_size(image: Any, image_file: Path) -> None:
    """`DataError` when an Analyze .img holds fewer bytes than its header describes."""
    header = image.header
    expected = int(
        header.get_data_offset()
        + np.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
    )
    actual = image_file.stat().st_size
    if actual < expected:
        raise DataError(
            f"{image_file}: truncated Analyze image: {actual} bytes, but its header describes "
            f"{expected} ({header.get_data_shape()} {header.get_data_dtype()})"
        )


def _with_analyze_orientation(image: Any) -> Any:
    """A plain Analyze image as NIfTI whose affine follows its header's `orient` field.

    Analyze 7.5 stores no affine; `orient` names the voxel order (0 transverse: x right to left,
    y posterior to anterior, z inferior to superior, i.e. LAS; 1 coronal; 2 sagittal; 3-5 the
    flipped variants). Images with a real affine (NIfTI, MGH) are returned unchanged.
    """
    if not isinstance(image, nib.AnalyzeImage) or isinstance(image, nib.Nifti1Pair):
        return image
    raw = bytes(image.header["orient"])[:1]
    code = int(raw) if raw.isdigit() else (raw[0] if raw else 0)  # some writers use a digit
    axes = _ANALYZE_AXES.get(code, "LAS")
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, (direction, size) in enumerate(zip(axes, image.header.get_zooms()[:3], strict=True)):
        world_axis = "RLAPSI".index(direction) // 2
        affine[world_axis, axis] = size if direction in "RAS" else -size
    return nib.Nifti1Image(image.dataobj, affine)


def _foreground(voxels: np.ndarray, skull_stripped: bool) -> tuple[np.ndarray, float | None]:
    """The foreground mask, and the background's value when the background is masked.

    Skull-stripped OASIS volumes: the non-zero voxels, background 0. Any other volume with a
    share MASKED_BACKGROUND or more of its voxels exactly at its minimum: the voxels above it,
    background that minimum. Otherwise (noisy air): the voxels above Otsu's threshold, None.
    """
    if skull_stripped:
        return voxels != 0, 0.0
    lowest = float(voxels.min())
    if np.mean(voxels == lowest) >= MASKED_BACKGROUND:
        return voxels > lowest, lowest
    return voxels > _otsu_threshold(voxels), None


def _otsu_threshold(voxels: np.ndarray) -> float:
    """Otsu's threshold of the voxel histogram (on every 2nd voxel along each axis)."""
    from skimage.filters import threshold_otsu  # 0.3 s to import: only volumes need it

    return float(threshold_otsu(voxels[::2, ::2, ::2]))


def _spread_planes(foreground: np.ndarray, count: int) -> np.ndarray:
    """`count` axial plane indices spread evenly over the foreground's extent.

    The extent runs from the plane below which AXIAL_TRIM of the foreground voxels lie to the
    plane above which AXIAL_TRIM lie: the brain without its thinnest ends (brainstem, vertex),
    unmoved by a few stray voxels. Planes repeat when the extent is shorter than `count`.
    """
    first, last = _mass_range(foreground.sum(axis=(0, 1)), AXIAL_TRIM)
    return np.rint(np.linspace(first, last, count)).astype(int)


def _foreground_box(foreground: np.ndarray) -> tuple[slice, slice]:
    """The (X, Y) crop holding the foreground of every plane (bar BOX_TRIM), plus BOX_MARGIN."""
    box = []
    for axis, other_axes in ((0, (1, 2)), (1, (0, 2))):
        first, last = _mass_range(foreground.sum(axis=other_axes), BOX_TRIM)
        margin = round(BOX_MARGIN * (last + 1 - first))
        box.append(slice(max(0, first - margin), min(foreground.shape[axis], last + 1 + margin)))
    return box[0], box[1]


def _mass_range(counts: np.ndarray, tail: float) -> tuple[int, int]:
    """First and last index of `counts` with at most `tail` of its total beyond each of them."""
    cumulative = np.cumsum(counts)
    first = np.searchsorted(cumulative, tail * cumulative[-1], side="right")
    last = np.searchsorted(cumulative, (1.0 - tail) * cumulative[-1], side="left")
    return int(first), int(last)


def _robust_uint8(
    values: np.ndarray, reference: np.ndarray, background: float | None = None
) -> np.ndarray:
    """uint8 255 * clip((values - low) / (high - low), 0, 1): high the 99.5th percentile of
    `reference` (the foreground), low the masked `background` value (so dark CSF stays above
    the black background) or, for noisy air, the foreground's 0.5th percentile."""
    low, high = np.percentile(reference, INTENSITY_PERCENTILES)
    if background is not None:
        low = background
    if high <= low:  # constant foreground: map the range between it and 0 instead
        low, high = min(0.0, float(reference.min())), max(0.0, float(reference.max()))
    return np.rint(np.clip((values - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def _upright(plane: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """An (X, Y) RAS+ plane as an (Y, X) picture: anterior at the top, left on the left.

    np.rot90 makes row i hold y = Y - 1 - i and column j hold x = j. Non-square voxels are
    resampled (Lanczos) so that a pixel is as wide as it is tall.
    """
    picture = np.rot90(plane)
    column_spacing, row_spacing = spacing[0], spacing[1]
    if np.isclose(column_spacing, row_spacing, rtol=0.01):
        return picture
    unit = min(column_spacing, row_spacing)
    width = round(picture.shape[1] * column_spacing / unit)
    height = round(picture.shape[0] * row_spacing / unit)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(picture)).resize(
            (width, height), Image.Resampling.LANCZOS
        )
    )


def _load_npz(path: Path, options: _Options, problems: list[str]) -> dict[str, SliceSet]:
    arrays = _read_npz(path)
    present = [key for key in _NPZ_KEYS.values() if f"{key}_images" in arrays]
    if not present:
        wanted = ", ".join(f"{key}_images" for key in _NPZ_KEYS.values())
        raise DataError(f"{path}: none of the keys {wanted} (it has: {', '.join(arrays)})")
    splits, first_subject = {}, 0
    for split, key in _NPZ_KEYS.items():
        if key not in present:
            splits[split] = _make_slice_set([], [], [], options.image_size)
            continue
        pixels = _npz_uint8_images(arrays[f"{key}_images"], path, f"{key}_images")
        labels = _npz_labels(arrays.get(f"{key}_labels"), len(pixels), path, key, problems)
        resize = partial(_fit_square, size=options.image_size)
        images = _decode_all(resize, list(pixels), skip_bad=False, problems=problems)
        subject_ids = [f"npz_{first_subject + index:06d}" for index in range(len(pixels))]
        first_subject += len(pixels)
        splits[split] = _make_slice_set(
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


def _load_image_folder(
    files: list[Path], options: _Options, problems: list[str]
) -> dict[str, SliceSet]:
    split_of = _split_subjects([file.stem for file in files], options.seed)
    decode = partial(_read_fitted, size=options.image_size)
    decoded = _decode_all(decode, files, options.skip_bad, problems)
    records = (
        (split_of[file.stem], file.stem, 0, image)
        for file, image in zip(files, decoded, strict=True)
        if image is not None
    )
    return _slice_sets_from(records, options.image_size)


def _read_fitted(file: Path, size: int) -> np.ndarray:
    return _fit_square(_read_greyscale(file), size)


# -------------------------------------------------------------- shared decoding and splits


def _read_greyscale(path: Path) -> np.ndarray:
    """(H, W) uint8 pixels of a greyscale image file.

    8-bit grey is kept as is; 16-bit, 32-bit and float grey are scaled so the file's maximum
    becomes 255; colour files are accepted only when their channels agree within GREY_TOLERANCE.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in _GREY_MODES:  # 1, LA, P, RGBA, CMYK, YCbCr, ... as RGB
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3:
        channels = pixels[..., :3].astype(np.int16)
        if np.ptp(channels, axis=-1).max() > GREY_TOLERANCE:
            raise DataError(
                f"{path}: image is not greyscale (mode {mode} with differing channels); "
                "convert it to 8-bit greyscale"
            )
        return np.rint(channels.mean(axis=-1)).astype(np.uint8)
    if pixels.dtype == np.uint8:
        return pixels
    pixels = np.clip(pixels.astype(np.float64), 0.0, None)
    peak = pixels.max()
    return np.rint(pixels * (255.0 / peak if peak > 0 else 0.0)).astype(np.uint8)


def _fit_square(
    pixels: np.ndarray, size: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """(size, size) uint8: `pixels` (H, W) centred on a max(H, W) square of 0, then resized."""
    height, width = pixels.shape
    side = max(height, width)
    if height != width:
        square = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = pixels
        pixels = square
    if side != size:
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), resample)
        pixels = np.asarray(resized)
    return pixels


def _decode_all(
    decode: Callable[[Any], Any], items: Sequence[Any], skip_bad: bool, problems: list[str]
) -> list[Any]:
    """[decode(item) for item in items] on all cores, in order.

    A `DataError` is raised (and the remaining work cancelled), or with `skip_bad` becomes None
    in the result and a line in `problems`.
    """
    workers = _worker_count()
    size = max(1, min(_DECODE_CHUNK, len(items) // (4 * workers)))  # >= 4 chunks per worker
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    results = []
    with ThreadPoolExecutor(workers) as pool:
        for outcomes in pool.map(partial(_attempt_each, decode), chunks):
            for outcome in outcomes:
                if isinstance(outcome, DataError):
                    if not skip_bad:
                        pool.shutdown(cancel_futures=True)
                        raise outcome
                    problems.append(f"skipped {outcome}")
                    outcome = None
                results.append(outcome)
    return results


def _attempt_each(decode: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    """decode(item) per item, with a `DataError` returned in place of its result."""
    outcomes = []
    for item in chunk:
        try:
            outcomes.append(decode(item))
        except DataError as error:
            outcomes.append(error)
    return outcomes


def _worker_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _make_slice_set(
    images: Sequence[np.ndarray],
    subject_ids: Sequence[str],
    slice_indices: Sequence[int],
    size: int,
    masks: Sequence[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> SliceSet:
    def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(arrays) if len(arrays) else np.zeros((0, size, size), dtype=np.uint8)

    return SliceSet(
        images=stack(images),
        subject_ids=np.asarray(subject_ids, dtype=str),
        slice_indices=np.asarray(slice_indices, dtype=np.int32),
        masks=None if masks is None else stack(masks),
        labels=labels,
    )


def _slice_sets_from(
    records: Iterable[tuple[str, str, int, np.ndarray]], size: int
) -> dict[str, SliceSet]:
    """A `SliceSet` per split from (split, subject id, slice index, (S, S) image) records."""
    gathered: dict[str, tuple[list, list, list]] = {split: ([], [], []) for split in SPLITS}
    for split, subject_id, slice_index, image in records:
        images, subject_ids, slice_indices = gathered[split]
        images.append(image)
        subject_ids.append(subject_id)
        slice_indices.append(slice_index)
    return {split: _make_slice_set(*gathered[split], size) for split in SPLITS}


def _person(subject_id: str) -> str:
    """Who a subject id belongs to: its BIDS "sub-xx" label, or the id without "_MRn"."""
    bids = re.search(r"(?:^|[/_])(sub-[A-Za-z0-9]+)", subject_id)
    if bids:
        return bids.group(1)
    return re.sub(r"_MR\d+$", "", subject_id)


def _split_subjects(subject_ids: Sequence[str], seed: int) -> dict[str, str]:
    """{subject id: split}, by person, deterministic for a seed (see the module docstring)."""
    people = sorted(
        {_person(subject_id) for subject_id in subject_ids},
        key=lambda person: hashlib.sha256(f"{seed}:{person}".encode()).hexdigest(),
    )
    counts = {split: 0 for split in SPLITS}
    if len(people) >= 3:
        for split, fraction in SPLIT_FRACTIONS.items():
            counts[split] = max(1, round(fraction * len(people)))
    elif len(people) == 2:
        counts["validate"] = 1
    split_of_person, start = {}, 0
    for split in ("test", "validate"):
        for person in people[start : start + counts[split]]:
            split_of_person[person] = split
        start += counts[split]
    return {
        subject_id: split_of_person.get(_person(subject_id), "train") for subject_id in subject_ids
    }


# ----------------------------------------------------------------------------------- cache


def _load_cached(
    found: _Found, options: _Options, cache_dir: str | os.PathLike | None
) -> tuple[dict[str, SliceSet], list[str]]:
    """The decoded splits and decoding problems, from the cache or decoded (and then cached)."""
    cache_file = _cache_file(found, options, cache_dir)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    problems: list[str] = []
    splits = found.load(options, problems)
    try:
        _write_cache(cache_file, splits, problems)
    except OSError as error:
        problems.append(f"cache not written to {cache_file.parent}: {error}")
    return splits, problems


def _cache_file(found: _Found, options: _Options, cache_dir: str | os.PathLike | None) -> Path:
    """The cache file for this data and these options; `ValueError` if inside the data folder."""
    if cache_dir is None:
        cache_dir = os.environ.get("BRAIN_VQVAE_CACHE") or Path.home() / ".cache" / "brain-vqvae"
    folder = Path(cache_dir).expanduser().resolve()
    data_folder = found.root.resolve()
    if data_folder.is_dir() and folder.is_relative_to(data_folder):
        raise ValueError(
            f"cache_dir {folder} is inside the data folder {data_folder}; "
            "choose another: nothing is ever written into a data folder"
        )
    return folder / f"{found.format}-{_cache_key(found, options)}.npz"


def _cache_key(found: _Found, options: _Options) -> str:
    """SHA-256 of this module's code, the source, format, options and every input file's
    (relative path, size, mtime_ns)."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # new code, new arrays
    settings = [code, str(found.root.resolve()), found.format]
    settings += [options.image_size, options.slices_per_volume, options.seed, options.skip_bad]
    digest = hashlib.sha256(json.dumps(settings).encode())
    for file in found.inputs:
        status = file.stat()
        relative = file.relative_to(found.root).as_posix()
        digest.update(f"{relative}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _write_cache(cache_file: Path, splits: dict[str, SliceSet], problems: list[str]) -> None:
    """Write the splits as one uncompressed .npz, atomically (temporary file + os.replace)."""
    arrays = {"problems": np.asarray(json.dumps(problems))}
    for split, slice_set in splits.items():
        for name in ("images", "subject_ids", "slice_indices", "masks", "labels"):
            if getattr(slice_set, name) is not None:
                arrays[f"{split}.{name}"] = getattr(slice_set, name)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=cache_file.parent, prefix=cache_file.stem + ".", suffix=".tmp", delete=False
    ) as handle:
        temporary = Path(handle.name)
        try:
            np.savez(handle, **arrays)
        except BaseException:
            temporary.unlink()
            raise
    os.replace(temporary, cache_file)


def _read_cache(cache_file: Path) -> tuple[dict[str, SliceSet], list[str]] | None:
    """The cached splits and problems, or None when absent or unreadable (then rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}
        splits = {
            split: SliceSet(
                images=stored[f"{split}.images"],
                subject_ids=stored[f"{split}.subject_ids"],
                slice_indices=stored[f"{split}.slice_indices"],
                masks=stored.get(f"{split}.masks"),
                labels=stored.get(f"{split}.labels"),
            )
            for split in SPLITS
        }
        return splits, json.loads(str(stored["problems"]))
    except Exception:  # a damaged or foreign cache file is rebuilt, never trusted
        return None


# ---------------------------------------------------------------------------- demographics


def _read_demographics_tables(
    root: Path, demographics_csv: str | os.PathLike | None, problems: list[str]
) -> dict[str, dict]:
    """{session id: demographics} from `demographics_csv` or the OASIS tables in/above `root`."""
    if demographics_csv is not None:
        files = [Path(demographics_csv).expanduser()]
        if not files[0].is_file():
            raise DataError(f"{files[0]}: demographics CSV not found")
    else:
        files = _find_demographics_files(root)
    table = {}
    for file in files:
        table.update(_read_demographics(file, problems))
    return table


def _find_demographics_files(root: Path) -> list[Path]:
    """The OASIS tables in the data folder or up to _DEMOGRAPHICS_SEARCH_DEPTH folders above."""
    folder = root if root.is_dir() else root.parent
    places = [folder, *list(folder.parents)[:_DEMOGRAPHICS_SEARCH_DEPTH]]
    found = []
    for name in _DEMOGRAPHICS_FILES:
        match = next((place / name for place in places if (place / name).is_file()), None)
        if match is not None:
            found.append(match)
    return found


def _read_demographics(csv_file: Path, problems: list[str]) -> dict[str, dict]:
    """Rows of an OASIS table (oasis_cross-sectional.csv or oasis_longitudinal.csv) by session."""
    try:
        with csv_file.open(newline="", encoding="utf-8-sig") as handle:
            return _parse_demographics(csv.DictReader(handle), csv_file, problems)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{csv_file}: cannot read the table ({error})") from None


def _parse_demographics(
    reader: csv.DictReader, csv_file: Path, problems: list[str]
) -> dict[str, dict]:
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    id_column = next((name for name in _SESSION_ID_COLUMNS if name in reader.fieldnames), None)
    missing = [name for name in _DEMOGRAPHIC_COLUMNS.values() if name not in reader.fieldnames]
    if id_column is None or missing:
        needed = ", ".join([" or ".join(_SESSION_ID_COLUMNS), *_DEMOGRAPHIC_COLUMNS.values()])
        raise DataError(
            f"{csv_file}: not an OASIS demographics table: needs columns {needed}; "
            f"header is {','.join(reader.fieldnames)}"
        )
    return {
        row[id_column].strip(): _demographic_record(row, f"{csv_file}:{reader.line_num}", problems)
        for row in reader
        if (row.get(id_column) or "").strip()
    }


def _demographic_record(row: dict[str, str], where: str, problems: list[str]) -> dict:
    record: dict[str, Any] = {}
    for key, column in _DEMOGRAPHIC_COLUMNS.items():
        text = (row.get(column) or "").strip()
        if text in _MISSING_VALUES:
            record[key] = None
        elif key == "sex":
            record[key] = text.upper()
        else:
            try:
                record[key] = float(text)
            except ValueError:
                problems.append(f"{where}: {column} {text!r} is not a number; left blank")
                record[key] = None
    return record


def _join_demographics(
    table: dict[str, dict], splits: dict[str, SliceSet], problems: list[str]
) -> dict[str, dict]:
    subject_ids = sorted({str(s) for slice_set in splits.values() for s in slice_set.subject_ids})
    joined = {subject_id: table[subject_id] for subject_id in subject_ids if subject_id in table}
    if table and len(joined) < len(subject_ids):
        problems.append(
            f"{len(subject_ids) - len(joined)} of {len(subject_ids)} subjects have no row "
            "in the demographics table"
        )
    return joined


# ---------------------------------------------------------------------------- tf.data maps


def _to_unit_float(images):
    """uint8 (B, S, S) -> float32 (B, S, S, 1) in [0, 1]."""
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0


def _augment_batch(images, seed):
    """Random flip, rotation, zoom and gain/gamma of a uint8 (B, S, S) batch, seeded by `seed`."""
    import tensorflow as tf

    images = _to_unit_float(images)
    count = tf.shape(images)[0]
    flip_seed, angle_seed, zoom_seed, gain_seed, gamma_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    flip = tf.where(tf.random.stateless_uniform([count], flip_seed) < 0.5, -1.0, 1.0)
    max_angle = np.deg2rad(10.0)
    angle = tf.random.stateless_uniform([count], angle_seed, -max_angle, max_angle)
    zoom = tf.random.stateless_uniform([count], zoom_seed, 0.9, 1.1)
    # The warp loses the static image size, which the model's SSIM needs: restore it.
    images = tf.ensure_shape(_flip_rotate_zoom(images, flip, angle, zoom), images.shape)
    gain = tf.random.stateless_uniform([count, 1, 1, 1], gain_seed, 0.9, 1.1)
    log_gamma = tf.random.stateless_uniform([count, 1, 1, 1], gamma_seed, -0.223, 0.223)
    return tf.clip_by_value(gain * tf.pow(images, tf.exp(log_gamma)), 0.0, 1.0)


def _flip_rotate_zoom(images, flip, angle, zoom):
    """(B, S, S, 1) images warped about their centre c, one (flip, angle, zoom) per image.

    Output pixel p = (column, row) samples the input at c + R(angle) diag(flip, 1) (p - c) / zoom
    (bilinear, 0 outside the image), so flip = -1 mirrors left-right and zoom > 1 enlarges.
    """
    import tensorflow as tf

    centre = (tf.cast(tf.shape(images)[1], tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [a0, a1, centre * (1 - a0 - a1), b0, b1, centre * (1 - b0 - b1), zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


# ------------------------------------------------------------------------ command line


def _summarise(brain_slices: BrainSlices, image_size: int) -> dict[str, Any]:
    """The JSON-ready summary `python dataset.py summary` prints."""
    return {
        "format": brain_slices.format,
        "source": str(brain_slices.source),
        "image_size": image_size,
        "splits": {
            split: _split_summary(slice_set) for split, slice_set in brain_slices.splits.items()
        },
        "demographics_joined": len(brain_slices.demographics),
        "problems": list(brain_slices.problems),
    }


def _split_summary(slice_set: SliceSet) -> dict[str, Any]:
    images = slice_set.images
    intensity = None
    if len(images):
        intensity = {
            "min": round(float(images.min()) / 255.0, 4),
            "max": round(float(images.max()) / 255.0, 4),
            "mean": round(float(images.mean()) / 255.0, 4),
        }
    return {
        "slices": len(slice_set),
        "subjects": int(np.unique(slice_set.subject_ids).size),
        "intensity": intensity,
        "masks": slice_set.masks is not None,
        "labels": slice_set.labels is not None,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    size = summary["image_size"]
    print(f"format:       {summary['format']}")
    print(f"source:       {summary['source']}")
    print(f"image size:   {size}x{size}")
    print(f"{'split':<10}{'slices':>8}{'subjects':>10}  {'intensity min/max/mean':<24}masks")
    for split, row in summary["splits"].items():
        intensity = row["intensity"]
        shown = "-" if intensity is None else "{min:.3f}/{max:.3f}/{mean:.3f}".format(**intensity)
        masks = "yes" if row["masks"] else "no"
        print(f"{split:<10}{row['slices']:>8}{row['subjects']:>10}  {shown:<24}{masks}")
    print(f"demographics: {summary['demographics_joined']} subjects joined")
    print(f"problems:     {len(summary['problems']) or 'none'}")
    for problem in summary["problems"]:
        print(f"  - {problem}")


def _run_summary(arguments: argparse.Namespace) -> int:
    brain_slices = load_slices(
        arguments.path,
        image_size=arguments.image_size,
        slices_per_volume=arguments.slices_per_volume,
        seed=arguments.seed,
        cache_dir=arguments.cache_dir,
        skip_bad=arguments.skip_bad,
        demographics_csv=arguments.demographics_csv,
    )
    summary = _summarise(brain_slices, arguments.image_size)
    if arguments.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _run_demo(arguments: argparse.Namespace) -> int:
    from demo_data import build_demo_dataset  # only this command needs the template machinery

    start = time.perf_counter()
    written = build_demo_dataset(
        arguments.out,
        train_subjects=arguments.train_subjects,
        validate_subjects=arguments.validate_subjects,
        test_subjects=arguments.test_subjects,
        seed=arguments.seed,
        overwrite=arguments.overwrite,
    )
    print(f"wrote the synthetic demo dataset to {written} in {time.perf_counter() - start:.1f} s")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataset.py", description="Inspect brain MRI slice data, or build the demo set."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="detect the format of PATH and describe it")
    summary.add_argument("path", type=Path, help="data folder, or a .npz file")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.add_argument("--image-size", type=int, default=_DEFAULTS.image_size)
    summary.add_argument("--slices-per-volume", type=int, default=_DEFAULTS.slices_per_volume)
    summary.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="subject split seed")
    summary.add_argument("--skip-bad", action="store_true", help="skip unusable files")
    summary.add_argument("--cache-dir", type=Path, help="default: $BRAIN_VQVAE_CACHE")
    summary.add_argument("--demographics-csv", type=Path, help="an OASIS demographics table")
    summary.set_defaults(run=_run_summary)
    demo = commands.add_parser("demo", help="write the synthetic demo dataset (PNG tree)")
    demo.add_argument("--out", type=Path, required=True, help="folder to write")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo set")
    demo.add_argument("--train-subjects", type=int, default=64)
    demo.add_argument("--validate-subjects", type=int, default=8)
    demo.add_argument("--test-subjects", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; bad input prints `error: ...` and returns 2."""
    arguments = _build_parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except (ValueError, OSError) as error:  # DataError and refused arguments: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
