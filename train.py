"""Train the two-stage model: a VQ-VAE on brain slices, then a PixelCNN prior on its code maps.

    python train.py [--data PATH] [--out runs/NAME]
                    [--stage all|vqvae|adversarial|pixelcnn|vae]
                    [--resume] [--overwrite] [--tensorboard] [--preset card|hifi] [--FIELD VALUE]
                    [--strategy default|mirrored|multiworker] [--device auto|cpu|gpu]

Without --data it trains on the data the run in --out was trained on (a run resumed or a stage
retrained), or else on the synthetic demo dataset in data/demo, building it first if it is
missing. Stage 1 fits the VQ-VAE to the training split, the adversarial stage a copy of its
decoder against a discriminator (to decode sampled code maps; `--epochs-adversarial 0` skips
it), stage 2 the PixelCNN to the training split's code maps; the test split is then scored once
(brain_vqvae/training.py). `--model vae`
trains the classical baseline instead, a Gaussian VAE with the same encoder and decoder, in one
stage ("vae"): it samples N(0, I) and has no prior to train. Every file of
the run folder is written atomically, so a run killed at any moment keeps its last good
checkpoint, and `--resume` continues from it. `--strategy` trains on every local GPU or on a
cluster (README, "Multiple devices and clusters"). The preset's batch size and learning rates
are the ones for the device Keras finds (`--device`; `hyperparameters.GPU_BATCH_SIZES` for a
GPU, for now the presets' own), unless given; the first line printed says which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brain_vqvae.data import DataError
from brain_vqvae.devices import describe_batch_choice, found_device
from brain_vqvae.runs import STAGES, RunError, RunFolder, training_data_path
from brain_vqvae.training import STRATEGIES, make_strategy, resolve_hyperparameters, train_run
from hyperparameters import (
    ADVERSARIAL_FIELDS,
    DEVICES,
    PRIOR_FIELDS,
    add_hyperparameter_arguments,
    hyperparameters_from_arguments,
)

PROJECT_DIR = Path(__file__).resolve().parent
DEMO_DATA_DIR = PROJECT_DIR / "data" / "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        help="dataset path, any format dataset.py reads (default: the run's own in --out, or "
        "the demo dataset)",
    )
    parser.add_argument(
        "--out", help="run folder (default runs/<data>-<preset>, runs/<data>-<preset>-vae)"
    )
    parser.add_argument("--stage", choices=("all", *STAGES), default="all")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable data files")
    parser.add_argument("--cache-dir", help="where decoded slices are cached")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help="default: one device; mirrored: every local GPU (or the visible CPU devices); "
        "multiworker: every worker of the cluster in TF_CONFIG (see README)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", *DEVICES),
        default="auto",
        help="the device the preset's batch size and learning rates are chosen for (auto: a "
        "GPU when Keras sees one); --batch-size and the learning rates override it",
    )
    add_hyperparameter_arguments(parser)
    return parser


def data_path(arguments: argparse.Namespace) -> Path:
    """The dataset to train on: --data; else the one the run in --out was trained on, when it
    names one (a run resumed, a stage retrained); else the demo dataset (built on first use)."""
    if arguments.data is not None:
        return Path(arguments.data).resolve()
    folder = None if arguments.out is None else RunFolder(Path(arguments.out))
    if folder is not None and folder.recorded_training_data():
        source = training_data_path(folder)
        print(f"data: {source}, the run's own (--data to change it)")
        return source
    if not DEMO_DATA_DIR.exists():
        from brain_vqvae.data.demo import build_demo_dataset

        print(f"Building the synthetic demo dataset in {DEMO_DATA_DIR} ...")
        build_demo_dataset(DEMO_DATA_DIR, seed=arguments.seed or 0)
    return DEMO_DATA_DIR


def run_training(arguments: argparse.Namespace, verbose: int | str = "auto") -> dict:
    """Everything `python train.py` does; returns the metrics written to metrics.json."""
    source = data_path(arguments)
    # The strategy first (made once, `train_run` reuses it): a cluster's collective operations
    # must be set up before anything, such as listing the devices, starts TensorFlow's runtime.
    make_strategy(arguments.strategy)
    device = found_device() if arguments.device == "auto" else arguments.device
    hyperparameters = hyperparameters_from_arguments(arguments, device)
    given = {name for name, value in vars(arguments).items() if value is not None}
    reason = f"the {device.upper()} preset's"
    suffix = "-vae" if hyperparameters.model == "vae" else ""
    out = Path(arguments.out or PROJECT_DIR / "runs" / f"{source.name}-{arguments.preset}{suffix}")
    retrained = {"pixelcnn": PRIOR_FIELDS, "adversarial": ADVERSARIAL_FIELDS}
    if arguments.resume or arguments.stage in retrained:
        # A resumed run keeps its configuration; retraining the prior (or the adversarial
        # decoder) of a run keeps its VQ-VAE's, and may change the stage's own.
        changeable = ("epochs_vqvae", "epochs_adversarial", "epochs_pixelcnn")
        if arguments.stage in retrained and not arguments.resume:
            changeable = retrained[arguments.stage]
        hyperparameters = resolve_hyperparameters(
            hyperparameters, given & set(hyperparameters.to_dict()), out, changeable
        )
        if (out / "hyperparameters.json").exists():
            reason = "the run's own"
    if "batch_size" in given:
        reason = "the batch as given"
    print(describe_batch_choice(hyperparameters, device, reason))
    return train_run(
        source,
        out,
        hyperparameters,
        stages=None if arguments.stage == "all" else (arguments.stage,),
        resume=arguments.resume,
        overwrite=arguments.overwrite,
        strategy_name=arguments.strategy,
        tensorboard=arguments.tensorboard,
        cache_dir=arguments.cache_dir,
        skip_bad=arguments.skip_bad,
        verbose=verbose,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        metrics = run_training(arguments)
    except (RunError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    latent = (
        f"KL {metrics['kl_loss']:.4f} nats per latent element, SSIM from a posterior draw "
        f"{metrics['ssim_mean_posterior_draw']:.3f}"
        if "kl_loss" in metrics
        else f"codes used {metrics['codes_used']:.0%}"
    )
    print(
        f"test SSIM mean {metrics['ssim_mean']:.3f} (median {metrics['ssim_median']:.3f}; "
        f"{metrics['fraction_above_target']:.0%} of {metrics['slices']} slices >= "
        f"{metrics['ssim_target']}), PSNR {metrics['psnr_mean']:.1f} dB, "
        f"MAE {metrics['mae_mean']:.4f}, {latent}"
    )
    if "prior_bits_per_code" in metrics:
        print(
            f"PixelCNN: {metrics['prior_bits_per_code']:.2f} bits per code "
            f"(uniform prior: {metrics['uniform_bits_per_code']:.2f})"
        )
    phases = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in metrics["seconds"].items())
    print(f"seconds: {phases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
