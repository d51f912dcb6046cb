"""How real and varied the generated brains of trained runs are, against the targets.

    python -m bench.generation --run runs/demo-card [--run runs/demo-card-masked ...]
        [--split test] [--samples N] [--seed 0] [--json out.json]

Each run is judged as `python similarity.py` judges it (`evaluation.evaluate_run`): its samples
against the held-out split's slices, each realism measure beside its real-vs-real floor (two
halves of the split's people). The table has one row per run and says whether it meets the
targets of the generation issue:

- the classifier two-sample accuracy of reconstructions vs samples (the prior alone) at most
  0.60 (0.5 = indistinguishable);
- the samples' diversity (mean pairwise MS-SSIM) within 0.03 of the real slices';
- the Fréchet distance at most 3 times its real-vs-real floor.

The figures of each run go to RUN/similarity_<split>, as with similarity.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import add_judging_arguments, announce_machine, print_table, write_json
from brain_vqvae.data import DataError
from brain_vqvae.evaluation import evaluate_run
from brain_vqvae.runs import RunError

C2ST_TARGET = 0.60
DIVERSITY_TOLERANCE = 0.03
FRECHET_FACTOR = 3.0

COLUMNS = (
    ("run", "run", "<"),
    ("ssim", "recon SSIM", ".3f"),
    ("fd", "FD", ".4f"),
    ("fd_floor", "FD floor", ".4f"),
    ("precision", "precision", ".2f"),
    ("recall", "recall", ".2f"),
    ("c2st_real_recon", "C2ST real/recon", ".2f"),
    ("c2st_recon_samples", "C2ST recon/samples", ".2f"),
    ("c2st_real_samples", "C2ST real/samples", ".2f"),
    ("c2st_floor", "C2ST floor", ".2f"),
    ("ms_ssim", "MS-SSIM", ".3f"),
    ("ms_ssim_real", "MS-SSIM real", ".3f"),
    ("implausible", "implausible", ".0%"),
    ("implausible_real", "implausible real", ".0%"),
    ("targets", "targets met", "<"),
)


def targets_met(realism: dict) -> str:
    """Which of the three targets the realism numbers meet, e.g. "C2ST FD" or "none"."""
    met = []
    if realism["c2st_reconstructions_vs_samples"] <= C2ST_TARGET:
        met.append("C2ST")
    if abs(realism["ms_ssim_samples"] - realism["ms_ssim_real"]) <= DIVERSITY_TOLERANCE:
        met.append("diversity")
    if realism["fd_samples"] <= FRECHET_FACTOR * realism["fd_real_floor"]:
        met.append("FD")
    return " ".join(met) or "none"


def table_row(run: Path, report: dict) -> dict:
    realism = report["realism"]
    return {
        "run": run.name,
        "ssim": report["ssim_mean"],
        "fd": realism["fd_samples"],
        "fd_floor": realism["fd_real_floor"],
        "precision": realism["precision_samples"],
        "recall": realism["recall_samples"],
        "c2st_real_recon": realism["c2st_real_vs_reconstructions"],
        "c2st_recon_samples": realism["c2st_reconstructions_vs_samples"],
        "c2st_real_samples": realism["c2st_real_vs_samples"],
        "c2st_floor": realism["c2st_real_floor"],
        "ms_ssim": realism["ms_ssim_samples"],
        "ms_ssim_real": realism["ms_ssim_real"],
        "implausible": realism["implausible_samples_share"],
        "implausible_real": realism["implausible_real_share"],
        "targets": targets_met(realism),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run; repeat")
    add_judging_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    machine = announce_machine()
    reports, rows = {}, []
    for run in map(Path, arguments.run):
        try:
            report = evaluate_run(
                run, arguments.data, arguments.split, arguments.samples, arguments.seed
            )
        except (RunError, DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if "realism" not in report:
            print(f"error: {run}: {report.get('realism_skipped', 'no samples')}", file=sys.stderr)
            return 2
        reports[str(run)] = report
        rows.append(table_row(run, report))
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "reports": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
