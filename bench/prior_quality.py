"""Masked against gated PixelCNN priors: bits per code on real code maps, training time per
epoch, and sampling time for both presets' map shapes.

    python -m bench.prior_quality RUN DATA [--epochs 30] [--sampling-count 64] [--skip-sampling]
        [--json PATH]

RUN is a run folder with a trained VQ-VAE (`vqvae.keras` and `hyperparameters.json`), DATA the
slices it was trained on. Every split of DATA is encoded by the VQ-VAE (`encode_split`), then
each prior, the run's hyperparameters with `pixelcnn_architecture` A and one flat level (`flat`),
is fitted for `--epochs` epochs on the training maps with the run's batch size and the training
stage's optimizer (Adam, cosine decay); the table gives the validation and test bits per code
(`prior_bits_per_code`) of the epoch with the lowest validation loss, and the median seconds of
an epoch after the first (which traces). Sampling: `sample_code_maps` of `--sampling-count`
maps from untrained priors of each architecture at the card's shape (8x8, K = 16) and the
hifi preset's (32x32, K = 4096, embedding 64); the first call (tracing) and a second one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import modules
from bench.common import (
    add_common_arguments,
    describe_machine,
    machine_summary,
    median,
    print_table,
    write_json,
)
from hyperparameters import Hyperparameters, preset

ARCHITECTURES = ("masked", "gated")


def flat(hyperparameters: Hyperparameters, architecture: str) -> Hyperparameters:
    """`hyperparameters` with a flat prior of `architecture`: the masked PixelCNN has no coarse
    level (`pixelcnn_coarse_codes`), so both architectures are compared flat."""
    return hyperparameters.replace(pixelcnn_architecture=architecture, pixelcnn_coarse_codes=0)


def quality_rows(run: Path, data: Path, epochs: int) -> list[dict]:
    import tempfile

    import keras
    import numpy as np

    from brain_vqvae.evaluation import prior_bits_per_code
    from brain_vqvae.runs import load_training_data
    from brain_vqvae.training import encode_split

    hyperparameters = Hyperparameters.load(run / "hyperparameters.json")
    vqvae = keras.saving.load_model(run / "vqvae.keras")
    slices = load_training_data(data, hyperparameters)
    codes = {
        split: encode_split(vqvae, slices.splits[split], 64)
        for split in ("train", "validate", "test")
    }

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    folder = Path(tempfile.mkdtemp(prefix="prior_quality_"))
    print({split: maps.shape for split, maps in codes.items()})
    rows = []
    for architecture in ARCHITECTURES:
        keras.utils.set_random_seed(hyperparameters.seed)
        prior = modules.build_pixelcnn(flat(hyperparameters, architecture))
        steps = epochs * int(np.ceil(len(codes["train"]) / hyperparameters.batch_size))
        schedule = keras.optimizers.schedules.CosineDecay(
            hyperparameters.learning_rate_pixelcnn, steps, alpha=0.05
        )
        prior.compile(optimizer=keras.optimizers.Adam(schedule))
        timer = EpochTimer()
        best_path = folder / f"{architecture}.keras"
        best = keras.callbacks.ModelCheckpoint(str(best_path), save_best_only=True)
        history = prior.fit(
            codes["train"],
            batch_size=hyperparameters.batch_size,
            epochs=epochs,
            validation_data=(codes["validate"],),
            callbacks=[timer, best],
            verbose=0,
        ).history
        prior = keras.saving.load_model(best_path)
        rows.append(
            {
                "prior": architecture,
                "parameters": prior.count_params(),
                "best_epoch": int(np.argmin(history["val_loss"])) + 1,
                "validate_bits": prior_bits_per_code(prior, codes["validate"]),
                "test_bits": prior_bits_per_code(prior, codes["test"]),
                "train_bits": history["loss"][-1] / np.log(2),
                "epoch_s": median(timer.seconds[1:] or timer.seconds),
            }
        )
        print(rows[-1], flush=True)
    return rows


def sampling_rows(count: int) -> list[dict]:
    import keras

    shapes = {"card": preset("card"), "hifi": preset("hifi")}
    rows = []
    for shape, hyperparameters in shapes.items():
        for architecture in ARCHITECTURES:
            keras.utils.set_random_seed(0)
            prior = modules.build_pixelcnn(flat(hyperparameters, architecture))
            seconds = []
            for seed in (0, 1):
                start = time.perf_counter()
                modules.sample_code_maps(prior, count, seed=seed)
                seconds.append(time.perf_counter() - start)
            rows.append(
                {
                    "shape": f"{shape} {hyperparameters.code_map_size}x"
                    f"{hyperparameters.code_map_size} K={hyperparameters.num_embeddings}",
                    "prior": architecture,
                    "first_s": seconds[0],
                    "second_s": seconds[1],
                }
            )
            print(rows[-1], flush=True)
    return rows


QUALITY_COLUMNS = (
    ("prior", "prior", "<"),
    ("parameters", "weights", ""),
    ("best_epoch", "best epoch", ""),
    ("train_bits", "train bits (last)", ".3f"),
    ("validate_bits", "validate bits", ".3f"),
    ("test_bits", "test bits", ".3f"),
    ("epoch_s", "s per epoch", ".2f"),
)
SAMPLING_COLUMNS = (
    ("shape", "maps", "<"),
    ("prior", "prior", "<"),
    ("first_s", "first call s", ".2f"),
    ("second_s", "second call s", ".2f"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder with vqvae.keras")
    parser.add_argument("data", type=Path, help="the slices the run was trained on")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per prior")
    parser.add_argument("--sampling-count", type=int, default=64, help="maps per sampling call")
    parser.add_argument("--skip-sampling", action="store_true", help="measure quality only")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.epochs, arguments.sampling_count = 2, 4
    machine = machine_summary()
    print(describe_machine(machine))
    quality = quality_rows(arguments.run, arguments.data, arguments.epochs)
    print(f"\npriors fitted for {arguments.epochs} epochs on {arguments.run}'s code maps")
    print_table(quality, QUALITY_COLUMNS)
    sampling = [] if arguments.skip_sampling else sampling_rows(arguments.sampling_count)
    if sampling:
        print(f"\nsampling {arguments.sampling_count} maps from untrained priors")
        print_table(sampling, SAMPLING_COLUMNS)
    write_json(arguments.json, {"machine": machine, "quality": quality, "sampling": sampling})
    return 0


if __name__ == "__main__":
    sys.exit(main())
