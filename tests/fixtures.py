"""Writers of small brain MRI test data in the exact on-disk formats users have.

Everything is written as the real releases name, nest, shape and encode it (the README's "Data"
section lists the formats): the keras_png_slices tree of 8-bit greyscale PNGs with
{0, 85, 170, 255} masks; the OASIS-1 disc*/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111 tree of 16-bit
big-endian Analyze pairs beside their unmasked and FSL_SEG siblings, with
oasis_cross-sectional.csv; the OASIS-2 OAS2_xxxx_MRn/RAW/mpr-N.nifti.hdr/.img layout with
oasis_longitudinal.csv; NIfTI and FreeSurfer MGH volumes in any voxel axis order. A loader that
reads these reads the real thing.

The synthetic head is defined in RAS+ voxel order (x towards the subject's right, y anterior,
z superior): an ellipsoid "brain" of grey ~1000 with a marker column at 3000 in its
anterior-left quarter (negative x, positive y), so tests can check that slices come out upright
in the neurological convention: marker top-left.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

OASIS_SHAPE = (176, 208, 176)  # the T88_111 volumes; nibabel reads them as (176, 208, 176, 1)
OASIS1_COLUMNS = ("ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF")
OASIS1_COLUMNS += ("Delay",)
OASIS2_COLUMNS = ("Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Hand", "Age")
OASIS2_COLUMNS += ("EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF")
MASK_GREYS = (0, 85, 170, 255)
BRAIN_GREY = 1000
MARKER_GREY = 3000


# --------------------------------------------------------------------------- PNG slices


def slice_marker_grey(slice_index: int) -> int:
    """The grey of the 64x64 top-left block of slice `slice_index` in `png_slice_pixels`."""
    return 20 + 7 * slice_index


def png_slice_pixels(case: int, slice_index: int, size: int = 256) -> np.ndarray:
    """(size, size) uint8: an ellipse whose grey depends on the case, and a top-left block
    whose grey encodes the slice index (`slice_marker_grey`), so order survives resizing."""
    rows, columns = np.mgrid[:size, :size] / size - 0.5
    pixels = np.where((rows / 0.4) ** 2 + (columns / 0.3) ** 2 < 1, 60 + 10 * (case % 10), 0)
    pixels[: size // 4, : size // 4] = slice_marker_grey(slice_index)
    return pixels.astype(np.uint8)


def png_mask_pixels(size: int = 256) -> np.ndarray:
    """(size, size) uint8 with the four mask greys: nested ellipses 0 / 85 / 170 / 255."""
    rows, columns = np.mgrid[:size, :size] / size - 0.5
    radius = np.sqrt((rows / 0.4) ** 2 + (columns / 0.3) ** 2)
    return np.select([radius < 0.4, radius < 0.7, radius < 1.0], MASK_GREYS[:0:-1], 0).astype(
        np.uint8
    )


def write_png_tree(
    root: Path,
    cases: dict[str, list[int]] | None = None,
    slices: int = 12,
    masks: bool = True,
    size: int = 256,
) -> Path:
    """The six keras_png_slices folders directly in `root`; returns `root`.

    `cases` maps a split to its case numbers (default train 1, 2; validate 3; test 4); every
    case gets `slices` images case_NNN_slice_S.nii.png and, with `masks`, seg_NNN_slice_S.nii.png.
    """
    cases = cases or {"train": [1, 2], "validate": [3], "test": [4]}
    mask = Image.fromarray(png_mask_pixels(size), mode="L")
    for split, numbers in cases.items():
        image_folder = root / f"keras_png_slices_{split}"
        mask_folder = root / f"keras_png_slices_seg_{split}"
        image_folder.mkdir(parents=True, exist_ok=True)
        if masks:
            mask_folder.mkdir(parents=True, exist_ok=True)
        for case in numbers:
            for slice_index in range(slices):
                name = f"case_{case:03d}_slice_{slice_index}.nii.png"
                pixels = png_slice_pixels(case, slice_index, size)
                Image.fromarray(pixels, mode="L").save(image_folder / name)
                if masks:
                    mask.save(mask_folder / name.replace("case_", "seg_"))
    return root


# ------------------------------------------------------------------------------ volumes


def synthetic_head(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(X, Y, Z) int16 in RAS+ order: a noisy ellipsoid brain (radii 0.4 of each side, grey ~1000,
    0 outside) with a marker column (grey 3000) in its anterior-left quarter."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.arange(side) / side - 0.5 for side in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    brain = (x / 0.4) ** 2 + (y / 0.4) ** 2 + (z / 0.4) ** 2 < 1
    grey = BRAIN_GREY + 150 * np.sin(8 * x + 5 * z) + rng.normal(0, 20, shape)
    volume = np.where(brain, grey, 0.0)
    marker = ((x + 0.15) ** 2 + (y - 0.2) ** 2 < 0.06**2) & brain
    volume[np.broadcast_to(marker, shape)] = MARKER_GREY
    return volume.astype(np.int16)


def write_analyze(
    header_file: Path, volume_ras: np.ndarray, zooms=(1.0, 1.0, 1.0), orient: int = 0
) -> Path:
    """A 16-bit big-endian Analyze 7.5 pair (.hdr + .img) of shape (X, Y, Z, 1), as OASIS ships.

    The voxels are stored in the order the header's `orient` names: 0 = transverse (x right to
    left, y posterior to anterior, z inferior to superior: the RAS volume flipped in x), or
    2 = sagittal (axes: y posterior to anterior, z inferior to superior, x right to left).
    """
    if orient == 0:
        stored, stored_zooms = volume_ras[::-1], zooms
    elif orient == 2:
        stored = np.transpose(volume_ras[::-1], (1, 2, 0))
        stored_zooms = (zooms[1], zooms[2], zooms[0])
    else:
        raise ValueError(f"orient {orient} is not written by this fixture")
    header = nib.AnalyzeHeader(endianness=">")
    header.set_data_dtype(np.int16)
    header.set_data_shape((*stored.shape, 1))
    header.set_zooms((*stored_zooms, 1.0))
    header["orient"] = bytes([orient])
    header_file.parent.mkdir(parents=True, exist_ok=True)
    image = nib.AnalyzeImage(np.ascontiguousarray(stored)[..., None], None, header)
    nib.save(image, header_file)
    return header_file


def write_nifti(file: Path, volume_ras: np.ndarray, flip_axis: int | None = None, zooms=None):
    """A NIfTI-1 volume (.nii or .nii.gz by the name) holding `volume_ras`.

    With `flip_axis`, the voxels are stored flipped along that axis and the affine says so, so a
    reader that honours the affine sees the same RAS volume.
    """
    zooms = zooms or (1.0, 1.0, 1.0)
    affine = np.diag([*zooms, 1.0])
    data = volume_ras
    if flip_axis is not None:
        data = np.flip(volume_ras, axis=flip_axis)
        affine[flip_axis, flip_axis] = -zooms[flip_axis]
        affine[flip_axis, 3] = zooms[flip_axis] * (volume_ras.shape[flip_axis] - 1)
    file.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), file)
    return file


def write_oriented(file: Path, volume_ras: np.ndarray, axcodes: str) -> Path:
    """`volume_ras` (1 mm voxels) stored with its voxel axes running towards `axcodes` ("LPS",
    "PIL", ...: a permutation and flips of RAS) and an affine that maps them back to the same
    world points; NIfTI-1 (.nii, .nii.gz) or FreeSurfer MGH (.mgz) by the name."""
    ras = nib.orientations.axcodes2ornt("RAS")
    transform = nib.orientations.ornt_transform(ras, nib.orientations.axcodes2ornt(axcodes))
    image = nib.Nifti1Image(volume_ras, np.eye(4)).as_reoriented(transform)
    assert nib.aff2axcodes(image.affine) == tuple(axcodes)
    data = np.ascontiguousarray(np.asarray(image.dataobj))
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.name.endswith(".mgz"):
        nib.save(nib.MGHImage(data, image.affine), file)
    else:
        nib.save(nib.Nifti1Image(data, image.affine), file)
    return file


# -------------------------------------------------------------------------------- OASIS


def oasis1_header_path(disc: Path, session: str, variant: str = "n4", masked: bool = True):
    """disc/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/OAS1_xxxx_MRn_mpr_n4_anon_111_t88_[masked_]gfc.hdr"""
    kind = "masked_gfc" if masked else "gfc"
    name = f"{session}_mpr_{variant}_anon_111_t88_{kind}.hdr"
    return disc / session / "PROCESSED" / "MPRAGE" / "T88_111" / name


def write_oasis1_session(
    disc: Path,
    session: str,
    shape: tuple[int, int, int] = OASIS_SHAPE,
    variant: str = "n4",
    seed: int = 0,
    siblings: bool = False,
) -> Path:
    """One OASIS-1 session's skull-stripped T88 volume; returns its .hdr.

    With `siblings`, also the unmasked T88 volume beside it and the FSL_SEG segmentation, as in
    the release, which a loader must not mistake for more sessions.
    """
    volume = synthetic_head(shape, seed)
    header_file = write_analyze(oasis1_header_path(disc, session, variant), volume)
    if siblings:
        skull = np.where(volume == 0, 300, volume).astype(np.int16)
        write_analyze(oasis1_header_path(disc, session, variant, masked=False), skull)
        segmentation = (volume > 0).astype(np.int16) * 3
        fseg = f"{session}_mpr_{variant}_anon_111_t88_masked_gfc_fseg.hdr"
        write_analyze(disc / session / "FSL_SEG" / fseg, segmentation)
    return header_file


def write_oasis2_session(root: Path, session: str, shape=(40, 48, 40), seed: int = 0) -> Path:
    """OASIS-2 root/OAS2_xxxx_MRn/RAW/mpr-1.nifti.hdr/.img (and mpr-2); returns mpr-1's .hdr."""
    volume = synthetic_head(shape, seed)
    raw = root / session / "RAW"
    write_analyze(raw / "mpr-2.nifti.hdr", volume)
    return write_analyze(raw / "mpr-1.nifti.hdr", volume)


def write_csv(file: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> Path:
    """A CSV with header `columns`; a column missing from a row is left blank."""
    with file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return file


def write_as_saved_before(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """Copy the `.keras` file `source` to `target` with its config.json changed in place by
    `edit(config)`, as an earlier version of the code would have written it (a field it did not
    have yet removed, one it had since dropped added)."""
    with zipfile.ZipFile(source) as new, zipfile.ZipFile(target, "w") as old:
        for item in new.infolist():
            content = new.read(item)
            if item.filename == "config.json":
                config = json.loads(content)
                edit(config)
                content = json.dumps(config).encode()
            old.writestr(item, content)
    return target
