"""Which data format a path holds. Formats are tried in this order:

png_tree (`png_tree`), oasis_raw and nifti_folder (`volumes`), image_folder (`image_folder`);
a file must be an npz archive (`npz`). The first format whose files are present wins.
"""

from __future__ import annotations

from pathlib import Path

from .image_folder import find_image_folder
from .npz import find_npz
from .png_tree import find_png_tree
from .slices import DataError
from .sources import Found, is_stray
from .volumes import find_oasis_raw, find_volume_folder

__all__ = ["FORMAT_EXPECTATIONS", "discover"]

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


def discover(path: Path) -> Found:
    """Which format `path` holds, and its files; `DataError` when it holds none."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return find_npz(path)
        raise DataError(
            f"{path}: a data file must be a MedMNIST-style .npz; "
            "give the folder for the other formats"
        )
    if not any(not is_stray(entry) for entry in path.iterdir()):
        raise DataError(f"{path}: folder is empty")
    for find in (find_png_tree, find_oasis_raw, find_volume_folder, find_image_folder):
        found = find(path)
        if found is not None:
            return found
    looked_for = "\n".join(f"  {name}: {what}" for name, what in FORMAT_EXPECTATIONS.items())
    raise DataError(f"{path}: no known data format found. Looked for:\n{looked_for}")
