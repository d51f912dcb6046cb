"""Which level of a two-level prior holds the realism gap: its samples as drawn, beside its fine
level drawn on real coarse maps (a perfect coarse level), beside a perfect prior.

    python -m bench.level_gap --run runs/demo3-hifi [--data DIR] [--split test]
        [--samples N] [--seed 0] [--coarse-top-p P] [--json out.json]

Three sets of samples of a trained run with a two-level prior (`pixelcnn_coarse_codes`), each
judged as `python similarity.py` judges its samples (`evaluation.judge_realism`: the texture
two-sample test against the held-out split's reconstructions, FD, precision and recall, the
diversity, the brain's share of the slice), against the held-out split:

- prior: both levels drawn, as similarity.py draws them (nothing asked: levels drawn over the
  trained range, the run's nuclei or the coarse level's `--coarse-top-p`, `--seed`);
- fine level on real coarse maps: the coarse maps of the training slices a perfect prior's draws
  are made of (`evaluation.prior_training_slices`, mirrored as the prior learned them), and the
  fine level drawn on them (`sample_code_maps(coarse_maps=...)`), told those slices' levels;
- perfect prior: those same training slices, encoded and decoded (`perfect_prior_draws`).

The first two differ only in the coarse level, the last two only in the fine level: the share
of the gap between the prior and a perfect one that each level holds. The figures of the first
two go to RUN/level_gap_<split>/{prior,coarse_given}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import add_judging_arguments, announce_machine, print_table, write_json
from brain_vqvae.data import DataError
from brain_vqvae.runs import RunError

# The table's rows: (measure, its report key for the samples, for a perfect prior, for the real
# floor; None where the report has none: the texture test's floor is chance, 0.5).
MEASURES = (
    ("C2ST reconstructions vs samples (texture)", "c2st_reconstructions_vs_samples",
     "c2st_reconstructions_vs_perfect_prior", None),
    ("C2ST real vs samples", "c2st_real_vs_samples", None, "c2st_real_floor"),
    ("FD", "fd_samples", "fd_perfect_prior", "fd_real_floor"),
    ("precision", "precision_samples", "precision_perfect_prior", "precision_real_floor"),
    ("recall", "recall_samples", "recall_perfect_prior", "recall_real_floor"),
    ("diversity, MS-SSIM", "ms_ssim_samples", "ms_ssim_perfect_prior", "ms_ssim_real"),
    ("brain's share of the slice", "brain_area_samples", "brain_area_perfect_prior",
     "brain_area_real"),
    ("implausible share", "implausible_samples_share", "implausible_perfect_prior_share",
     "implausible_real_share"),
)  # fmt: skip

COLUMNS = (
    ("measure", "measure", "<"),
    ("prior", "prior", ".3f"),
    ("coarse_given", "fine level on real coarse maps", ".3f"),
    ("perfect", "perfect prior", ".3f"),
    ("real", "real / floor", ".3f"),
)


def draw_both_ways(run, training, count: int, seed: int, coarse_top_p: float | None = None):
    """{"prior": `count` samples (count, S, S, 1) of `run`'s two-level prior drawn as
    similarity.py draws them (its coarse level from the nucleus `coarse_top_p`; None: the
    run's), "coarse_given": `count` drawn by its fine level on the coarse maps of the training
    slices of a perfect prior's draws, told their levels where the prior takes them}."""
    import numpy as np

    from brain_vqvae import evaluation, generation
    from brain_vqvae.model import sampler

    prior, hyperparameters = run.pixelcnn, run.hyperparameters
    nuclei = generation.effective_nuclei(run, None, coarse_top_p)
    batch_size = hyperparameters.inference_batch_size
    drawn = sampler.sample_code_maps(
        prior,
        count,
        seed=seed,
        conditions=generation.with_drawn_levels(prior, count, None, seed),
        **nuclei,
    )
    images, rows = evaluation.prior_training_slices(run, training, count, hyperparameters.seed)
    real_codes = sampler.encode_code_maps(run.autoencoder, images, batch_size)
    conditions = None
    positions = training.relative_positions()
    if "slice_position" in prior.condition_names and positions is not None:
        conditions = {"slice_position": positions[rows]}
    given = sampler.sample_code_maps(
        prior,
        len(rows),
        seed=seed,
        top_p=nuclei["top_p"],
        conditions=conditions,
        coarse_maps=np.asarray(prior.coarse_map(real_codes)),
    )
    return {
        name: sampler.decode_code_maps(run.generator, maps, batch_size)
        for name, maps in (("prior", drawn), ("coarse_given", given))
    }


def level_gap(
    run_dir: Path,
    data,
    split: str,
    samples: int | None,
    seed: int,
    coarse_top_p: float | None = None,
) -> dict:
    """The realism reports of `run_dir`'s prior (its coarse level drawn from the nucleus
    `coarse_top_p`; None: the run's) and of its fine level on real coarse maps, judged against
    `split`: {"prior": report, "coarse_given": report}."""
    from brain_vqvae import evaluation
    from brain_vqvae.runs import load_run, load_run_data

    run = load_run(run_dir)
    if run.pixelcnn is None or run.pixelcnn.coarse_prior is None:
        raise RunError(f"{run_dir}: the prior is not a two-level prior (pixelcnn_coarse_codes)")
    slices = load_run_data(run, data)
    training, held_out = slices.splits["train"], slices.splits.get(split)
    if held_out is None or len(held_out) == 0:
        raise RunError(f"{slices.source} has no slices in the {split!r} split")
    count = samples or max(evaluation.MIN_SAMPLES, len(held_out))
    batch_size = run.hyperparameters.inference_batch_size
    reconstructions = evaluation.reconstruct_images(
        run.generator, held_out.float_images(), batch_size
    )
    halves = evaluation.subject_halves(held_out)
    reports = {}
    for name, images in draw_both_ways(run, training, count, seed, coarse_top_p).items():
        out = Path(run_dir) / f"level_gap_{split}" / name
        out.mkdir(parents=True, exist_ok=True)
        reports[name], _ = evaluation.judge_realism(
            run, training, held_out, halves, reconstructions, images, out
        )
    return reports


def table_rows(reports: dict) -> list[dict]:
    rows = []
    for label, samples_key, perfect_key, real_key in MEASURES:
        prior = reports["prior"]
        rows.append(
            {
                "measure": label,
                "prior": prior[samples_key],
                "coarse_given": reports["coarse_given"][samples_key],
                "perfect": prior[perfect_key] if perfect_key else float("nan"),
                "real": prior[real_key] if real_key else 0.5,
            }
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run with a two-level prior")
    add_judging_arguments(parser)
    parser.add_argument(
        "--coarse-top-p",
        type=float,
        help="the nucleus the prior's coarse level is drawn from (default: the run's "
        "sampling_coarse_top_p)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    machine = announce_machine()
    try:
        reports = level_gap(
            arguments.run,
            arguments.data,
            arguments.split,
            arguments.samples,
            arguments.seed,
            arguments.coarse_top_p,
        )
    except (RunError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_table(table_rows(reports), COLUMNS)
    write_json(arguments.json, {"machine": machine, "reports": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
