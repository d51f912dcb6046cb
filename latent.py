"""Where slices sit in a trained VQ-VAE's latent space, and what each of its codes draws.

    python latent.py --run DIR [--data PATH ...] [--csv oasis_cross-sectional.csv]
                     [--method pca|tsne|both] [--split all|train|validate|test ...]
                     [--max-slices 3000] [--top-subjects 8] [--out DIR] [--overwrite]

Every slice of the chosen splits of each dataset (default: all splits of the data the run was
trained on; at most `max-slices`, drawn without replacement with the run's seed) is embedded by
its code histogram and by its encoder's latent vectors, projected with PCA and/or t-SNE, and
drawn by split, slice position, subject, dataset, class label, and CDR, age band and sex when
demographics are known (brain_vqvae/latent_space.py). The output folder (default RUN/latent)
holds latent_<grouping>.png, codebook.png and latent.json with the silhouette scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brain_vqvae.data import SPLITS, DataError
from brain_vqvae.latent_space import METHODS, analyse, load_table
from brain_vqvae.runs import RunError, load_run, prepare_output_folder, training_data_path

# Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder made by train.py")
    parser.add_argument(
        "--data", action="append", help="dataset; repeat to compare several (default: the run's)"
    )
    parser.add_argument("--csv", help="demographics CSV, e.g. oasis_cross-sectional.csv")
    parser.add_argument("--method", choices=(*METHODS, "both"), default="both")
    parser.add_argument(
        "--split", nargs="+", choices=("all", *SPLITS), default=["all"], help="splits to embed"
    )
    parser.add_argument("--max-slices", type=int, default=3000, help="cap on slices embedded")
    parser.add_argument("--top-subjects", type=int, default=8, help="subjects coloured")
    parser.add_argument("--examples", type=int, default=4, help="slices in codebook.png")
    parser.add_argument("--out", help="output folder (default RUN/latent)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def run_latent(arguments: argparse.Namespace) -> dict:
    """Everything `python latent.py` does; returns the report written to latent.json."""
    for name in ("max_slices", "top_subjects", "examples"):
        if getattr(arguments, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    run = load_run(arguments.run, prior="skip")
    vqvae = run.vqvae  # a VAE run has no codes to map: RunError, saying so
    hyperparameters = run.hyperparameters
    out = prepare_output_folder(
        Path(arguments.out) if arguments.out else run.folder.path / "latent", arguments.overwrite
    )
    paths = [Path(path) for path in arguments.data or [training_data_path(run.folder)]]
    splits = SPLITS if "all" in arguments.split else tuple(dict.fromkeys(arguments.split))
    table = load_table(
        paths,
        hyperparameters,
        splits,
        arguments.max_slices,
        Path(arguments.csv) if arguments.csv else None,
    )
    methods = METHODS if arguments.method == "both" else (arguments.method,)
    return analyse(
        vqvae,
        hyperparameters,
        table,
        out,
        methods,
        arguments.top_subjects,
        arguments.examples,
        title=run.name,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        report = run_latent(arguments)
    except (RunError, DataError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, entry in report["groupings"].items():
        score = entry["silhouette"]["code_histogram"]["full"]
        shown = "n/a" if score is None else f"{score:+.2f}"
        print(f"{name:>15}: silhouette of code histograms {shown}")
    print(f"wrote {len(report['figures'])} figures and latent.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
