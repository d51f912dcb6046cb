"""Brain MRI volumes: a folder of NIfTI/MGH/Analyze files, the raw OASIS releases, one file.

Formats:

oasis_raw
    The raw OASIS-1 release: disc*/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/*_masked_gfc.hdr/.img,
    skull-stripped atlas-registered 16-bit big-endian Analyze of shape (176, 208, 176, 1); the
    given folder may also be one disc or a folder of subject folders. Also the OASIS-2 layout
    OAS2_xxxx_MRn/RAW/mpr-1.nifti.hdr/.img (raw scans with skull). Subject id "OAS1_0001_MR1".
nifti_folder
    `*.nii`, `*.nii.gz`, FreeSurfer `*.mgz` or Analyze `*.hdr`/`*.img` volumes anywhere under the
    folder; the subject id is the path below the folder without the suffix (the file stem for a
    flat folder).

Each volume gives `slices_per_volume` axial slices, inferior to superior, made as `geometry`
describes (RAS+ reorientation, foreground crop, intensity scaling, upright in the neurological
convention, square); the subjects are split by person (`splits`). `load_volume_slices` reads one
file the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from hyperparameters import Hyperparameters

from .decoding import decode_all
from .geometry import (
    fit_square,
    foreground_box,
    foreground_mask,
    robust_uint8,
    spread_planes,
    upright,
    with_analyze_orientation,
)
from .slices import DataError, SliceSet, slice_sets_from
from .sources import Found, Options, natural_key
from .splits import split_subjects

__all__ = ["VOLUME_SUFFIXES", "find_oasis_raw", "find_volume_folder", "load_volume_slices"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".hdr")

_DEFAULTS = Hyperparameters()
_OASIS_LAYOUTS = (  # (glob below a subject folder's parent, volume is skull-stripped)
    ("OAS1_*_MR*/PROCESSED/MPRAGE/T88_111/*_masked_gfc.hdr", True),
    ("OAS2_*_MR*/RAW/mpr-1.nifti.hdr", False),
)
_OASIS_SESSION = re.compile(r"OAS[12]_\d+_MR\d+")


@dataclass(frozen=True)
class _VolumeFile:
    path: Path
    subject_id: str
    skull_stripped: bool  # foreground = non-zero voxels, else by `geometry.foreground_mask`


def load_volume_slices(
    path: str | os.PathLike,
    image_size: int = _DEFAULTS.image_size,
    slices_per_volume: int = _DEFAULTS.slices_per_volume,
) -> tuple[np.ndarray, np.ndarray]:
    """The axial slices of one volume file, read exactly as `load_slices` reads a volume in a
    folder of volumes.

    `path` is a NIfTI (.nii, .nii.gz), FreeSurfer (.mgz) or Analyze (.hdr beside its .img)
    file. Returns (images, planes): images (M, S, S) uint8, S = `image_size`, inferior to
    superior, upright (anterior at the top, the subject's left on the image's left); planes (M,)
    int, the axial index of each slice in the volume reoriented to RAS+. M is
    `slices_per_volume`, or 1 for a 2-D image (X, Y) or a single-plane volume (X, Y, 1).
    A file that cannot be read raises `DataError` naming it.
    """
    if image_size < 1 or slices_per_volume < 1:
        raise ValueError(
            f"image_size and slices_per_volume must be at least 1, "
            f"got {image_size} and {slices_per_volume}"
        )
    path = Path(path).expanduser()
    if not _volume_suffix(path):
        raise DataError(f"{path}: not a volume file; expected one of {', '.join(VOLUME_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    image_file = path.with_suffix(".img")
    if path.suffix == ".hdr" and not image_file.is_file():
        raise DataError(f"{path}: Analyze header with no {image_file.name} beside it")
    voxels, spacing = _read_canonical_volume(path, accept_plane=True)
    count = 1 if voxels.shape[2] == 1 else slices_per_volume
    return _axial_slices(voxels, spacing, path, False, image_size, count)


# ------------------------------------------------------------------------------- finding


def find_oasis_raw(path: Path) -> Found | None:
    """The OASIS-1 (or else OASIS-2) sessions here or one or two folders down; None if none."""
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


def find_volume_folder(path: Path) -> Found | None:
    """The volume files anywhere under `path` (hidden folders aside); None if there are none."""
    files = sorted(
        (
            file
            for file in path.rglob("*")
            if file.is_file()
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
        ),
        key=lambda file: natural_key(file.relative_to(path).as_posix()),
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
    return next((suffix for suffix in VOLUME_SUFFIXES if name.endswith(suffix)), "")


def _volume_subject_id(file: Path, root: Path) -> str:
    """Path below `root` without the volume suffix: "sub-01/anat/sub-01_T1w", "brain01"."""
    relative = file.relative_to(root).as_posix()
    return relative[: len(relative) - len(_volume_suffix(file))]


def _volume_set(
    format_name: str, root: Path, volumes: list[_VolumeFile], faults: Iterable[str] = ()
) -> Found:
    """A `Found` for volumes; an Analyze header without its .img beside it is a fault."""
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
    return Found(format_name, root, tuple(inputs), partial(_load_volumes, usable), tuple(faults))


# ------------------------------------------------------------------------------- loading


def _load_volumes(
    volumes: list[_VolumeFile], options: Options, problems: list[str]
) -> dict[str, SliceSet]:
    split_of = split_subjects([volume.subject_id for volume in volumes], options.seed)
    decoded = decode_all(
        partial(_volume_slices, options=options), volumes, options.skip_bad, problems
    )
    records = (
        (split_of[volume.subject_id], volume.subject_id, slice_index, image)
        for volume, slices in zip(volumes, decoded, strict=True)
        if slices is not None
        for slice_index, image in enumerate(slices)
    )
    return slice_sets_from(records, options.image_size)


def _volume_slices(volume: _VolumeFile, options: Options) -> np.ndarray:
    """(slices_per_volume, S, S) uint8 axial slices of one volume, inferior to superior."""
    voxels, spacing = _read_canonical_volume(volume.path)
    images, _ = _axial_slices(
        voxels,
        spacing,
        volume.path,
        volume.skull_stripped,
        options.image_size,
        options.slices_per_volume,
    )
    return images


def _axial_slices(
    voxels: np.ndarray,
    spacing: tuple[float, float, float],
    path: Path,
    skull_stripped: bool,
    size: int,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(count, S, S) uint8 upright axial slices of (X, Y, Z) RAS+ voxels, and their planes.

    Each slice is cropped to the volume's foreground box, so brains fill the picture whatever
    the scan's field of view.
    """
    if not np.isfinite(voxels).all():
        raise DataError(f"{path}: volume holds NaN or infinite values")
    if not voxels.any():
        raise DataError(f"{path}: volume is all zeros")
    foreground, background = foreground_mask(voxels, skull_stripped)
    if not foreground.any():
        raise DataError(f"{path}: no voxel stands out from the background")
    planes = spread_planes(foreground, count)
    columns, rows = foreground_box(foreground)
    scaled = robust_uint8(voxels[columns, rows][:, :, planes], voxels[foreground], background)
    images = np.stack(
        [fit_square(upright(scaled[:, :, k], spacing), size) for k in range(len(planes))]
    )
    return images, planes


def _read_canonical_volume(
    path: Path, accept_plane: bool = False
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(X, Y, Z) float32 voxels in RAS+ axis order and the voxel sizes in mm along X, Y, Z.

    With `accept_plane`, a 2-D image (X, Y) is read as the single plane (X, Y, 1).
    """
    try:
        image = nib.load(path)
        if path.suffix == ".hdr":
            _check_analyze_size(image, path.with_suffix(".img"))
        if accept_plane and len(image.shape) == 2:
            image = nib.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine)
        canonical = nib.as_closest_canonical(with_analyze_orientation(image))
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
