"""Peak memory (resident set) of training the card VQ-VAE for one epoch on the OASIS-sized set.

    python -m bench.memory [--tree DIR] [--quick] [--json PATH]

A child process does what `python train.py` does for stage 1 on a first run, so nothing of this
process counts: import `brain_vqvae.training` (TensorFlow, Keras, the project), load the
OASIS-sized tree (`common.build_oasis_tree`) with `load_slices` into an empty cache folder
(decoding all 11,328 PNG pairs and writing the cache), then `training.train_autoencoder` with
the card preset and one epoch: its tf.data pipeline, the model, Adam, validation on 1,120
slices and the checkpoints, in a temporary run folder. After each phase the child
records its peak resident set so far, `resource.getrusage(RUSAGE_SELF).ru_maxrss`; the parent
reports those and its own `RUSAGE_CHILDREN` reading (the peak of the child as a whole).
Goal: at most 3 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    QUICK_SCALE,
    add_common_arguments,
    build_oasis_tree,
    cpu_model,
    default_tree,
    print_table,
    split_sizes,
    write_json,
)

GOAL_BYTES = 3 * 2**30
RESULT = "@@memory "  # prefix of the child's result line


def peak_bytes(who: int = resource.RUSAGE_SELF) -> int:
    """Peak resident set size of this process (or its waited-for children) in bytes."""
    return resource.getrusage(who).ru_maxrss * 1024  # kilobytes on Linux


def train_one_epoch(tree: Path) -> list[dict]:
    """The child's work: [{phase, peak bytes so far, seconds}] after each phase."""
    phases = []
    start = time.perf_counter()

    def record(phase: str) -> None:
        phases.append({"phase": phase, "peak": peak_bytes(), "s": time.perf_counter() - start})

    from brain_vqvae.data import load_slices
    from brain_vqvae.training import prepare_run_folder, train_autoencoder
    from hyperparameters import preset

    record("imported brain_vqvae.training (TensorFlow, Keras)")
    hyperparameters = preset("card").replace(epochs_vqvae=1)
    with tempfile.TemporaryDirectory(prefix="brain-vqvae-memory-") as scratch:
        scratch = Path(scratch)
        data = load_slices(tree, image_size=128, cache_dir=scratch / "cache")
        record("load_slices, empty cache (decode + write cache)")
        run = prepare_run_folder(scratch / "run", ("vqvae",), resume=False, overwrite=False)
        train_autoencoder(
            hyperparameters,
            run,
            data.splits["train"],
            data.splits["validate"],
            resume=False,
            verbose=0,
        )
        record("train_autoencoder, 1 epoch (+ validation, checkpoints)")
    return phases


def run_child(tree: Path) -> tuple[list[dict], int]:
    """Run `train_one_epoch` in a child process; (its phases, its peak from RUSAGE_CHILDREN)."""
    completed = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--child", "--tree", str(tree)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT) :]), peak_bytes(resource.RUSAGE_CHILDREN)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="where the OASIS-sized tree is (or goes)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.child:
        print(RESULT + json.dumps(train_one_epoch(arguments.tree)), flush=True)
        return 0
    scale = QUICK_SCALE if arguments.quick else 1.0
    tree = build_oasis_tree(arguments.tree or default_tree(scale), scale)
    sizes = split_sizes(scale)
    print(f"{cpu_model()}; tree {tree}: {sizes}")
    phases, child_peak = run_child(tree)
    rows = [{**phase, "peak_gb": phase["peak"] / 2**30} for phase in phases]
    rows.append({"phase": "whole child (RUSAGE_CHILDREN)", "peak_gb": child_peak / 2**30})
    print(f"\npeak resident set, card VQ-VAE, 1 epoch of {sizes['train']} slices; goal <= 3 GB")
    print_table(
        rows,
        (("phase", "after", "<"), ("peak_gb", "peak GB", ".2f"), ("s", "seconds", ".0f")),
    )
    print(f"goal met: {'yes' if child_peak <= GOAL_BYTES else 'no'}")
    write_json(
        arguments.json,
        {"tree": str(tree), "slices": sizes, "phases": phases, "child_peak_bytes": child_peak},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
