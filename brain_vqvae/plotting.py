"""The figures of training, generation and evaluation, drawn with matplotlib's object API
(`matplotlib.figure.Figure`, no global pyplot state) and saved as PNG.

Every `plot_*` function that takes a `path` writes the figure there and returns the path; the
others return the `Figure` for the caller to save.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure

from brain_vqvae.runs import AUTOENCODER_STAGES, STAGES, RunFolder

DPI = 100
TITLE_CHARACTERS_PER_INCH = 9  # of a 12 pt figure title
MIN_TITLED_WIDTH = 4.8  # inches: room for a title of a run name and its settings


def save_figure(figure: Figure, path: Path) -> Path:
    """Write `figure` as a PNG at `path`."""
    figure.savefig(path, dpi=DPI)
    return path


def set_title(figure: Figure, title: str) -> None:
    """`title` above the whole `figure`, wrapped at about `TITLE_CHARACTERS_PER_INCH` of the
    figure's width so that a long title (a run name, the conditions, the sampling) is not cut
    at the figure's edges (lines break between words only)."""
    width = int(figure.get_figwidth() * TITLE_CHARACTERS_PER_INCH)
    figure.suptitle(textwrap.fill(title, width, break_long_words=False, break_on_hyphens=False))


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


# Training ----------------------------------------------------------------------------------


def _history(path: Path) -> np.ndarray:
    return np.genfromtxt(path, delimiter=",", names=True, ndmin=1)


def plot_ssim_history(history_csv: Path, ssim_target: float, path: Path) -> Path:
    """SSIM per training epoch (training and validation) from a VQ-VAE history CSV."""
    table = _history(history_csv)
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for column in ("ssim", "val_ssim", "val_ssim_p05"):
        if column in table.dtype.names:
            axis.plot(table["epoch"] + 1, table[column], marker=".", label=column)
    axis.axhline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.set(xlabel="epoch", ylabel="SSIM", ylim=(0, 1), title="VQ-VAE reconstruction SSIM")
    axis.legend()
    return save_figure(figure, path)


def plot_histories(run: RunFolder, ssim_target: float) -> list[Path]:
    """loss.png (training and validation loss of each stage trained so far) and ssim.png (SSIM
    per epoch with the target drawn) from the run's CSV histories."""
    histories = {
        stage: _history(run.history(stage)) for stage in STAGES if run.history(stage).exists()
    }
    figure = Figure(figsize=(6 * len(histories), 4), layout="constrained")
    axes = figure.subplots(1, len(histories), squeeze=False)[0]
    for axis, (stage, history) in zip(axes, histories.items(), strict=True):
        for column in ("loss", "val_loss", "reconstruction_loss", "val_reconstruction_loss"):
            if column in history.dtype.names:
                axis.plot(history["epoch"] + 1, history[column], marker=".", label=column)
        axis.set(title=stage, xlabel="epoch", ylabel="loss", yscale="log")
        axis.legend()
    written = [save_figure(figure, run.path / "loss.png")]
    for stage in AUTOENCODER_STAGES:
        if stage in histories:
            written.append(
                plot_ssim_history(run.history(stage), ssim_target, run.path / "ssim.png")
            )
    return written


# Generation and reconstruction -------------------------------------------------------------


def plot_sample_grid(slices: np.ndarray, title: str, labels: list[str] | None = None) -> Figure:
    """All (N, S, S) uint8 slices in a near-square grid, each titled with its label (default:
    its file number), under `title` (the figure at least `MIN_TITLED_WIDTH` wide for it)."""
    columns = math.ceil(math.sqrt(len(slices)))
    rows = math.ceil(len(slices) / columns)
    labels = labels or [f"sample {index:03d}" for index in range(len(slices))]
    figure = Figure(
        figsize=(max(1.8 * columns, MIN_TITLED_WIDTH), 1.8 * rows + 0.6), layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.set_axis_off()
        if index < len(slices):
            axis.imshow(slices[index], cmap="gray", vmin=0, vmax=255)
            axis.set_title(labels[index], fontsize=8)
    set_title(figure, title)
    return figure


def plot_volume(volume: np.ndarray, spacing_mm: tuple[float, float], title: str) -> Figure:
    """One volume (D, S, S) uint8 of axial slices, bottom to top: the slices in a grid (8 per
    row, each titled with its index), and below them a coronal cut through its middle row
    (superior at the top, the subject's left on the left) and a sagittal cut through its middle
    column (superior at the top, anterior on the left), stretched by the (pixel, slice)
    `spacing_mm` so the brain has its true proportions."""
    depth, size = volume.shape[0], volume.shape[1]
    columns = min(8, depth)
    rows = math.ceil(depth / columns)
    figure = Figure(figsize=(1.5 * columns, 1.5 * rows + 3.6), layout="constrained")
    axial, cuts = figure.subfigures(2, 1, height_ratios=[1.5 * rows, 3.2])
    for index, axis in enumerate(axial.subplots(rows, columns, squeeze=False).ravel()):
        axis.set_axis_off()
        if index < depth:
            axis.imshow(volume[index], cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"slice {index}", fontsize=7)
    coronal = volume[::-1, size // 2, :]  # [D, S]: superior at the top
    sagittal = volume[::-1, :, size // 2]  # [D, S]: anterior on the left
    pixel, gap = spacing_mm
    for axis, cut, name in zip(
        cuts.subplots(1, 2), (coronal, sagittal), ("coronal", "sagittal"), strict=True
    ):
        axis.imshow(cut, cmap="gray", vmin=0, vmax=255, aspect=gap / pixel)
        axis.set_title(f"{name} cut through the middle", fontsize=9)
        axis.set_axis_off()
    set_title(figure, title)
    return figure


def plot_reconstructions(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    code_maps: np.ndarray | None,
    ssim: np.ndarray,
    labels: list[str],
    num_embeddings: int,
    title: str,
) -> Figure:
    """One row per slice: original (N, S, S, 1), reconstruction (titled with its SSIM), code map
    (N, h, w) coloured by code, and |original - reconstruction|; shared colour bars for codes
    and error. Without `code_maps` (a VAE run) the code map column is left out."""
    rows = len(ssim)
    columns = 3 if code_maps is None else 4
    figure = Figure(figsize=(2.6 * columns + 0.1, 2.4 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    errors = np.abs(originals - reconstructions)[..., 0]
    error_limit = max(float(errors.max()), 1e-3)
    colours = code_colormap(num_embeddings)
    for row in range(rows):
        original, reconstruction, error_axis = axes[row][0], axes[row][1], axes[row][-1]
        original.imshow(originals[row, ..., 0], cmap="gray", vmin=0, vmax=1)
        original.set_title(f"original: {labels[row]}", fontsize=9)
        reconstruction.imshow(reconstructions[row, ..., 0], cmap="gray", vmin=0, vmax=1)
        reconstruction.set_title(f"reconstruction: SSIM {ssim[row]:.3f}", fontsize=9)
        if code_maps is not None:
            code_axis = axes[row][2]
            codes = code_axis.imshow(
                code_maps[row], cmap=colours, vmin=-0.5, vmax=num_embeddings - 0.5
            )
            code_axis.set_title(f"code map ({code_maps.shape[1]}x{code_maps.shape[2]})", fontsize=9)
        error = error_axis.imshow(errors[row], cmap="magma", vmin=0, vmax=error_limit)
        error_axis.set_title(f"|error|: mean {errors[row].mean():.3f}", fontsize=9)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    if code_maps is not None:
        code_bar = figure.colorbar(codes, ax=axes[:, 2], label="code", shrink=0.8)
        code_bar.set_ticks(code_ticks(num_embeddings))
    figure.colorbar(error, ax=axes[:, -1], label="absolute error", shrink=0.8)
    set_title(figure, title)
    return figure


# Evaluation --------------------------------------------------------------------------------


def plot_ssim_histogram(ssim: np.ndarray, ssim_target: float, path: Path) -> Path:
    """Histogram of per-slice SSIM with the target and the mean drawn."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    axis.hist(ssim, bins=40, range=(min(0.0, ssim.min()), 1.0), color="steelblue")
    axis.axvline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.axvline(ssim.mean(), color="black", label=f"mean {ssim.mean():.3f}")
    axis.set(xlabel="SSIM", ylabel="slices", title=f"Reconstruction SSIM of {len(ssim)} slices")
    axis.legend()
    return save_figure(figure, path)


def plot_ssim_by_slice(
    ssim: np.ndarray, slice_indices: np.ndarray, ssim_target: float, path: Path
) -> Path:
    """Median and interquartile range of SSIM at each slice position (inferior to superior)."""
    positions = np.unique(slice_indices)
    groups = [ssim[slice_indices == position] for position in positions]
    quartiles = np.array([np.percentile(group, (25, 50, 75)) for group in groups])
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    axis.fill_between(positions, quartiles[:, 0], quartiles[:, 2], alpha=0.3, label="25–75%")
    axis.plot(positions, quartiles[:, 1], marker="o", label="median")
    axis.axhline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.set(xlabel="slice index (inferior → superior)", ylabel="SSIM", title="SSIM by slice")
    axis.legend()
    return save_figure(figure, path)


def plot_worst_slices(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    ssim: np.ndarray,
    labels: list[str],
    path: Path,
    count: int = 6,
) -> Path:
    """The `count` lowest-SSIM slices: original above, reconstruction below."""
    worst = np.argsort(ssim)[:count]
    figure = Figure(figsize=(2.2 * len(worst), 4.8), layout="constrained")
    axes = figure.subplots(2, len(worst), squeeze=False)
    for column, index in enumerate(worst):
        axes[0, column].imshow(originals[index, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"{labels[index]}\nSSIM {ssim[index]:.3f}", fontsize=8)
        axes[1, column].imshow(reconstructions[index, ..., 0], cmap="gray", vmin=0, vmax=1)
    for axis in axes.ravel():
        axis.axis("off")
    axes[0, 0].text(-0.1, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90)
    axes[1, 0].text(-0.1, 0.5, "reconstruction", transform=axes[1, 0].transAxes, rotation=90)
    return save_figure(figure, path)


def plot_code_usage(real: np.ndarray, sampled: np.ndarray, path: Path) -> Path:
    """Share of each code in real code maps beside its share in sampled ones (at most 16 inches
    wide: a large codebook's bars become thin)."""
    codes = np.arange(len(real))
    figure = Figure(figsize=(min(max(6, len(real) * 0.15), 16), 4), layout="constrained")
    axis = figure.subplots()
    axis.bar(codes - 0.2, real, width=0.4, label="real slices")
    axis.bar(codes + 0.2, sampled, width=0.4, label="PixelCNN samples")
    axis.set(xlabel="code", ylabel="share of positions", title="Code usage")
    axis.legend()
    return save_figure(figure, path)
