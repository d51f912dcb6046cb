"""How good a trained run is: reconstruction SSIM, PSNR and MAE per slice, and its samples.

    python similarity.py --run DIR [--data PATH] [--split test] [--samples 64] [--json]

All three compare images on the [0, 1] scale, shaped (N, S, S, 1):

- SSIM (Wang et al., 2004) with an 11x11 Gaussian window of sigma 1.5, data range 1,
  K1 = 0.01, K2 = 0.03, averaged over the window positions that lie wholly inside the image
  (the same numbers as `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`);
- PSNR = 10 log10(1 / MSE) in dB, with MSE floored at 1e-10 so a perfect copy scores 100 dB;
- MAE = mean |x - y|.

The mission's target is a mean SSIM of at least `ssim_target` (0.6) on held-out slices.

SSIM says nothing about generated slices, so the prior is judged too: its negative
log-likelihood of the split's code maps in bits per code (against log2 K for a uniform prior);
diversity, the mean pairwise SSIM among samples (lower is more diverse; compare the same number
for real slices); novelty, each sample's highest SSIM to any training slice (near 1 means the
prior copies its training set); and the share of each code in samples against real code maps.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_vqvae.metrics import (
    bits_per_code,
    code_usage,
    mae_per_slice,
    psnr_per_slice,
    ssim_per_slice,
)


@dataclass(frozen=True)
class SliceScores:
    """Per-slice scores of one split, each an (N,) array aligned with the split's slices."""

    ssim: np.ndarray
    psnr: np.ndarray
    mae: np.ndarray

    def summary(self, ssim_target: float) -> dict[str, float | int]:
        """The headline numbers: SSIM mean/median/5th percentile, the fraction of slices at or
        above the target, mean PSNR and MAE, and the slice count."""
        return {
            "slices": len(self.ssim),
            "ssim_mean": float(np.mean(self.ssim)),
            "ssim_median": float(np.median(self.ssim)),
            "ssim_p05": float(np.percentile(self.ssim, 5)),
            "fraction_above_target": float(np.mean(self.ssim >= ssim_target)),
            "ssim_target": ssim_target,
            "psnr_mean": float(np.mean(self.psnr)),
            "mae_mean": float(np.mean(self.mae)),
        }


def score_reconstructions(originals: np.ndarray, reconstructions: np.ndarray) -> SliceScores:
    """SSIM, PSNR and MAE of each (original, reconstruction) pair, both (N, S, S, 1) in [0, 1]."""
    return SliceScores(
        ssim=ssim_per_slice(originals, reconstructions),
        psnr=psnr_per_slice(originals, reconstructions),
        mae=mae_per_slice(originals, reconstructions),
    )


def score_model(vqvae, images: np.ndarray, batch_size: int = 64) -> SliceScores:
    """Reconstruct `images` (N, S, S, 1) in [0, 1] with `vqvae` and score every slice."""
    reconstructions = np.clip(vqvae.predict(images, batch_size=batch_size, verbose=0), 0.0, 1.0)
    return score_reconstructions(images, reconstructions)


# Generation quality ------------------------------------------------------------------------


def pairwise_ssim_mean(images: np.ndarray) -> float:
    """Diversity of a set of slices: mean SSIM over all distinct pairs (lower = more diverse).
    (N, S, S, 1) with N >= 2 -> float."""
    first, second = np.triu_indices(len(images), k=1)
    if len(first) == 0:
        raise ValueError("diversity needs at least two images")
    return float(np.mean(ssim_per_slice(images[first], images[second])))


def novelty_ssim(
    samples: np.ndarray, reference: np.ndarray, candidates: int = 16, chunk: int = 512
) -> np.ndarray:
    """For each sample, the highest SSIM to any reference (training) slice: near 1 means the
    generator reproduced a training slice. (M, S, S, 1), (N, S, S, 1) -> (M,).

    Exact SSIM against every reference slice costs M x N window passes, so each sample is
    compared with its `candidates` nearest reference slices by Euclidean distance (found with
    one matrix product per chunk); a copy of a training slice is always its nearest neighbour.
    """
    flat_samples = samples.reshape(len(samples), -1).astype(np.float32)
    sample_norms = np.square(flat_samples).sum(axis=1)
    distances = []
    for start in range(0, len(reference), chunk):
        block = reference[start : start + chunk].reshape(-1, flat_samples.shape[1])
        block = block.astype(np.float32)
        distances.append(
            sample_norms[:, None] - 2 * flat_samples @ block.T + np.square(block).sum(axis=1)
        )
    nearest = np.argsort(np.concatenate(distances, axis=1), axis=1)[:, :candidates]
    repeated_samples = np.repeat(samples, nearest.shape[1], axis=0)
    scores = ssim_per_slice(repeated_samples, reference[nearest.ravel()])
    return scores.reshape(nearest.shape).max(axis=1)


# Figures -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_ssim_histogram(ssim: np.ndarray, ssim_target: float, path: Path) -> Path:
    """Histogram of per-slice SSIM with the target and the mean drawn."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(ssim, bins=40, range=(min(0.0, ssim.min()), 1.0), color="steelblue")
    axis.axvline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.axvline(ssim.mean(), color="black", label=f"mean {ssim.mean():.3f}")
    axis.set(xlabel="SSIM", ylabel="slices", title=f"Reconstruction SSIM of {len(ssim)} slices")
    axis.legend()
    return _save(figure, path)


def plot_ssim_by_slice(
    ssim: np.ndarray, slice_indices: np.ndarray, ssim_target: float, path: Path
) -> Path:
    """Median and interquartile range of SSIM at each slice position (inferior to superior)."""
    plt = _pyplot()
    positions = np.unique(slice_indices)
    groups = [ssim[slice_indices == position] for position in positions]
    quartiles = np.array([np.percentile(group, (25, 50, 75)) for group in groups])
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.fill_between(positions, quartiles[:, 0], quartiles[:, 2], alpha=0.3, label="25–75%")
    axis.plot(positions, quartiles[:, 1], marker="o", label="median")
    axis.axhline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.set(xlabel="slice index (inferior → superior)", ylabel="SSIM", title="SSIM by slice")
    axis.legend()
    return _save(figure, path)


def plot_ssim_history(history_csv: Path, ssim_target: float, path: Path) -> Path:
    """SSIM per training epoch (training and validation) from a VQ-VAE history CSV."""
    plt = _pyplot()
    table = np.genfromtxt(history_csv, delimiter=",", names=True, ndmin=1)
    figure, axis = plt.subplots(figsize=(6, 4))
    for column in ("ssim", "val_ssim", "val_ssim_p05"):
        if column in table.dtype.names:
            axis.plot(table["epoch"] + 1, table[column], marker=".", label=column)
    axis.axhline(ssim_target, color="red", linestyle="--", label=f"target {ssim_target}")
    axis.set(xlabel="epoch", ylabel="SSIM", ylim=(0, 1), title="VQ-VAE reconstruction SSIM")
    axis.legend()
    return _save(figure, path)


def plot_worst_slices(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    ssim: np.ndarray,
    labels: list[str],
    path: Path,
    count: int = 6,
) -> Path:
    """The `count` lowest-SSIM slices: original above, reconstruction below."""
    plt = _pyplot()
    worst = np.argsort(ssim)[:count]
    figure, axes = plt.subplots(2, len(worst), figsize=(2.2 * len(worst), 4.8), squeeze=False)
    for column, index in enumerate(worst):
        axes[0, column].imshow(originals[index, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"{labels[index]}\nSSIM {ssim[index]:.3f}", fontsize=8)
        axes[1, column].imshow(reconstructions[index, ..., 0], cmap="gray", vmin=0, vmax=1)
    for axis in axes.ravel():
        axis.axis("off")
    axes[0, 0].text(-0.1, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90)
    axes[1, 0].text(-0.1, 0.5, "reconstruction", transform=axes[1, 0].transAxes, rotation=90)
    return _save(figure, path)


def plot_code_usage(real: np.ndarray, sampled: np.ndarray, path: Path) -> Path:
    """Share of each code in real code maps beside its share in sampled ones."""
    plt = _pyplot()
    codes = np.arange(len(real))
    figure, axis = plt.subplots(figsize=(max(6, len(real) * 0.15), 4))
    axis.bar(codes - 0.2, real, width=0.4, label="real slices")
    axis.bar(codes + 0.2, sampled, width=0.4, label="PixelCNN samples")
    axis.set(xlabel="code", ylabel="share of positions", title="Code usage")
    axis.legend()
    return _save(figure, path)


# Evaluating a run --------------------------------------------------------------------------


def evaluate_run(
    run_dir: Path,
    data: Path | None = None,
    split: str = "test",
    samples: int = 64,
    seed: int = 0,
    out: Path | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Score a trained run's reconstructions of `split` and its prior's samples; write the
    figures into `out` (default `run_dir/similarity_<split>`) and return the numbers."""
    from dataset import load_slices
    from modules import decode_code_maps, encode_code_maps, sample_code_maps
    from runs import RunError, RunFolder, load_run

    run = RunFolder(Path(run_dir))
    stages = ("vqvae", "pixelcnn") if run.model("pixelcnn").exists() else ("vqvae",)
    hyperparameters, models = load_run(run.path, stages)
    vqvae, pixelcnn = models["vqvae"], models.get("pixelcnn")
    source = Path(data) if data else Path(run.read_metrics().get("data", ""))
    if not data and not source.name:
        raise RunError(f"{run.path}: metrics.json does not name the training data; pass --data")
    slices = load_slices(
        source,
        image_size=hyperparameters.image_size,
        slices_per_volume=hyperparameters.slices_per_volume,
        seed=hyperparameters.seed,
        cache_dir=cache_dir,
    )
    if split not in slices.splits or len(slices.splits[split]) == 0:
        raise RunError(f"{source} has no slices in the {split!r} split")
    chosen = slices.splits[split]
    out = Path(out) if out else run.path / f"similarity_{split}"
    out.mkdir(parents=True, exist_ok=True)

    images = chosen.float_images()
    reconstructions = np.clip(vqvae.predict(images, batch_size=64, verbose=0), 0.0, 1.0)
    scores = score_reconstructions(images, reconstructions)
    target = hyperparameters.ssim_target
    report = {"run": str(run.path), "data": str(source), "split": split}
    report |= scores.summary(target)
    labels = [f"{s} #{i}" for s, i in zip(chosen.subject_ids, chosen.slice_indices, strict=True)]
    figures = [
        plot_ssim_histogram(scores.ssim, target, out / "ssim_histogram.png"),
        plot_ssim_by_slice(scores.ssim, chosen.slice_indices, target, out / "ssim_by_slice.png"),
        plot_worst_slices(images, reconstructions, scores.ssim, labels, out / "worst_slices.png"),
    ]
    if run.history("vqvae").exists():
        figures.append(plot_ssim_history(run.history("vqvae"), target, out / "ssim_per_epoch.png"))

    if pixelcnn is not None:
        real_codes = encode_code_maps(vqvae, images)
        logits = pixelcnn.predict(real_codes, batch_size=64, verbose=0)
        report["prior_bits_per_code"] = bits_per_code(logits, real_codes)
        report["uniform_bits_per_code"] = float(np.log2(hyperparameters.num_embeddings))
        sampled_codes = sample_code_maps(pixelcnn, samples, seed=seed)
        generated = decode_code_maps(vqvae, sampled_codes)
        novelty = novelty_ssim(generated, slices.splits["train"].float_images())
        real_usage = code_usage(real_codes, hyperparameters.num_embeddings)
        sampled_usage = code_usage(sampled_codes, hyperparameters.num_embeddings)
        report |= {
            "samples": samples,
            "sample_diversity_ssim": pairwise_ssim_mean(generated),
            "real_diversity_ssim": pairwise_ssim_mean(images[: min(len(images), samples)]),
            "novelty_ssim_mean": float(novelty.mean()),
            "novelty_ssim_max": float(novelty.max()),
            "code_usage_total_variation": float(0.5 * np.abs(real_usage - sampled_usage).sum()),
        }
        figures.append(plot_code_usage(real_usage, sampled_usage, out / "code_usage.png"))
    report["figures"] = [str(path) for path in figures]
    return report


def format_report(report: dict) -> str:
    """The summary table printed by `python similarity.py`."""
    rows = [
        ("slices", f"{report['slices']}"),
        ("SSIM mean", f"{report['ssim_mean']:.4f}"),
        ("SSIM median", f"{report['ssim_median']:.4f}"),
        ("SSIM 5th percentile", f"{report['ssim_p05']:.4f}"),
        (f"fraction SSIM >= {report['ssim_target']}", f"{report['fraction_above_target']:.1%}"),
        ("PSNR mean (dB)", f"{report['psnr_mean']:.2f}"),
        ("MAE mean", f"{report['mae_mean']:.4f}"),
    ]
    if "prior_bits_per_code" in report:
        rows += [
            (
                "prior NLL (bits/code)",
                f"{report['prior_bits_per_code']:.3f} "
                f"(uniform {report['uniform_bits_per_code']:.3f})",
            ),
            ("sample diversity (pairwise SSIM)", f"{report['sample_diversity_ssim']:.4f}"),
            ("real diversity (pairwise SSIM)", f"{report['real_diversity_ssim']:.4f}"),
            ("novelty (max SSIM to train), mean", f"{report['novelty_ssim_mean']:.4f}"),
            ("code usage total variation", f"{report['code_usage_total_variation']:.4f}"),
        ]
    width = max(len(name) for name, _ in rows)
    title = f"{report['run']} on the {report['split']} split of {report['data']}"
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from dataset import DataError
    from runs import RunError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder made by train.py")
    parser.add_argument("--data", help="dataset (default: the one the run was trained on)")
    parser.add_argument("--split", default="test", choices=("train", "validate", "test"))
    parser.add_argument("--samples", type=int, default=64, help="PixelCNN samples to judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="figure folder (default RUN/similarity_<split>)")
    parser.add_argument("--cache-dir", help="where decoded slices are cached")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args(argv)
    if arguments.samples < 2:
        parser.error("--samples must be at least 2")
    try:
        report = evaluate_run(
            Path(arguments.run),
            arguments.data,
            arguments.split,
            arguments.samples,
            arguments.seed,
            arguments.out,
            arguments.cache_dir,
        )
    except (RunError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report) if arguments.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
