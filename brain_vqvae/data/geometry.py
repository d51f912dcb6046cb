"""Medical-image geometry: from a volume's voxels to upright, cropped, square uint8 slices.

Convention: every slice is shown in the neurological convention: anterior at the top and the
subject's left on the image's left (RAS+ x grows to the right of the picture, y to its top).
The demo builder (`demo.py`) writes its slices the same way.

Volumes are reoriented to RAS+ (nibabel's `as_closest_canonical`; a plain Analyze image gets the
axes its header's `orient` field names, transverse LAS by default), so the third axis is axial.
The foreground is the non-zero voxels of skull-stripped OASIS-1 volumes and of any volume with a
masked background (at least MASKED_BACKGROUND, 25 %, of its voxels exactly at its minimum:
skull-stripped or zero-padded scans, whose dark CSF must not be cut away), and the voxels above
Otsu's threshold otherwise (scans with noisy air around the head). The axial planes are spread
evenly from the plane with AXIAL_TRIM (3 %) of the foreground below it to the one with 3 % above
it (the brain without the thin brainstem and vertex ends); every slice is cropped to the
volume's in-plane foreground box plus a 5 % margin, so the brain fills the picture whatever the
field of view. Intensities map linearly to 0..255 (clipped) from the background value of a
masked volume, or the 0.5th percentile of the foreground voxels in noisy air, to their 99.5th
percentile. Each slice is turned upright with square pixels, padded to a square with 0 (keeping
its aspect ratio) and resized to S x S with Lanczos.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = [
    "fit_square",
    "foreground_box",
    "foreground_mask",
    "robust_uint8",
    "spread_planes",
    "upright",
    "with_analyze_orientation",
]

AXIAL_TRIM = 0.03  # fraction of the foreground voxels below the first / above the last slice
BOX_TRIM = 0.002  # fraction of the foreground voxels left outside the in-plane crop per side
BOX_MARGIN = 0.05  # of the crop's size, added around it on each side
MASKED_BACKGROUND = 0.25  # share of voxels at the minimum that marks a masked background
INTENSITY_PERCENTILES = (0.5, 99.5)  # of foreground voxels, mapped to 0 and 255

# Analyze 7.5 `orient` codes -> the direction each voxel axis runs towards (nibabel axis codes).
_ANALYZE_AXES = {0: "LAS", 1: "LSA", 2: "ASL", 3: "LPS", 4: "LIA", 5: "ASR"}


def with_analyze_orientation(image: Any) -> Any:
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


def foreground_mask(voxels: np.ndarray, skull_stripped: bool) -> tuple[np.ndarray, float | None]:
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


def spread_planes(foreground: np.ndarray, count: int) -> np.ndarray:
    """`count` axial plane indices spread evenly over the foreground's extent.

    The extent runs from the plane below which AXIAL_TRIM of the foreground voxels lie to the
    plane above which AXIAL_TRIM lie: the brain without its thinnest ends (brainstem, vertex),
    unmoved by a few stray voxels. Planes repeat when the extent is shorter than `count`.
    """
    first, last = _mass_range(foreground.sum(axis=(0, 1)), AXIAL_TRIM)
    return np.rint(np.linspace(first, last, count)).astype(int)


def foreground_box(foreground: np.ndarray) -> tuple[slice, slice]:
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


def robust_uint8(
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


def upright(plane: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """An (X, Y) RAS+ plane as a (Y, X) picture: anterior at the top, left on the left.

    np.rot90 makes row i hold y = Y - 1 - i and column j hold x = j: the subject's left (small
    x) on the image's left, the neurological convention. Non-square voxels are resampled
    (Lanczos) so that a pixel is as wide as it is tall.
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


def fit_square(
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
