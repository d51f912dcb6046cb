"""Brain MRI slices from the forms users keep them in: the entry point of `brain_vqvae.data`.

Import the data API from here or from `brain_vqvae.data`:

    from dataset import load_slices, make_tf_dataset
    slices = load_slices("keras_png_slices_data", image_size=128)
    train = make_tf_dataset(slices.splits["train"], batch_size=32, shuffle=True, augment=True)

`load_slices(path)` finds the format itself (the README's "Data" section lists the formats;
the modules of brain_vqvae/data describe each layout in full) and returns per split a
`SliceSet` of (N, S, S) uint8 slices, shown anterior at the top with the subject's left on the
image's left. `load_volume_slices(file)` reads one volume file the same way.

Command line: `python dataset.py summary PATH [--json]` describes what loads from PATH;
`python dataset.py demo --out DIR [--overwrite]` builds the synthetic demo set
(`brain_vqvae.data.demo`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from brain_vqvae import data
from brain_vqvae.data import *  # noqa: F403  (the data API, re-exported)
from brain_vqvae.data import load_slices
from brain_vqvae.data.summary import print_summary, summarise
from hyperparameters import Hyperparameters

__all__ = [*data.__all__, "main"]

_DEFAULTS = Hyperparameters()


def _run_summary(arguments: argparse.Namespace) -> int:
    brain_slices = load_slices(
        arguments.path,
        image_size=arguments.image_size,
        slices_per_volume=arguments.slices_per_volume,
        seed=arguments.seed,
        cache_dir=arguments.cache_dir,
        skip_bad=arguments.skip_bad,
        demographics_csv=arguments.demographics_csv,
    )
    summary = summarise(brain_slices, arguments.image_size)
    if arguments.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def _run_demo(arguments: argparse.Namespace) -> int:
    # Imported here: only this command needs the template machinery (scipy, nilearn).
    from brain_vqvae.data.demo import build_demo_dataset

    start = time.perf_counter()
    written = build_demo_dataset(
        arguments.out,
        train_subjects=arguments.train_subjects,
        validate_subjects=arguments.validate_subjects,
        test_subjects=arguments.test_subjects,
        seed=arguments.seed,
        overwrite=arguments.overwrite,
    )
    print(f"wrote the synthetic demo dataset to {written} in {time.perf_counter() - start:.1f} s")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataset.py", description="Inspect brain MRI slice data, or build the demo set."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="detect the format of PATH and describe it")
    summary.add_argument("path", type=Path, help="data folder, or a .npz file")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.add_argument("--image-size", type=int, default=_DEFAULTS.image_size)
    summary.add_argument("--slices-per-volume", type=int, default=_DEFAULTS.slices_per_volume)
    summary.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="subject split seed")
    summary.add_argument("--skip-bad", action="store_true", help="skip unusable files")
    summary.add_argument("--cache-dir", type=Path, help="default: $BRAIN_VQVAE_CACHE")
    summary.add_argument("--demographics-csv", type=Path, help="an OASIS demographics table")
    summary.set_defaults(run=_run_summary)
    demo = commands.add_parser("demo", help="write the synthetic demo dataset (PNG tree)")
    demo.add_argument("--out", type=Path, required=True, help="folder to write")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo set")
    demo.add_argument("--train-subjects", type=int, default=64)
    demo.add_argument("--validate-subjects", type=int, default=8)
    demo.add_argument("--test-subjects", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; bad input prints `error: ...` and returns 2."""
    arguments = _build_parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except (ValueError, OSError) as error:  # DataError and refused arguments: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
