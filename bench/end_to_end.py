"""What a full default run costs: every stage of the card pipeline on the OASIS-sized set.

    python -m bench.end_to_end [--tree DIR] [--epochs-vqvae 30] [--epochs-adversarial 12]
        [--epochs-pixelcnn 30] [--quick] [--json PATH]

The stages are those of `python train.py` (`brain_vqvae.training.train_run`), each timed on its
own with wall seconds, on the OASIS-sized tree (`common.build_oasis_tree`: 9,664 / 1,120 / 544
slices) and the card preset, in a temporary run folder:
  load          `load_slices` into an empty cache (a first run; later runs read the cache)
  VQ-VAE        `training.train_autoencoder` for ONE epoch: tf.data pipeline, training,
                validation, checkpoints, reloading the best model
  adversarial   `training.train_adversarial_decoder` for ONE epoch (the decoder against a
                discriminator)
  encode        `training.encode_split` of the train and validate splits (code maps)
  PixelCNN      `training.train_pixelcnn` for ONE epoch
  test report   `evaluation.run_test_metrics` on the test split (SSIM/PSNR/MAE, codebook use,
                bits)
  sample        `sample_code_maps`: 64 code maps drawn
The three training stages are then extrapolated linearly to `--epochs-vqvae`,
`--epochs-adversarial` and `--epochs-pixelcnn` epochs (the defaults' 30, 12 and 30). The one
measured epoch carries the one-time costs (graph tracing, model building), so the
extrapolation errs slightly high; early stopping can end a real run sooner.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    QUICK_SCALE,
    add_common_arguments,
    announce_machine,
    build_oasis_tree,
    default_tree,
    print_table,
    split_sizes,
    write_json,
)
from brain_vqvae.data import load_slices
from brain_vqvae.evaluation import run_test_metrics
from brain_vqvae.model import sample_code_maps
from brain_vqvae.runs import MODEL_STAGES
from brain_vqvae.training import (
    encode_split,
    prepare_run_folder,
    train_adversarial_decoder,
    train_autoencoder,
    train_pixelcnn,
)
from hyperparameters import preset

SAMPLES = 64


class StageClock:
    """Times the stages run through it: `clock.run(name, function, *arguments)`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function, *arguments, **keywords):
        start = time.perf_counter()
        result = function(*arguments, **keywords)
        self.seconds[name] = time.perf_counter() - start
        print(f"  {name}: {self.seconds[name]:.1f} s", file=sys.stderr, flush=True)
        return result


def run_pipeline(tree: Path, scratch: Path) -> dict[str, float]:
    """Every stage once, one epoch per training stage; {stage: seconds}."""
    hyperparameters = preset("card").replace(
        epochs_vqvae=1, epochs_adversarial=1, epochs_pixelcnn=1
    )
    clock = StageClock()
    run = prepare_run_folder(scratch / "run", MODEL_STAGES["vqvae"], resume=False, overwrite=False)
    data = clock.run("load", load_slices, tree, image_size=128, cache_dir=scratch / "cache")
    splits, batch = data.splits, hyperparameters.inference_batch_size
    vqvae = clock.run(
        "VQ-VAE",
        train_autoencoder,
        hyperparameters,
        run,
        splits["train"],
        splits["validate"],
        resume=False,
        verbose=0,
    )
    clock.run(
        "adversarial",
        train_adversarial_decoder,
        hyperparameters,
        run,
        vqvae,
        splits["train"],
        splits["validate"],
        resume=False,
        verbose=0,
    )
    codes = clock.run(
        "encode",
        lambda: [
            encode_split(vqvae, splits[name], batch) for name in ("train", "validate", "test")
        ],
    )
    pixelcnn = clock.run(
        "PixelCNN", train_pixelcnn, hyperparameters, run, *codes[:2], resume=False, verbose=0
    )
    test_images = splits["test"].float_images()
    clock.run(
        "test report", run_test_metrics, hyperparameters, vqvae, pixelcnn, test_images, codes[2]
    )
    clock.run("sample", sample_code_maps, pixelcnn, SAMPLES)
    return clock.seconds


def extrapolate(seconds: dict[str, float], epochs: dict[str, int]) -> list[dict]:
    """Table rows: each stage as measured and for a full run (training stages x epochs)."""
    rows = []
    for stage, measured in seconds.items():
        count = epochs.get(stage, 1)
        rows.append(
            {
                "stage": stage,
                "measured_s": measured,
                "times": f"x{count}" if stage in epochs else "",
                "full_min": measured * count / 60,
            }
        )
    rows.append(
        {
            "stage": "total",
            "measured_s": sum(seconds.values()),
            "full_min": sum(row["full_min"] for row in rows),
        }
    )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="where the OASIS-sized tree is (or goes)")
    defaults = preset("card")
    parser.add_argument("--epochs-vqvae", type=int, default=defaults.epochs_vqvae)
    parser.add_argument("--epochs-adversarial", type=int, default=defaults.epochs_adversarial)
    parser.add_argument("--epochs-pixelcnn", type=int, default=defaults.epochs_pixelcnn)
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    scale = QUICK_SCALE if arguments.quick else 1.0
    tree = build_oasis_tree(arguments.tree or default_tree(scale), scale)
    machine = announce_machine()
    print(f"tree {tree}: {split_sizes(scale)}")
    with tempfile.TemporaryDirectory(prefix="brain-vqvae-end-to-end-") as scratch:
        seconds = run_pipeline(tree, Path(scratch))
    epochs = {
        "VQ-VAE": arguments.epochs_vqvae,
        "adversarial": arguments.epochs_adversarial,
        "PixelCNN": arguments.epochs_pixelcnn,
    }
    rows = extrapolate(seconds, epochs)
    print(
        f"\ncard pipeline, one epoch per training stage measured, full run = "
        f"{arguments.epochs_vqvae} + {arguments.epochs_adversarial} + "
        f"{arguments.epochs_pixelcnn} epochs"
    )
    print_table(
        rows,
        (
            ("stage", "stage", "<"),
            ("measured_s", "measured s", ".1f"),
            ("times", "full run", ""),
            ("full_min", "full run min", ".1f"),
        ),
    )
    write_json(
        arguments.json,
        {"machine": machine, "slices": split_sizes(scale), "seconds": seconds, "rows": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
