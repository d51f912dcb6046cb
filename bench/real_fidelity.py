"""How well a VQ-VAE reconstructs brains of people it never saw: leave-subjects-out folds.

    python -m bench.real_fidelity --data DIR --preset card
        [--slices-per-volume 96] [--held-out 2] [--folds 3] [--fold F] [--epochs 25]
        [--generation] [--keep DIR] [--json out.json] [--cache-dir DIR] [--FIELD VALUE ...]

Protocol. Every slice of the data set is loaded with `load_training_data` (all three of its
splits pooled; the loader's own split is ignored) and the subjects are taken in sorted order.
Fold f (0-based) holds out the `--held-out` subjects at positions f*H, f*H+1, ... of that order,
wrapping around, so with folds * H >= subjects every subject is held out at least once (exactly
once when folds * H equals the number of subjects; the default 3 x 2 for six volumes).
`--fold F` runs fold F alone (1-based), so that folds can run in separate processes.

In each fold the preset's VQ-VAE (with any `--FIELD VALUE` overrides, as in train.py) is trained
from scratch by the project's own `training.train_run`, with all its callbacks, into a temporary
run folder, on the fold's splits instead of the loader's. It sees the slices of the remaining
subjects except every tenth slice of each of them (slice positions 5, 15, 25, ...), which is the
validation set driving early stopping and the choice of the best epoch. The validation set is taken
from the training people rather than being one whole training person because a fold has very few
people (four of six by default): giving one up would cost a quarter of the anatomical variety the
model learns from, while the question of generalising to new people is answered by the held-out
subjects anyway. The price is that validation slices lie between training slices of the same
brains, so the validation SSIM is an in-distribution number and early stopping seldom fires.

Reported per held-out subject (all its slices, scored by `evaluation.score_model` with the best
weights): mean SSIM, its 5th percentile, the fraction of slices with SSIM >= ssim_target (0.6),
mean PSNR, and "seen": the subject's mean SSIM on its own training slices in the folds where it
was trained on (the generalisation gap is seen minus held-out). Per fold: the training and
validation SSIM, the epochs run, the best epoch and the wall time. Overall: the mean of each
held-out number over every (fold, held-out subject) pair. `--json` writes all of it plus the
hyperparameters used.

With `--generation` the fold trains the run's prior too (on the training slices' code maps,
validated on the validation slices', with the conditions the data gives) and judges it as
`python similarity.py` judges a run, with the held-out subjects as the test split
(`evaluation.evaluate_run`): samples against the held-out slices in a feature network trained on
the fold's training slices, each measure beside its real-vs-real floor (the held-out subjects
against each other: with two held out, one person against another, and the two-sample tests
grouped by slabs of neighbouring slices, `evaluation.two_sample_groups`), the prior's obedience
to the slice level, and whole volumes. The table then adds the generation targets per fold.
`--keep DIR` keeps each fold's run folder (its models, training curves and, with
`--generation`, the figures in similarity_test/) as DIR/fold<F> instead of a temporary folder;
`predict.py` samples from it, while `similarity.py` on it would judge it on the loader's own
split of the data, not on the fold's.

The bench's defaults of 96 slices per volume and 25 epochs replace the preset's values unless
`--slices-per-volume` or `--epochs` (alias of `--epochs-vqvae`) is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brain_vqvae.data import BrainSlices, DataError, SliceSet
from brain_vqvae.evaluation import SliceScores, evaluate_run, format_report, score_model
from brain_vqvae.runs import RunError, RunFolder, load_run, load_training_data
from brain_vqvae.training import train_run
from hyperparameters import (
    Hyperparameters,
    add_hyperparameter_arguments,
    hyperparameters_from_arguments,
)

BENCH_DEFAULTS = {"slices_per_volume": 96, "epochs_vqvae": 25}
VALIDATION_EVERY = 10  # every 10th slice of each training subject (offset 5) validates


def pooled_slices(
    path: Path, hyperparameters: Hyperparameters, cache_dir: str | None
) -> tuple[BrainSlices, SliceSet]:
    """The data set at `path` as loaded, and all its slices, the loader's splits pooled into one
    `SliceSet`."""
    data = load_training_data(path, hyperparameters, cache_dir=cache_dir)
    for problem in data.problems:
        print(f"warning: {problem}", file=sys.stderr)
    parts = list(data.splits.values())
    return data, SliceSet(
        images=np.concatenate([part.images for part in parts]),
        subject_ids=np.concatenate([part.subject_ids for part in parts]),
        slice_indices=np.concatenate([part.slice_indices for part in parts]),
    )


def subset(slices: SliceSet, chosen: np.ndarray) -> SliceSet:
    """The slices where the boolean array `chosen` is true."""
    return SliceSet(slices.images[chosen], slices.subject_ids[chosen], slices.slice_indices[chosen])


def held_out_subjects(subjects: list[str], held_out: int, folds: int) -> list[list[str]]:
    """Per fold, the `held_out` subjects it leaves out, rotating through `subjects`."""
    return [
        [subjects[(fold * held_out + offset) % len(subjects)] for offset in range(held_out)]
        for fold in range(folds)
    ]


def history_summary(history_csv: Path) -> dict:
    """Epochs run and the best (lowest validation loss) epoch, 1-based, from a history CSV."""
    table = np.genfromtxt(history_csv, delimiter=",", names=True, ndmin=1)
    return {"epochs_run": len(table), "best_epoch": int(np.argmin(table["val_loss"])) + 1}


def fold_masks(slices: SliceSet, held_out: list[str]) -> dict[str, np.ndarray]:
    """Boolean masks over `slices` of one fold's splits: the `held_out` subjects are its test
    split; every `VALIDATION_EVERY`-th slice of the others validates and the rest train."""
    outside = ~np.isin(slices.subject_ids, held_out)
    validating = outside & (slices.slice_indices % VALIDATION_EVERY == VALIDATION_EVERY // 2)
    return {"train": outside & ~validating, "validate": validating, "test": ~outside}


def run_fold(
    hyperparameters: Hyperparameters,
    data: BrainSlices,
    slices: SliceSet,
    held_out: list[str],
    work: Path,
    generation: bool = False,
) -> dict:
    """Train on every subject but `held_out` (less the validation slices) and score the model;
    with `generation`, train the prior too and judge its samples against the held-out subjects
    (`evaluate_run`, its figures in the run folder `work`)."""
    started = time.perf_counter()
    masks = fold_masks(slices, held_out)
    splits = {name: subset(slices, mask) for name, mask in masks.items()}
    fold = BrainSlices(data.source, data.format, splits, data.demographics, [])
    stages = ("vqvae", "pixelcnn") if generation else ("vqvae",)
    train_run(data.source, work, hyperparameters, stages, verbose=2, data=fold)
    trained_at = time.perf_counter()
    vqvae = load_run(work, prior="skip").autoencoder
    scores = score_model(
        vqvae, slices.float_images(), batch_size=hyperparameters.inference_batch_size
    )

    def among(chosen: np.ndarray) -> SliceScores:
        return SliceScores(scores.ssim[chosen], scores.psnr[chosen], scores.mae[chosen])

    training, validating = masks["train"], masks["validate"]
    target = hyperparameters.ssim_target
    report = {
        "held_out": {
            subject: among(slices.subject_ids == subject).summary(target) for subject in held_out
        },
        "trained_on": {
            subject: float(scores.ssim[training & (slices.subject_ids == subject)].mean())
            for subject in sorted(set(slices.subject_ids[training]))
        },
        "train_slices": int(training.sum()),
        "validate_slices": int(validating.sum()),
        "train_ssim_mean": float(scores.ssim[training].mean()),
        "validate_ssim_mean": float(scores.ssim[validating].mean()),
        **history_summary(RunFolder(work).history("vqvae")),
        "train_seconds": trained_at - started,
    }
    if generation:
        report["generation"] = evaluate_run(
            work, split="test", seed=hyperparameters.seed, slices=fold
        )
    report["wall_seconds"] = time.perf_counter() - started
    return report


def summarise(folds: list[dict]) -> dict:
    """Per subject, its mean SSIM on its own training slices over the folds that trained on it;
    overall, the mean of each held-out number over every (fold, held-out subject) pair."""
    seen: dict[str, list[float]] = {}
    for fold in folds:
        for subject, ssim in fold["trained_on"].items():
            seen.setdefault(subject, []).append(ssim)
    rows = [row for fold in folds for row in fold["held_out"].values()]
    overall = {
        key: float(np.mean([row[key] for row in rows]))
        for key in ("ssim_mean", "ssim_p05", "fraction_above_target", "psnr_mean", "mae_mean")
    }
    overall["train_ssim_mean"] = float(np.mean([fold["train_ssim_mean"] for fold in folds]))
    overall["held_out_pairs"] = len(rows)
    return {
        "seen_ssim_mean": {subject: float(np.mean(values)) for subject, values in seen.items()},
        "overall": overall,
    }


def generation_row(report: dict) -> dict[str, float]:
    """The generation targets' numbers from one fold's `evaluate_run` report: the samples'
    Fréchet distance over its real-vs-real floor, the two-sample accuracy of reconstructions vs
    samples, the samples' pairwise MS-SSIM minus the real one, precision, the implausible
    share, and where the prior is conditional the level's r (and ceiling) and the volumes'
    adjacent-slice SSIM (coherent and real)."""
    realism = report["realism"]
    row = {
        "fd_ratio": realism["fd_samples"] / realism["fd_real_floor"],
        "c2st_reconstructions_vs_samples": realism["c2st_reconstructions_vs_samples"],
        "ms_ssim_minus_real": realism["ms_ssim_samples"] - realism["ms_ssim_real"],
        "precision": realism["precision_samples"],
        "implausible_share": realism["implausible_samples_share"],
    }
    conditions = report.get("conditions", {})
    if "generated" in conditions.get("slice_position", {}):
        row["level_r"] = conditions["slice_position"]["generated"]["r"]
        row["level_r_ceiling"] = conditions["slice_position"]["real"]["r"]
    if "coherent_adjacent_ssim" in conditions.get("volumes", {}):  # not where skipped
        row["adjacent_ssim"] = conditions["volumes"]["coherent_adjacent_ssim"]
        row["adjacent_ssim_real"] = conditions["volumes"]["real_adjacent_ssim"]
    return row


def format_generation(folds: list[dict]) -> list[str]:
    """The printed lines of the generation table: one row per fold and their mean."""
    lines = [""]
    rows = {}
    for fold in folds:
        if "realism" in fold["generation"]:
            rows[fold["fold"]] = generation_row(fold["generation"])
        else:
            skipped = fold["generation"].get("realism_skipped", "no samples")
            lines.append(f"fold {fold['fold']}: generation not judged: {skipped}")
    if not rows:
        return lines
    keys = list(next(iter(rows.values())))
    rows["mean"] = {key: float(np.mean([row[key] for row in rows.values()])) for key in keys}
    labels = {
        "fd_ratio": "FD/floor",
        "c2st_reconstructions_vs_samples": "C2ST r/s",
        "ms_ssim_minus_real": "dMS-SSIM",
        "precision": "precision",
        "implausible_share": "implaus.",
        "level_r": "level r",
        "level_r_ceiling": "ceiling",
        "adjacent_ssim": "adjacent",
        "adjacent_ssim_real": "real adj.",
    }
    header = f"{'fold':>4}  " + "  ".join(f"{labels[key]:>9}" for key in keys)
    lines.append("generation (targets: FD/floor <= 3, C2ST r/s <= 0.60, |dMS-SSIM| <= 0.03)")
    lines += [header, "-" * len(header)]
    for name, row in rows.items():
        lines.append(f"{name:>4}  " + "  ".join(f"{row[key]:9.3f}" for key in keys))
    return lines


def format_table(report: dict) -> str:
    """The printed table: one row per (fold, held-out subject), fold lines, the overall row."""
    target = report["hyperparameters"]["ssim_target"]
    seen = report["seen_ssim_mean"]
    width = max(len(subject) for subject in report["subjects"])
    header = (
        f"{'fold':>4}  {'held-out subject':<{width}}  {'slices':>6}  {'SSIM':>6}  {'p05':>6}  "
        f"{'>=' + str(target):>6}  {'PSNR':>6}  {'seen':>6}"
    )
    lines = [header, "-" * len(header)]
    for fold in report["folds"]:
        for subject, row in fold["held_out"].items():
            seen_text = f"{seen[subject]:6.3f}" if subject in seen else f"{'-':>6}"
            lines.append(
                f"{fold['fold']:>4}  {subject:<{width}}  {row['slices']:>6}  "
                f"{row['ssim_mean']:6.3f}  {row['ssim_p05']:6.3f}  "
                f"{row['fraction_above_target']:6.1%}  {row['psnr_mean']:6.2f}  {seen_text}"
            )
    lines.append("-" * len(header))
    overall = report["overall"]
    lines.append(
        f"{'all':>4}  {'mean of ' + str(overall['held_out_pairs']) + ' held-out':<{width}}  "
        f"{'':>6}  {overall['ssim_mean']:6.3f}  {overall['ssim_p05']:6.3f}  "
        f"{overall['fraction_above_target']:6.1%}  {overall['psnr_mean']:6.2f}"
    )
    lines.append("")
    for fold in report["folds"]:
        lines.append(
            f"fold {fold['fold']}: trained on {fold['train_slices']} slices "
            f"({fold['validate_slices']} validating), {fold['epochs_run']} epochs "
            f"(best {fold['best_epoch']}); SSIM train {fold['train_ssim_mean']:.3f}, "
            f"validation {fold['validate_ssim_mean']:.3f}; "
            f"{fold['train_seconds']:.0f} s training, {fold['wall_seconds']:.0f} s in all"
        )
    if all("generation" in fold for fold in report["folds"]):
        lines += format_generation(report["folds"])
    lines.append(f"total wall time {report['wall_seconds']:.0f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults here: --slices-per-volume 96 and 25 epochs, whatever the preset says.",
    )
    parser.add_argument(
        "--data", required=True, help="a folder of T1 volumes (any format dataset.py reads)"
    )
    parser.add_argument("--held-out", type=int, default=2, help="subjects held out per fold")
    parser.add_argument("--folds", type=int, default=3, help="number of folds")
    parser.add_argument(
        "--fold", type=int, help="run only this fold (1-based) of the rotation, e.g. in parallel"
    )
    parser.add_argument("--epochs", type=int, help="VQ-VAE epochs per fold (= --epochs-vqvae)")
    parser.add_argument(
        "--generation",
        action="store_true",
        help="train the prior too and judge its samples against the held-out subjects",
    )
    parser.add_argument(
        "--keep", help="keep each fold's run folder (models, figures) as DIR/fold<F>"
    )
    parser.add_argument("--json", help="write the full report to this file")
    parser.add_argument("--cache-dir", help="where decoded slices are cached")
    add_hyperparameter_arguments(parser)
    return parser


def resolve_hyperparameters(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace
) -> Hyperparameters:
    """The preset with the bench's defaults, then the command line's fields, applied."""
    if arguments.epochs is not None:
        if arguments.epochs_vqvae not in (None, arguments.epochs):
            parser.error("--epochs and --epochs-vqvae disagree; give one of them")
        arguments.epochs_vqvae = arguments.epochs
    for name, value in BENCH_DEFAULTS.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    return hyperparameters_from_arguments(arguments)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        hyperparameters = resolve_hyperparameters(parser, arguments)
        data, slices = pooled_slices(Path(arguments.data), hyperparameters, arguments.cache_dir)
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    subjects = sorted(set(slices.subject_ids.tolist()))
    if not 1 <= arguments.held_out < len(subjects):
        parser.error(f"--held-out must be in [1, {len(subjects) - 1}] for {len(subjects)} subjects")
    if arguments.folds < 1:
        parser.error("--folds must be at least 1")
    if arguments.fold is not None and not 1 <= arguments.fold <= arguments.folds:
        parser.error(f"--fold must be in [1, {arguments.folds}]")
    if not np.any(slices.slice_indices % VALIDATION_EVERY == VALIDATION_EVERY // 2):
        parser.error(f"--slices-per-volume must be at least {VALIDATION_EVERY // 2 + 1}")
    if arguments.folds * arguments.held_out < len(subjects):
        print(
            f"note: {arguments.folds} folds of {arguments.held_out} hold out only "
            f"{arguments.folds * arguments.held_out} of the {len(subjects)} subjects",
            file=sys.stderr,
        )

    folds = []
    for number, held_out in enumerate(
        held_out_subjects(subjects, arguments.held_out, arguments.folds), start=1
    ):
        if arguments.fold not in (None, number):
            continue
        print(f"fold {number}/{arguments.folds}: holding out {', '.join(held_out)}", flush=True)
        if arguments.keep:
            folder = contextlib.nullcontext(Path(arguments.keep) / f"fold{number}")
        else:
            folder = tempfile.TemporaryDirectory(prefix="real_fidelity_")
        with folder as work:
            try:
                fold = run_fold(
                    hyperparameters, data, slices, held_out, Path(work), arguments.generation
                )
            except (RunError, ValueError) as error:
                print(f"error in fold {number}: {error}", file=sys.stderr)
                return 2
        if arguments.generation:
            print(format_report(fold["generation"]), flush=True)
        folds.append({"fold": number, **fold})

    report = {
        "data": str(Path(arguments.data).resolve()),
        "subjects": subjects,
        "held_out_per_fold": arguments.held_out,
        "validation": f"slice positions {VALIDATION_EVERY // 2} mod {VALIDATION_EVERY} "
        "of the training subjects",
        "hyperparameters": hyperparameters.to_dict(),
        "folds": folds,
        **summarise(folds),
        "wall_seconds": time.perf_counter() - started,
    }
    print(format_table(report))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
