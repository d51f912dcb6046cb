"""New brain slices from a trained run's PixelCNN prior, and how well its VQ-VAE reconstructs.

    python predict.py --run DIR [--num 16] [--temperature 1.0] [--seed 0] [--out DIR]
    python predict.py --run DIR --reconstruct [--data PATH] [--split test] [--num 8]
    python predict.py --run DIR --input FILE [--num 8]

Sampling draws `num` code maps z ~ p(z) = prod_i p(z_i | z_<i) from the PixelCNN in raster
order (logits divided by `temperature`: below 1 sharper, above 1 more varied) and decodes each
with the VQ-VAE decoder into a slice x = D(e_z). The output folder (default RUN/samples) holds

    sample_000.png ...    each slice as an 8-bit greyscale PNG, S x S
    samples.png           all of them in one grid
    samples.nii.gz        all of them as one NIfTI volume (S, S, num), uint8, 1 mm voxels,
                          slice n on the third (axial) axis, oriented for viewers (RAS+)

`--reconstruct` takes `num` slices spread evenly over a split of the data the run was trained
on (or `--data`), `--input` the user's own PNG/JPEG slice or NIfTI volume (`num` axial slices
over the brain's extent); both write reconstructions.png (default RUN/reconstructions or
RUN/input_<file name>): per slice the original, its reconstruction with the SSIM between them, its
code map and the absolute error. An output folder that already holds files is only written
into with `--overwrite`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import nibabel
from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from PIL import Image

import modules
import runs
from dataset import SPLITS, DataError, load_slices
from hyperparameters import Hyperparameters
from runs import RunError, RunFolder
from similarity import ssim_per_slice

DEFAULT_SAMPLES = 16
DEFAULT_RECONSTRUCTIONS = 8
SAMPLE_PATTERN = "sample_{:03d}.png"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".hdr")


# The run ------------------------------------------------------------------------------------


def load_run(
    run_dir: str | Path, require_pixelcnn: bool = True
) -> tuple[Hyperparameters, modules.VQVAE, modules.PixelCNN | None]:
    """A trained run's (Hyperparameters, vqvae, pixelcnn), checked against each other by
    `runs.load_run`. Without `require_pixelcnn` the prior is not loaded and comes back None."""
    stages = runs.STAGES if require_pixelcnn else ("vqvae",)
    hyperparameters, models = runs.load_run(run_dir, stages)
    return hyperparameters, models["vqvae"], models.get("pixelcnn")


def prepare_output_folder(path: Path, overwrite: bool) -> Path:
    """Create `path`; one that already holds files is refused unless `overwrite`."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose another --out")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already holds files; pass --overwrite to write over them")
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) or (N, S, S) floats in [0, 1] -> (N, S, S) uint8, round(255 clip(x, 0, 1))."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        images = images[..., 0]
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def code_colormap(num_embeddings: int) -> Colormap:
    """One distinct colour per code: tab10 or tab20 for up to 20 codes, turbo beyond. Draw a
    code map with `vmin=-0.5, vmax=num_embeddings - 0.5` so code k gets colour k."""
    for name, size in (("tab10", 10), ("tab20", 20)):
        if num_embeddings <= size:
            return ListedColormap(colormaps[name].colors[:num_embeddings], name=f"codes{size}")
    return colormaps["turbo"].resampled(num_embeddings)


def code_ticks(num_embeddings: int) -> np.ndarray:
    """Integer tick positions for a code colour bar: every code up to 20, else about 10."""
    step = 1 if num_embeddings <= 20 else math.ceil(num_embeddings / 10)
    return np.arange(0, num_embeddings, step)


# Sampling -----------------------------------------------------------------------------------


def sample_slices(
    vqvae, pixelcnn, count: int, temperature: float = 1.0, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` code maps from the prior and decode them: (count, h, w) int32 code maps and
    (count, S, S) uint8 slices."""
    if count < 1:
        raise ValueError(f"the number of samples must be at least 1, got {count}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    code_maps = modules.sample_code_maps(pixelcnn, count, temperature=temperature, seed=seed)
    return code_maps, to_uint8(modules.decode_code_maps(vqvae, code_maps))


def slices_to_nifti(slices: np.ndarray) -> nibabel.Nifti1Image:
    """(N, S, S) slices as they are shown (row 0 at the top) -> a (S, S, N) NIfTI volume.

    Voxel (x, y, n) = slices[n, S - 1 - y, x]: x runs left to right along the image's columns,
    y bottom to top along its rows, so a viewer's axial view of plane n shows slice n upright.
    The affine is 1 mm isotropic, axes RAS+, with the origin at the volume's centre.
    """
    slices = np.asarray(slices)
    volume = np.flip(np.transpose(slices, (2, 1, 0)), axis=1)
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(volume.shape) - 1) / 2.0
    image = nibabel.Nifti1Image(np.ascontiguousarray(volume), affine)
    image.header.set_xyzt_units("mm")
    return image


def plot_sample_grid(slices: np.ndarray, title: str) -> Figure:
    """All (N, S, S) uint8 slices in a near-square grid, each labelled with its file number."""
    columns = math.ceil(math.sqrt(len(slices)))
    rows = math.ceil(len(slices) / columns)
    figure = Figure(figsize=(1.8 * columns, 1.8 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.set_axis_off()
        if index < len(slices):
            axis.imshow(slices[index], cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"sample {index:03d}", fontsize=8)
    figure.suptitle(title)
    return figure


def write_samples(
    vqvae, pixelcnn, out: Path, count: int, temperature: float, seed: int | None, run_name: str
) -> list[Path]:
    """Sample, then write sample_NNN.png, samples.png and samples.nii.gz into `out` (which
    must exist); returns the paths written."""
    _, slices = sample_slices(vqvae, pixelcnn, count, temperature, seed)
    for stale in out.glob("sample_*.png"):
        stale.unlink()
    written = []
    for index, image in enumerate(slices):
        path = out / SAMPLE_PATTERN.format(index)
        Image.fromarray(image, mode="L").save(path)
        written.append(path)
    title = f"{run_name}: {count} PixelCNN samples, temperature {temperature:g}, seed {seed}"
    plot_sample_grid(slices, title).savefig(out / "samples.png", dpi=100)
    nibabel.save(slices_to_nifti(slices), out / "samples.nii.gz")
    return [*written, out / "samples.png", out / "samples.nii.gz"]


# Reconstruction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconstructions:
    """Slices passed through the VQ-VAE, all aligned on the first axis (N)."""

    originals: np.ndarray  # (N, S, S, 1) float32 in [0, 1]
    reconstructions: np.ndarray  # (N, S, S, 1) float32 in [0, 1]
    code_maps: np.ndarray  # (N, h, w) int32
    ssim: np.ndarray  # (N,) float64
    labels: list[str]  # what each slice is, e.g. "subject 441, slice 12"


def reconstruct(vqvae, images: np.ndarray, labels: list[str]) -> Reconstructions:
    """Encode (N, S, S, 1) images in [0, 1] to code maps and reconstruct them (clipped to
    [0, 1], as `similarity.score_model` scores them)."""
    reconstructions = np.clip(vqvae.predict(images, verbose=0), 0.0, 1.0).astype(np.float32)
    return Reconstructions(
        originals=images,
        reconstructions=reconstructions,
        code_maps=modules.encode_code_maps(vqvae, images),
        ssim=ssim_per_slice(images, reconstructions),
        labels=list(labels),
    )


def spread_indices(count: int, num: int) -> np.ndarray:
    """`num` distinct indices into `count` items, evenly spaced from the first to the last."""
    if count < 1:
        raise ValueError("there are no slices to choose from")
    return np.unique(np.round(np.linspace(0, count - 1, min(num, count))).astype(int))


def split_slices(
    data: Path, hyperparameters: Hyperparameters, split: str, num: int
) -> tuple[np.ndarray, list[str]]:
    """`num` slices spread over `split` of the dataset at `data`, loaded as the run saw them:
    (num, S, S, 1) float32 in [0, 1] and a label per slice."""
    slices = load_slices(
        data,
        image_size=hyperparameters.image_size,
        slices_per_volume=hyperparameters.slices_per_volume,
        seed=hyperparameters.seed,
    )
    chosen = slices.splits.get(split)
    if chosen is None or len(chosen) == 0:
        raise DataError(f"{data}: the {split!r} split holds no slices")
    indices = spread_indices(len(chosen), num)
    labels = [
        f"subject {chosen.subject_ids[index]}, slice {chosen.slice_indices[index]}"
        for index in indices
    ]
    return chosen.float_images()[indices], labels


def input_slices(path: Path, image_size: int, num: int) -> tuple[np.ndarray, list[str]]:
    """The user's own file as (M, S, S, 1) float32 slices in [0, 1] and a label per slice.

    A PNG/JPEG slice gives one slice; a NIfTI (.nii, .nii.gz), MGH (.mgz) or Analyze (.hdr +
    .img) volume gives `num` axial slices spread over the brain's extent, inferior to superior;
    a volume of one plane (X, Y) or (X, Y, 1) gives that plane. The file is read exactly as
    `dataset.load_slices` reads a folder of such files (reorientation, foreground crop,
    percentile intensity scaling, padding to a square, resizing), by loading a temporary folder
    that holds only a link to it.
    """
    suffix = _input_suffix(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with tempfile.TemporaryDirectory() as temporary:
        staged = Path(temporary) / "input"
        staged.mkdir()
        if suffix in IMAGE_SUFFIXES:
            _link(path, staged / path.name)
            planes = 1
        else:
            planes = _stage_volume(path, suffix, staged, num)
        slices = load_slices(
            staged,
            image_size=image_size,
            slices_per_volume=planes,
            cache_dir=Path(temporary) / "cache",
        )
    images = np.concatenate([slice_set.images for slice_set in slices.splits.values()])
    labels = [f"{path.name}: slice {index + 1} of {planes}" for index in range(len(images))]
    return images[..., None] / np.float32(255.0), labels if planes > 1 else [path.name]


def _input_suffix(path: Path) -> str:
    """The file's type suffix (".nii.gz" counts as one); a `DataError` for other types."""
    name = path.name.lower()
    suffix = next((s for s in (*IMAGE_SUFFIXES, *VOLUME_SUFFIXES) if name.endswith(s)), None)
    if suffix is None:
        expected = ", ".join((*IMAGE_SUFFIXES, *VOLUME_SUFFIXES))
        raise DataError(f"{path}: cannot read this type of file; expected one of {expected}")
    return suffix


def _stage_volume(path: Path, suffix: str, folder: Path, num: int) -> int:
    """Put the volume at `path` into `folder` for `load_slices`; returns how many axial slices
    to take from it: `num`, or 1 for a single plane. A 2-D image is written as (X, Y, 1)."""
    try:
        image = nibabel.load(path)
    except Exception as error:  # nibabel raises many types on damaged or foreign files
        raise DataError(f"{path}: cannot read volume ({type(error).__name__}: {error})") from None
    shape = image.shape
    if len(shape) == 2:
        plane = nibabel.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine)
        nibabel.save(plane, folder / "input.nii.gz")
        return 1
    _link(path, folder / path.name)
    if suffix == ".hdr":
        _link(path.with_suffix(".img"), folder / path.with_suffix(".img").name)
    return 1 if all(size == 1 for size in shape[2:]) else num


def _link(source: Path, link: Path) -> None:
    """A symbolic link to `source`, or a copy where links cannot be made."""
    try:
        link.symlink_to(source.resolve())
    except OSError:
        shutil.copyfile(source, link)


def training_data_path(run_dir: Path) -> Path:
    """The dataset a run was trained on, as recorded in its metrics.json."""
    run = RunFolder(run_dir)
    recorded = run.read_metrics().get("data")
    if not recorded:
        raise RunError(f"{run.metrics} does not name the training data; pass --data")
    if not Path(recorded).exists():
        raise RunError(
            f"the run was trained on {recorded} (from {run.metrics}), which does not exist "
            "here; pass --data"
        )
    return Path(recorded)


def plot_reconstructions(result: Reconstructions, num_embeddings: int, title: str) -> Figure:
    """One row per slice: original, reconstruction (titled with its SSIM), code map coloured
    by code, and |original - reconstruction|; shared colour bars for codes and error."""
    rows = len(result.ssim)
    figure = Figure(figsize=(10.5, 2.4 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, 4, squeeze=False)
    errors = np.abs(result.originals - result.reconstructions)[..., 0]
    error_limit = max(float(errors.max()), 1e-3)
    colours = code_colormap(num_embeddings)
    for row in range(rows):
        original, reconstruction, code_axis, error_axis = axes[row]
        original.imshow(result.originals[row, ..., 0], cmap="gray", vmin=0, vmax=1)
        original.set_title(f"original: {result.labels[row]}", fontsize=9)
        reconstruction.imshow(result.reconstructions[row, ..., 0], cmap="gray", vmin=0, vmax=1)
        reconstruction.set_title(f"reconstruction: SSIM {result.ssim[row]:.3f}", fontsize=9)
        codes = code_axis.imshow(
            result.code_maps[row], cmap=colours, vmin=-0.5, vmax=num_embeddings - 0.5
        )
        side = result.code_maps.shape[1]
        code_axis.set_title(f"code map ({side}x{result.code_maps.shape[2]})", fontsize=9)
        error = error_axis.imshow(errors[row], cmap="magma", vmin=0, vmax=error_limit)
        error_axis.set_title(f"|error|: mean {errors[row].mean():.3f}", fontsize=9)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    code_bar = figure.colorbar(codes, ax=axes[:, 2], label="code", shrink=0.8)
    code_bar.set_ticks(code_ticks(num_embeddings))
    figure.colorbar(error, ax=axes[:, 3], label="absolute error", shrink=0.8)
    figure.suptitle(title)
    return figure


def write_reconstructions(
    vqvae,
    hyperparameters: Hyperparameters,
    images: np.ndarray,
    labels: list[str],
    out: Path,
    title: str,
) -> list[Path]:
    """Reconstruct (N, S, S, 1) images and write out/reconstructions.png."""
    result = reconstruct(vqvae, images, labels)
    title = f"{title}: mean SSIM {result.ssim.mean():.3f}"
    figure = plot_reconstructions(result, hyperparameters.num_embeddings, title)
    figure.savefig(out / "reconstructions.png", dpi=100)
    return [out / "reconstructions.png"]


# Command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder made by train.py")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--reconstruct", action="store_true", help="reconstruct slices of a dataset split"
    )
    mode.add_argument("--input", metavar="FILE", help="reconstruct your own PNG/JPEG or NIfTI")
    parser.add_argument(
        "--num",
        type=int,
        help=f"slices to generate ({DEFAULT_SAMPLES}) or reconstruct ({DEFAULT_RECONSTRUCTIONS})",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--data", help="with --reconstruct: dataset (default: the run's)")
    parser.add_argument("--split", choices=SPLITS, help="with --reconstruct: split (test)")
    parser.add_argument("--out", help="output folder (default inside the run folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def default_output_folder(arguments: argparse.Namespace) -> Path:
    """RUN/samples, RUN/reconstructions or RUN/input_<file name, "." as "_">."""
    if arguments.out:
        return Path(arguments.out)
    run = Path(arguments.run)
    if arguments.reconstruct:
        return run / "reconstructions"
    if arguments.input:
        return run / f"input_{Path(arguments.input).name.replace('.', '_')}"
    return run / "samples"


def run_prediction(arguments: argparse.Namespace) -> list[Path]:
    """Everything `python predict.py` does; returns the files written."""
    generating = not (arguments.reconstruct or arguments.input)
    num = arguments.num
    if num is None:
        num = DEFAULT_SAMPLES if generating else DEFAULT_RECONSTRUCTIONS
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    run_dir = Path(arguments.run)
    hyperparameters, vqvae, pixelcnn = load_run(run_dir, require_pixelcnn=generating)
    out = prepare_output_folder(default_output_folder(arguments), arguments.overwrite)
    if generating:
        return write_samples(
            vqvae, pixelcnn, out, num, arguments.temperature, arguments.seed, run_dir.name
        )
    if arguments.reconstruct:
        data = Path(arguments.data) if arguments.data else training_data_path(run_dir)
        split = arguments.split or "test"
        images, labels = split_slices(data, hyperparameters, split, num)
        title = f"{run_dir.name} on the {split} split of {data.name}"
    else:
        images, labels = input_slices(Path(arguments.input), hyperparameters.image_size, num)
        title = f"{run_dir.name} on {Path(arguments.input).name}"
    return write_reconstructions(vqvae, hyperparameters, images, labels, out, title)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if (arguments.data or arguments.split) and not arguments.reconstruct:
        parser.error("--data and --split only apply with --reconstruct")
    try:
        written = run_prediction(arguments)
    except (RunError, DataError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
