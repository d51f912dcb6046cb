"""Judging a trained run: how well its VQ-VAE reconstructs held-out slices, and what its
prior's samples look like.

Reconstruction is scored per slice (SSIM, PSNR, MAE from `metrics`) and summarised against
the SSIM target: mean, median, 5th percentile and the share of slices at or above it. The
prior is judged by its negative log-likelihood of real code maps (bits per code, against
log2 K for a uniform prior), how its code usage compares with the real one, the novelty of its
samples (how close each comes to a training slice), and by the realism measures of `realism`,
each beside its real-vs-real floor: Fréchet distance and precision/recall in the features of
the run's domain network (`feature_network`, trained on the run's training split the first time
it is needed and saved in the run folder), classifier two-sample tests, diversity, implausible
samples. A VAE run (the Gaussian baseline) has no codes and no learned prior: its samples,
decoded from N(0, I), are judged by novelty and the realism measures, and its posterior by its
KL divergence to N(0, I). `run_test_metrics` is what training writes to metrics.json;
`evaluate_run` is what `python similarity.py` reports, with its figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_vqvae import obedience, plotting, realism
from brain_vqvae.age_reader import (
    CROSS_VALIDATION_FOLDS,
    READ_LEVELS,
    AgeReader,
    readable_levels,
)
from brain_vqvae.conditioning import raw_condition_values, slice_conditions
from brain_vqvae.data import BrainSlices, SliceSet
from brain_vqvae.data.slices import capped_indices
from brain_vqvae.feature_network import (
    FeatureNetwork,
    load_feature_network,
    predict_positions,
    train_feature_network,
)
from brain_vqvae.generation import (
    DEFAULT_GUIDANCE,
    VOLUME_DEPTH,
    check_prior_options,
    describe_guidance,
    effective_nuclei,
    sample_volumes,
    with_drawn_levels,
)
from brain_vqvae.metrics import (
    bits_per_code,
    code_usage,
    mae_per_slice,
    psnr_per_slice,
    ssim_per_slice,
    usage_statistics,
)
from brain_vqvae.model import (
    decode_code_maps,
    encode_code_maps,
    posterior_draw_reconstructions,
    posterior_kl,
    sample_code_maps,
)
from brain_vqvae.runs import (
    Run,
    RunError,
    load_run,
    load_run_data,
    save_model_atomically,
    write_atomically,
)
from hyperparameters import (
    COARSE_FACTOR,
    Hyperparameters,
    check_temperature,
    check_top_k,
    check_top_p,
)

REPORT_FILE = "report.json"  # what `evaluate_run` returns, written beside its figures
FEATURE_TRAINING_SLICES = 4000  # the feature network trains on at most this many slices
REFERENCE_TRAINING_SLICES = 2000  # training slices the implausibility rule and neighbours see
# Samples judged by default, at the least: their diversity then moves about half as much
# between draws as that of 256 (BENCHMARKS.md, "Diversity over every slice").
MIN_SAMPLES = 1024
MIN_REALISM_SLICES = 8  # held-out slices per half, at the least, for the realism measures
SLAB_SLICES = 8  # a lone person's neighbouring slices that the two-sample tests keep together
OBEDIENCE_SAMPLES = 128  # generated slices per condition whose obedience is measured
MIN_CHECKED_SLICES = 8  # held-out (or generated) slices the age reader must read, at the least
GENERATED_VOLUMES = 24  # volumes drawn each way (coherent, slice by slice) for the measures
REFERENCE_VOLUMES = 64  # training volumes, at the most, reconstructed as a perfect prior's
MIN_REFERENCE_VOLUMES = 4  # training volumes, at the least: two halves of two people
AGE_VOLUMES = 12  # generated volumes whose age is read as a whole
MIN_OBEDIENCE_PEOPLE = 3  # held-out people of known age that a volume's age read is set against
DIAGNOSIS_PAIRS = 64  # pairs of slices, asked for CDR 0 and for dementia, whose ages are read
DIAGNOSIS_NEEDS_AGE = (
    "the prior does not take the age: the diagnosis is read as ageing, in slices asked for the "
    "same age with and without dementia (demented people are older)"
)
MIRROR_STREAM = 8  # the random stream that mirrors a perfect prior's draws


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


def reconstruct_images(autoencoder, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The VQ-VAE's (or VAE's) reconstructions (N, S, S, 1) in [0, 1] (the model clips) of
    `images`."""
    return np.asarray(
        autoencoder.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32
    )


def score_model(autoencoder, images: np.ndarray, batch_size: int = 64) -> SliceScores:
    """Reconstruct `images` (N, S, S, 1) in [0, 1] with `autoencoder` (a VQ-VAE or VAE) and
    score every slice."""
    return score_reconstructions(images, reconstruct_images(autoencoder, images, batch_size))


def prior_bits_per_code(
    pixelcnn, code_maps: np.ndarray, batch_size: int = 64, conditions: dict | None = None
) -> float:
    """The prior's mean negative log2-likelihood of real code maps (N, h, w), in bits per code:
    -(1 / N h w) sum log2 p(k(i, j) | codes before (i, j)), for a conditional prior given the
    maps' `conditions` ({"values", "known", "previous"}, N rows each: `slice_conditions`). For
    a two-level prior, -(1 / N h w) sum (log2 p(u) + log2 p(z | u)) with u the maps' coarse
    maps: an upper bound, as its training loss (`PixelCNN`). Computed `batch_size` maps at a
    time, so the (N, h, w, K) logits of a large codebook never sit in memory at once."""
    total = 0.0
    for start in range(0, len(code_maps), batch_size):
        rows = slice(start, start + batch_size)
        batch = code_maps[rows]
        inputs = batch
        if conditions is not None:
            inputs = {"codes": batch, **{name: value[rows] for name, value in conditions.items()}}
        logits = np.asarray(pixelcnn.predict(inputs, batch_size=batch_size, verbose=0))
        bits = bits_per_code(logits, batch)
        if pixelcnn.coarse_prior is not None:
            levels = pixelcnn.with_coarse_map(inputs)
            coarse_logits = pixelcnn.coarse_prior.predict(
                pixelcnn.coarse_inputs(levels), batch_size=batch_size, verbose=0
            )
            coarse_bits = bits_per_code(np.asarray(coarse_logits), np.asarray(levels["coarse"]))
            bits += coarse_bits / COARSE_FACTOR**2
        total += bits * len(batch)
    return total / len(code_maps)


def codebook_use(code_maps: np.ndarray, num_embeddings: int) -> dict[str, float]:
    """Perplexity exp(-sum_k p_k log p_k) of the code frequencies p over all `code_maps`, and the
    fraction of the codes used at all."""
    counts = np.bincount(np.asarray(code_maps).ravel(), minlength=num_embeddings)
    perplexity, used = usage_statistics(counts.astype(np.float32))
    return {"perplexity": float(perplexity), "codes_used": float(used)}


def run_test_metrics(
    hyperparameters: Hyperparameters,
    autoencoder,
    pixelcnn,
    images: np.ndarray,
    code_maps: np.ndarray | None = None,
    conditions: dict | None = None,
) -> dict:
    """The run's headline numbers on the test split (metrics.json): reconstruction scores of
    `images` (N, S, S, 1) by the `autoencoder`; for a VQ-VAE the codebook use of their
    `code_maps` (N, h, w) and, with a prior, its bits per code against the uniform prior's
    log2 K (a conditional prior: given the slices' `conditions`, and with every condition
    unknown, "prior_bits_per_code_unconditioned"); for a VAE (no codes, no `pixelcnn`) its
    `vae_scores`."""
    batch_size = hyperparameters.inference_batch_size
    metrics = {
        "split": "test",
        **score_model(autoencoder, images, batch_size).summary(hyperparameters.ssim_target),
    }
    if hyperparameters.model == "vae":
        return metrics | vae_scores(autoencoder, images, batch_size, hyperparameters.seed)
    metrics |= codebook_use(code_maps, hyperparameters.num_embeddings)
    if pixelcnn is not None:
        metrics["prior_bits_per_code"] = prior_bits_per_code(
            pixelcnn, code_maps, batch_size, conditions
        )
        if conditions is not None:
            hidden = {**conditions, "known": np.zeros_like(conditions["known"])}
            metrics["prior_bits_per_code_unconditioned"] = prior_bits_per_code(
                pixelcnn, code_maps, batch_size, hidden
            )
        metrics["uniform_bits_per_code"] = float(np.log2(hyperparameters.num_embeddings))
    return metrics


def vae_scores(vae, images: np.ndarray, batch_size: int, seed: int) -> dict[str, float]:
    """A VAE's own numbers on `images` (N, S, S, 1): "kl_loss", the mean KL divergence of their
    posteriors to N(0, I) in nats per latent element (`kl_divergence`), and
    "ssim_mean_posterior_draw", the mean SSIM of reconstructions decoded from one posterior draw
    each (`posterior_draw_reconstructions`, `seed`): what its training and validation report,
    beside "ssim_mean" of the reconstructions from mu. The two part when the decoder has learned
    to expect the posterior's noise (BENCHMARKS.md, "Generation")."""
    drawn = posterior_draw_reconstructions(vae, images, batch_size, seed)
    return {
        "kl_loss": float(np.mean(posterior_kl(vae, images, batch_size))),
        "ssim_mean_posterior_draw": float(score_reconstructions(images, drawn).ssim.mean()),
    }


# Generation ---------------------------------------------------------------------------------


def novelty_ssim(
    samples: np.ndarray, reference: np.ndarray, candidates: int = 16, chunk: int = 512
) -> np.ndarray:
    """For each sample, the highest SSIM to any reference (training) slice: near 1 means the
    generator reproduced a training slice. (M, S, S, 1), (N, S, S, 1) -> (M,).

    Exact SSIM against every reference slice costs M x N window passes, so each sample is
    compared with its `candidates` nearest reference slices by Euclidean distance (found with
    one matrix product per `chunk` reference slices); a copy of a training slice is always its
    nearest neighbour. The pairs are scored about `chunk` at a time, so memory does not grow
    with M.
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
    per_pass = max(1, chunk // nearest.shape[1])  # samples whose pairs are scored at once
    best = [
        ssim_per_slice(
            np.repeat(samples[start : start + per_pass], nearest.shape[1], axis=0),
            reference[nearest[start : start + per_pass].ravel()],
        )
        .reshape(-1, nearest.shape[1])
        .max(axis=1)
        for start in range(0, len(samples), per_pass)
    ]
    return np.concatenate(best)


# Realism ------------------------------------------------------------------------------------


def known_ages(slice_set: SliceSet, demographics: dict[str, dict]) -> np.ndarray | None:
    """(N,) float64 ages of each slice's subject, NaN where unknown; None without any age."""
    ages = raw_condition_values("age", slice_set, demographics)
    if ages is None:
        return None
    return np.array([np.nan if age is None else age for age in ages], dtype=np.float64)


def run_feature_network(run: Run, training: SliceSet) -> FeatureNetwork:
    """The run's domain feature network: loaded from its folder, or first trained on (at most
    `FEATURE_TRAINING_SLICES` of) the `training` slices with their relative positions, and
    saved there, so every later report compares in the same features."""
    path = run.folder.feature_network
    if path.exists():
        return load_feature_network(path)
    seed = run.hyperparameters.seed
    chosen = capped_indices(len(training), FEATURE_TRAINING_SLICES, seed)
    positions = training.relative_positions()
    network = train_feature_network(
        training.images[chosen, ..., None] / np.float32(255.0),
        None if positions is None else positions[chosen],
        seed=seed,
    )
    save_model_atomically(network, path)
    return network


def subject_halves(slice_set: SliceSet) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint halves of a split for the real-vs-real floor: its subjects taken
    alternately in sorted order, so that no person is in both halves (slices of one brain in
    both would make real look more alike than new people are); alternate slices when the split
    has a single subject."""
    subjects = np.unique(slice_set.subject_ids)
    if len(subjects) < 2:
        indices = np.arange(len(slice_set))
        return indices[0::2], indices[1::2]
    first = np.isin(slice_set.subject_ids, subjects[0::2])
    return np.flatnonzero(first), np.flatnonzero(~first)


def two_sample_groups(slice_set: SliceSet, indices: np.ndarray) -> np.ndarray:
    """(len(indices),) str: the group of each chosen slice for the classifier two-sample tests,
    whose folds never split a group: its subject; or, where the chosen slices are all one
    person's (a half of a split of two people, or of one), "subject:slab", slabs of
    `SLAB_SLICES` neighbouring levels, so that no slice is judged by a classifier trained on its
    neighbours (which look almost the same)."""
    subjects = slice_set.subject_ids[indices]
    if len(np.unique(subjects)) > 1:
        return subjects
    slabs = slice_set.slice_indices[indices] // SLAB_SLICES
    return np.array([f"{subject}:{slab}" for subject, slab in zip(subjects, slabs, strict=True)])


def judge_conditions(
    run: Run,
    network: FeatureNetwork,
    training: SliceSet,
    held_out: SliceSet,
    reconstructions: np.ndarray,
    demographics: dict[str, dict],
    seed: int,
    out: Path,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    sampling: dict | None = None,
) -> tuple[dict, list[Path]]:
    """How well a conditional prior obeys (`obedience`): for slice_position (`judge_levels`)
    and age (`judge_ages`), the correlation between the values asked for and those a regressor
    reads back from the generated slices, beside the same regressor on held-out slices (the
    ceiling); for the diagnosis (`judge_diagnosis`), how much older the age reader finds slices
    asked for dementia than slices asked for none, beside what it finds in real people (a
    {"skipped": why} where the prior does not take the age or the age reader cannot be
    trained, as for the age); for volumes (`judge_volumes`), the adjacent-slice SSIM of
    generated volumes (drawn coherently and slice by slice on their own) against real held-out
    volumes, and how well a classifier tells their coronal and sagittal cuts from those of
    the training volumes reconstructed, beside what a perfect prior would score. Slices and
    volumes are drawn with `guidance` and `sampling` (keyword arguments of `sample_code_maps`:
    temperature, top_k, top_p, coarse_top_p; None: plain), as `predict.py` would draw them.
    `reconstructions` are the `held_out` slices [N, S, S, 1] as the run's generator gives them
    back (`Run.generator`). Writes obedience_<condition>.png into `out`."""
    names = run.pixelcnn.condition_names
    draw = {"guidance": guidance, **(sampling or {})}
    report, figures = {"guidance": dict(guidance) if isinstance(guidance, dict) else guidance}, []
    if "slice_position" in names and held_out.relative_positions() is not None:
        report["slice_position"], figure = judge_levels(
            run, network, held_out, reconstructions, seed, draw, out
        )
        figures.append(figure)
    if "cdr" in names and "age" not in names:
        report["cdr"] = {"skipped": DIAGNOSIS_NEEDS_AGE}
    if "age" in names:
        try:
            readings = read_training_ages(run, training, demographics, seed)
        except JudgingSkipped as skipped:
            for name in ("age", "cdr"):
                if name in names:
                    report[name] = {"skipped": str(skipped)}
        else:
            report["age"], age_figures = judge_ages(
                run, network, held_out, demographics, readings, seed, draw, out
            )
            figures += age_figures
            if "cdr" in names:
                report["cdr"], figure = judge_diagnosis(
                    run, training, demographics, readings, seed, draw, out
                )
                figures += [figure] if figure else []
    if {"slice_position", "previous_slice"} <= set(names):
        report["volumes"], figure = judge_volumes(run, training, held_out, seed, draw, out)
        figures += [figure] if figure else []
    return report, figures


def judge_levels(
    run: Run,
    network: FeatureNetwork,
    held_out: SliceSet,
    reconstructions: np.ndarray,
    seed: int,
    draw: dict,
    out: Path,
) -> tuple[dict, Path]:
    """Obedience to the slice level: `OBEDIENCE_SAMPLES` slices asked for levels spread evenly
    over the training range (the other conditions unknown), read back by the feature network's
    position head, which reads the real `held_out` slices as its ceiling, and their
    `reconstructions` as the ceiling of any slice drawn through this decoder. `draw`: the
    keyword arguments of `sample_code_maps` (guidance, temperature, top_k, top_p,
    coarse_top_p)."""
    low, high = run.pixelcnn.condition_ranges.get("slice_position", (0.0, 1.0))
    requested = np.linspace(low, high, OBEDIENCE_SAMPLES)
    generated = predict_positions(
        network, generate_slices(run, {"slice_position": requested}, seed, draw)
    )
    real = held_out.relative_positions()
    read = predict_positions(network, held_out.float_images())
    report = {
        "generated": obedience.condition_obedience(requested, generated),
        "reconstructed": obedience.condition_obedience(
            real, predict_positions(network, reconstructions)
        ),
        "real": obedience.condition_obedience(real, read),
        "reader": "the feature network's position head",
    }
    figure = obedience.plot_obedience(
        requested,
        generated,
        real,
        read,
        out / "obedience_slice_position.png",
        "slice position",
        "real held-out slices",
    )
    return report, figure


class JudgingSkipped(Exception):
    """A condition's obedience cannot be judged on this run's data; the message says why."""


@dataclass(frozen=True)
class TrainingAgeReadings:
    """The age reader of a run and what it reads of the training people (`read_training_ages`).

    `rows` (n,) are the training slices it was trained on, `ages` and `people` (n,) theirs.
    `cross_validated` maps "reconstructed" and "real" to the (n,) ages each of those slices
    reads as, from the run's reconstruction of it and from the real slice, by readers that
    never saw its person (`AgeReader.cross_validate` in `folds` folds of whole people), or is
    None with fewer than `MIN_OBEDIENCE_PEOPLE` people.
    """

    reader: AgeReader
    rows: np.ndarray
    ages: np.ndarray
    people: np.ndarray
    folds: int
    cross_validated: dict[str, np.ndarray] | None


def read_training_ages(
    run: Run, training: SliceSet, demographics: dict[str, dict], seed: int
) -> TrainingAgeReadings:
    """An `AgeReader` trained on the reconstructions of at most `FEATURE_TRAINING_SLICES`
    training slices at the reader's `READ_LEVELS` of known age (chosen with `seed`), by the
    run's generator (`Run.generator`): a generator's slices are decoder outputs, and a reader
    trained on real slices reads a decoder's blur as tissue. With at least
    `MIN_OBEDIENCE_PEOPLE` training people, what every one of them reads as by readers trained
    on the others (in at most `CROSS_VALIDATION_FOLDS` folds), from the reconstructions and
    from the real slices. Raises `JudgingSkipped` when the data cannot train the reader."""
    ages = known_ages(training, demographics)
    levels = training.relative_positions()
    if ages is None:
        raise JudgingSkipped("the data's demographics give no ages to check the reader by")
    if levels is None:
        raise JudgingSkipped("the data has no slice levels, which the age reader needs")
    used = readable_levels(levels) & np.isfinite(ages)
    rows = np.flatnonzero(used)[capped_indices(int(used.sum()), FEATURE_TRAINING_SLICES, seed)]
    images = training.images[rows, ..., None] / np.float32(255.0)
    reconstructions = reconstruct_images(
        run.generator, images, run.hyperparameters.inference_batch_size
    )
    try:
        reader = AgeReader.fit(reconstructions, levels[rows], ages[rows])
    except ValueError as error:
        raise JudgingSkipped(str(error)) from None
    people = training.subject_ids[rows]
    folds = min(CROSS_VALIDATION_FOLDS, len(np.unique(people)))
    cross_validated = None
    if folds >= MIN_OBEDIENCE_PEOPLE:
        cross_validated = {
            side: AgeReader.cross_validate(side_images, levels[rows], ages[rows], people, folds)[1]
            for side, side_images in (("reconstructed", reconstructions), ("real", images))
        }
    return TrainingAgeReadings(reader, rows, ages[rows], people, folds, cross_validated)


def judge_ages(
    run: Run,
    network: FeatureNetwork,
    held_out: SliceSet,
    demographics: dict[str, dict],
    readings: TrainingAgeReadings,
    seed: int,
    draw: dict,
    out: Path,
) -> tuple[dict, list[Path]]:
    """Obedience to age: `OBEDIENCE_SAMPLES` slices asked for ages spread evenly over the
    training range, at levels spread evenly over the reader's `READ_LEVELS` (asked too, when
    the prior takes the level; read by the feature network otherwise), the other conditions
    unknown, drawn with `draw` (keyword arguments of `sample_code_maps`), read back by the
    run's age reader (`read_training_ages`). Its ceiling is the reconstructions of the
    `held_out` slices by the run's generator (what a perfect prior's slices could show through
    this decoder); its reading of the real held-out slices is reported too. With at least
    `MIN_OBEDIENCE_PEOPLE` training people, the same ceilings over all of them
    ("cross_validated": each person read by readers trained on the others): a small held-out
    split's r moves with who is in it.
    When the prior takes the level, whole volumes are judged as well (`judge_volume_ages`).
    Returns ({"skipped": why}, []) when the held-out slices cannot check the reader; otherwise
    the report and the figures obedience_age.png (and obedience_age_volumes.png)."""
    held_out_ages = known_ages(held_out, demographics)
    held_out_levels = held_out.relative_positions()
    if held_out_ages is None or held_out_levels is None:
        return {"skipped": "the held-out slices have no known ages or levels to check by"}, []
    checked = np.flatnonzero(readable_levels(held_out_levels) & np.isfinite(held_out_ages))
    if len(checked) < MIN_CHECKED_SLICES or np.ptp(held_out_ages[checked]) == 0:
        return {
            "skipped": f"the {len(checked)} held-out slices at levels {READ_LEVELS[0]}-"
            f"{READ_LEVELS[1]} with a known age are too few, or all of one age"
        }, []
    reader = readings.reader
    low, high = run.pixelcnn.condition_ranges.get("age", (0.0, 100.0))
    requested = np.linspace(low, high, OBEDIENCE_SAMPLES)
    levels = np.random.default_rng(seed).permutation(np.linspace(*READ_LEVELS, len(requested)))
    asked = {"age": requested}
    if "slice_position" in run.pixelcnn.condition_names:
        asked["slice_position"] = levels
    generated = generate_slices(run, asked, seed, draw)
    if "slice_position" not in asked:
        levels = predict_positions(network, generated)
        readable = np.flatnonzero(readable_levels(levels)) if levels is not None else []
        if len(readable) < MIN_CHECKED_SLICES:
            return {
                "skipped": "the prior does not take the slice level, and too few of its "
                f"slices were read at levels {READ_LEVELS[0]}-{READ_LEVELS[1]}"
            }, []
        requested, levels, generated = requested[readable], levels[readable], generated[readable]
    read = reader.predict(generated, levels)

    images = held_out.images[checked, ..., None] / np.float32(255.0)
    truth, where = held_out_ages[checked], held_out_levels[checked]
    batch_size = run.hyperparameters.inference_batch_size
    reconstructed = reader.predict(reconstruct_images(run.generator, images, batch_size), where)
    real_read = reader.predict(images, where)
    people = held_out.subject_ids[checked]
    report = {
        "generated": obedience.condition_obedience(requested, read),
        "reconstructed": obedience.condition_obedience(truth, reconstructed),
        "real": obedience.condition_obedience(truth, real_read),
        "reader": "tissue composition (age_reader), trained on reconstructed training slices",
        "held_out_people": len(np.unique(people)),
    }
    if readings.cross_validated is not None:
        # The ceilings over every training person, each read by readers that never saw them:
        # the reader's recipe on the reconstructions, and readers trained on real slices (how
        # much of the age one slice shows before the decoder).
        report["cross_validated"] = {
            side: obedience.condition_obedience(readings.ages, reads)
            for side, reads in readings.cross_validated.items()
        }
        report["cross_validated"]["people"] = len(np.unique(readings.people))
        report["cross_validated"]["folds"] = readings.folds
    figures = [
        obedience.plot_obedience(
            requested,
            read,
            truth,
            reconstructed,
            out / "obedience_age.png",
            "age (years)",
            "reconstructed held-out slices",
        )
    ]
    if "slice_position" in run.pixelcnn.condition_names:
        ceilings = {
            side: per_person_means(people, truth, reads)
            for side, reads in (("reconstructed", reconstructed), ("real", real_read))
        }
        report["volumes"], figure = judge_volume_ages(
            run, reader, (low, high), ceilings, seed, draw, out
        )
        figures += [figure] if figure else []
    return report, figures


def judge_diagnosis(
    run: Run,
    training: SliceSet,
    demographics: dict[str, dict],
    readings: TrainingAgeReadings,
    seed: int,
    draw: dict,
    out: Path,
) -> tuple[dict, Path | None]:
    """Obedience to the diagnosis (the clinical dementia rating, CDR), read as ageing: dementia
    shrinks the brain beyond its years (wider ventricles and sulci), so the run's age reader
    (`read_training_ages`) finds a demented brain older than it is. `DIAGNOSIS_PAIRS` pairs of
    slices are drawn with `draw` (keyword arguments of `sample_code_maps`), both of a pair
    asked for the same age and level, one for CDR 0 and one for CDR c = min(1, the highest CDR
    the prior saw), with the same random numbers (the same seed); the ages are spread evenly
    over those of the demented training people, the levels over the reader's `READ_LEVELS`.
    Their effect is `obedience.apparent_age_effect`: the years per CDR point by which the
    slices read older, the asked age held fixed. Its ceiling is the same effect in the training
    people of known CDR within those ages, each read by readers that never saw them
    (`TrainingAgeReadings.cross_validated`), from their reconstructions (what a perfect prior's
    slices could show through this decoder) and their real slices.
    Returns ({"skipped": why}, None) when the data or the prior cannot show it; otherwise the
    report and obedience_cdr.png."""
    if "slice_position" not in run.pixelcnn.condition_names:
        return {"skipped": "the prior does not take the slice level, which the reader needs"}, None
    cdr = raw_condition_values("cdr", training, demographics)
    if cdr is None:
        return {"skipped": "the data's demographics give no CDR"}, None
    cdr = np.array([np.nan if value is None else value for value in cdr], dtype=np.float64)
    ages = known_ages(training, demographics)
    demented = (cdr > 0) & np.isfinite(ages)
    asked_cdr = min(1.0, run.pixelcnn.condition_ranges.get("cdr", (0.0, 0.0))[1])
    if not demented.any() or asked_cdr <= 0:
        return {"skipped": "no training person has dementia (CDR above 0)"}, None
    age_range = (float(ages[demented].min()), float(ages[demented].max()))
    levels = np.random.default_rng(seed).permutation(np.linspace(*READ_LEVELS, DIAGNOSIS_PAIRS))
    asked_ages = np.linspace(*age_range, DIAGNOSIS_PAIRS)
    reads = {
        value: readings.reader.predict(
            generate_slices(
                run,
                {
                    "age": asked_ages,
                    "cdr": np.full(DIAGNOSIS_PAIRS, value),
                    "slice_position": levels,
                },
                seed,
                draw,
            ),
            levels,
        )
        for value in (0.0, asked_cdr)
    }
    generated = (
        np.repeat([0.0, asked_cdr], DIAGNOSIS_PAIRS),
        np.tile(asked_ages, 2),
        np.concatenate([reads[0.0], reads[asked_cdr]]),
    )
    report = {
        "asked_cdr": [0.0, asked_cdr],
        "age_range": list(age_range),
        "generated": obedience.apparent_age_effect(*generated),
        "reader": "the age reader (tissue composition): years older per CDR point, the age "
        "held fixed",
    }
    people = None
    if readings.cross_validated is not None:
        slice_cdr = cdr[readings.rows]
        within = np.flatnonzero(
            np.isfinite(slice_cdr)
            & (readings.ages >= age_range[0])
            & (readings.ages <= age_range[1])
        )
        who, their_cdr = readings.people[within], slice_cdr[within]
        person_cdr, person_age = per_person_means(who, their_cdr, readings.ages[within])
        people = {
            side: (person_cdr, person_age, per_person_means(who, their_cdr, reads[within])[1])
            for side, reads in readings.cross_validated.items()
        }
        try:
            report["cross_validated"] = {
                side: obedience.apparent_age_effect(*values) for side, values in people.items()
            }
        except ValueError as error:
            report["cross_validated"] = {"skipped": str(error)}
            people = None
    figure = obedience.plot_diagnosis(
        generated, people["reconstructed"] if people else None, out / "obedience_cdr.png"
    )
    return report, figure


def per_person_means(people, ages, reads) -> tuple[np.ndarray, np.ndarray]:
    """(ages (P,), mean reads (P,)) of the P distinct `people` (N,), from slice values (N,):
    each person's age (the mean of `ages` over their slices: any value of the person, such as
    their CDR) and the mean of the reads of their slices, people in sorted order."""
    names, person = np.unique(np.asarray(people), return_inverse=True)
    counts = np.bincount(person, minlength=len(names))
    mean_reads = np.bincount(person, weights=reads, minlength=len(names)) / counts
    mean_ages = np.bincount(person, weights=ages, minlength=len(names)) / counts
    return mean_ages, mean_reads


def read_volume_ages(reader: AgeReader, volumes: np.ndarray) -> np.ndarray:
    """(V,) the age of each volume (V, D, S, S) in [0, 1], slices bottom to top, as the mean
    of the ages `reader` reads from its slices d at levels d / (D - 1) within `READ_LEVELS`."""
    depth = volumes.shape[1]
    levels = np.arange(depth) / (depth - 1)
    readable = np.flatnonzero(readable_levels(levels))
    if len(readable) == 0:
        raise ValueError(f"volumes of {depth} slices have none at levels {READ_LEVELS}")
    slices = volumes[:, readable].reshape(-1, *volumes.shape[2:])
    reads = reader.predict(slices, np.tile(levels[readable], len(volumes)))
    return reads.reshape(len(volumes), len(readable)).mean(axis=1)


def judge_volume_ages(
    run: Run,
    reader: AgeReader,
    age_range: tuple[float, float],
    ceilings: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    draw: dict,
    out: Path,
) -> tuple[dict, Path | None]:
    """Obedience to age of whole brains, as a brain-age regressor judges a scan: `AGE_VOLUMES`
    volumes of `VOLUME_DEPTH` slices (coherent when the prior takes the slice below; drawn with
    `draw`, keyword arguments of `sample_code_maps`) asked for ages spread evenly over
    `age_range`, each read as the mean of its slices' reads
    (`read_volume_ages`). The ceilings are the held-out people, each their age against the
    mean read of their slices (`ceilings`: side -> `per_person_means`, "reconstructed" and
    "real"). Returns ({"skipped": why}, None) with fewer than 3 held-out people or all of one
    age; otherwise the report and obedience_age_volumes.png."""
    people_ages, reconstructed = ceilings["reconstructed"]
    if len(people_ages) < MIN_OBEDIENCE_PEOPLE or np.ptp(people_ages) == 0:
        return {
            "skipped": f"{len(people_ages)} held-out people of known age, fewer than "
            f"{MIN_OBEDIENCE_PEOPLE} or all of one age"
        }, None
    requested = np.linspace(*age_range, AGE_VOLUMES)
    coherent = "previous_slice" in run.pixelcnn.condition_names
    _, volumes = sample_volumes(
        run,
        AGE_VOLUMES,
        VOLUME_DEPTH,
        conditions={"age": requested},
        seed=seed,
        coherent=coherent,
        **draw,
    )
    read = read_volume_ages(reader, volumes.astype(np.float32) / np.float32(255.0))
    report = {
        "generated": obedience.condition_obedience(requested, read),
        **{
            side: obedience.condition_obedience(*ceilings[side])
            for side in ("reconstructed", "real")
        },
        "coherent": coherent,
    }
    figure = obedience.plot_obedience(
        requested,
        read,
        people_ages,
        reconstructed,
        out / "obedience_age_volumes.png",
        "age (years)",
        "reconstructed held-out people",
    )
    return report, figure


def generate_slices(run: Run, conditions: dict, seed: int, draw: dict) -> np.ndarray:
    """Slices (N, S, S, 1) in [0, 1] drawn from the run's prior with `conditions` (each a
    sequence of N values) and `draw` (keyword arguments of `sample_code_maps`: guidance,
    temperature, top_k, top_p, coarse_top_p), decoded by its generator (`Run.generator`)."""
    count = len(next(iter(conditions.values())))
    codes = sample_code_maps(run.pixelcnn, count, seed=seed, conditions=conditions, **draw)
    return decode_code_maps(run.generator, codes, run.hyperparameters.inference_batch_size)


def judge_volumes(
    run: Run,
    training: SliceSet,
    held_out: SliceSet,
    seed: int,
    draw: dict,
    out: Path,
) -> tuple[dict, Path | None]:
    """The volume measures of `judge_conditions`. `GENERATED_VOLUMES` volumes are drawn with
    `draw` (keyword arguments of `sample_code_maps`) two ways with the same seed: coherent (each
    slice on the slice below) and slice by slice (each on its own, at its level). They are set
    against up to `REFERENCE_VOLUMES` `training` volumes as the run's generator gives them back
    (`Run.generator`): what a perfect prior would draw, its code maps those of the people it
    learned from, decoded as samples are.

    - adjacent-slice SSIM (`obedience.adjacent_slice_ssim`) of both, beside the real held-out
      volumes';
    - a classifier two-sample test on their coronal and sagittal cuts (`obedience.cut_images`;
      `realism.classifier_two_sample_accuracy` on block means and texture, grouped by volume):
      each way's cuts against the reconstructed training volumes' (0.5: told apart no better
      than chance), beside what a perfect prior would score (the reconstructed training
      volumes in two halves, one against the other) and the real held-out volumes against the
      reconstructed ones (what the decoder alone gives away).

    The classifier learns from the cuts themselves: the run's feature network learned axial
    slices, and the Fréchet distance of cuts in its features ranked volumes drawn slice by
    slice, whose cuts break at every slice, above coherent ones (BENCHMARKS.md, "Volumes judged
    by a classifier on their cuts"). Returns the report and volume_cuts.png, written into `out`
    (`obedience.plot_volume_cuts`: real, reconstructed, coherent, slice by slice). With fewer
    than `MIN_REFERENCE_VOLUMES` training volumes it returns ({"skipped": why}, None)."""
    real, _ = obedience.real_volumes(held_out)
    training_volumes, _ = obedience.real_volumes(training)
    if len(training_volumes) < MIN_REFERENCE_VOLUMES:
        return {
            "skipped": f"{len(training_volumes)} training volumes of {training_volumes.shape[1]} "
            f"slices; telling cuts apart needs {MIN_REFERENCE_VOLUMES} (two halves of two)"
        }, None
    reference = training_volumes[capped_indices(len(training_volumes), REFERENCE_VOLUMES, seed)]
    count, depth, size = len(reference), reference.shape[1], reference.shape[2]
    reference = reconstruct_images(
        run.generator,
        reference.reshape(-1, size, size, 1),
        run.hyperparameters.inference_batch_size,
    ).reshape(count, depth, size, size)

    def told_apart(volumes_a: np.ndarray, volumes_b: np.ndarray) -> float:
        cuts_a, groups_a = obedience.cut_images(volumes_a, size)
        cuts_b, groups_b = obedience.cut_images(volumes_b, size)
        return realism.classifier_two_sample_accuracy(
            cuts_a, cuts_b, seed=seed, groups_a=groups_a, groups_b=groups_b + len(volumes_a)
        )

    report = {"volumes": GENERATED_VOLUMES, "depth": depth, "reference_volumes": count}
    report["real_adjacent_ssim"] = obedience.adjacent_slice_ssim(real)["mean"]
    # Cuts of volumes of another depth would be stretched differently; a test needs 2 people.
    if real.shape[1] == depth and len(real) >= 2:
        report["real_vs_reconstructed_cut_c2st"] = told_apart(real, reference)
    report["perfect_prior_cut_c2st"] = told_apart(reference[: count // 2], reference[count // 2 :])
    drawn = {}
    for coherent, kind in ((True, "coherent"), (False, "independent")):
        _, volumes = sample_volumes(
            run, GENERATED_VOLUMES, depth, seed=seed, coherent=coherent, **draw
        )
        drawn[kind] = volumes.astype(np.float32) / np.float32(255.0)
        report[f"{kind}_adjacent_ssim"] = obedience.adjacent_slice_ssim(drawn[kind])["mean"]
        report[f"{kind}_cut_c2st"] = told_apart(drawn[kind], reference)
    figure = obedience.plot_volume_cuts(
        {
            "real (held out)": real,
            "reconstructed": reference,
            "coherent": drawn["coherent"],
            "slice by slice": drawn["independent"],
        },
        out / "volume_cuts.png",
    )
    return report, figure


def prior_training_slices(
    run: Run, training: SliceSet, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` training slices (all of them if there are fewer) drawn with `seed`, as the run's
    prior learned them: each flipped left to right with probability 1/2 where it trained on
    mirror images too (`prior_mirror_images`). Returns the images (count, S, S, 1) in [0, 1]
    and their rows in `training` (count,)."""
    rows = capped_indices(len(training), count, seed)
    images = training.images[rows, ..., None] / np.float32(255.0)
    if run.pixelcnn is not None and run.hyperparameters.prior_mirror_images:
        flipped = np.random.default_rng([seed, MIRROR_STREAM]).random(len(rows)) < 0.5
        images[flipped] = images[flipped, :, ::-1]
    return images, rows


def perfect_prior_draws(
    run: Run, training: SliceSet, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """What `count` samples of a perfect prior would be: the maps it learned from
    (`prior_training_slices`), encoded and decoded by the run's generator (`Run.generator`) as
    its samples are. Returns the images (count, S, S, 1) in [0, 1] and each one's subject id
    (count,)."""
    images, rows = prior_training_slices(run, training, count, seed)
    batch_size = run.hyperparameters.inference_batch_size
    return reconstruct_images(run.generator, images, batch_size), training.subject_ids[rows]


def judge_realism(
    run: Run,
    training: SliceSet,
    held_out: SliceSet,
    halves: tuple[np.ndarray, np.ndarray],
    reconstructions: np.ndarray,
    samples: np.ndarray,
    out: Path,
    convolutional_c2st: bool = False,
) -> tuple[dict, list[Path]]:
    """`realism.realism_report` of `samples` (M, S, S, 1) against the `held_out` slices, in two
    `halves` (index arrays, `subject_halves`), and the `reconstructions` of all of them by the
    run's generator (`Run.generator`), beside M `perfect_prior_draws`, in the run's
    feature network, the two-sample tests grouped by `two_sample_groups` (also by a
    convolutional classifier with `convolutional_c2st`), with figures written into `out`: the
    measures beside their floors, the three sets' power spectra and the samples beside their
    nearest training slices."""
    network = run_feature_network(run, training)
    seed = run.hyperparameters.seed
    reference = capped_indices(len(training), REFERENCE_TRAINING_SLICES, seed)
    reference_images = training.images[reference, ..., None] / np.float32(255.0)
    positions = training.relative_positions()
    levels = np.full(len(reference), 0.5) if positions is None else positions[reference]
    first, second = halves
    images = held_out.float_images()
    perfect_prior, perfect_prior_people = perfect_prior_draws(run, training, len(samples), seed)
    report = realism.realism_report(
        network,
        images[first],
        images[second],
        reconstructions[first],
        reconstructions[second],
        samples,
        reference_images,
        levels,
        groups_a=two_sample_groups(held_out, first),
        groups_b=two_sample_groups(held_out, second),
        seed=seed,
        convolutional=convolutional_c2st,
        perfect_prior=perfect_prior,
        perfect_prior_groups=perfect_prior_people,
    )
    figures = [
        realism.plot_realism(report, out / "realism.png"),
        realism.plot_spectra(
            {
                "real": images,
                "reconstructions": reconstructions,
                "samples": samples,
            },
            out / "spectrum.png",
        ),
        realism.plot_nearest_training(
            network, samples, reference_images, out / "nearest_training.png"
        ),
    ]
    return report, [Path(figure) for figure in figures]


# Evaluating a run --------------------------------------------------------------------------


def evaluate_run(
    run_dir: Path,
    data: Path | None = None,
    split: str = "test",
    samples: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    cache_dir: Path | None = None,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    coarse_top_p: float | None = None,
    slices: BrainSlices | None = None,
    progress: Callable[[str], None] | None = None,
    convolutional_c2st: bool = False,
    judge_obedience: bool = True,
) -> dict:
    """Score a trained run's reconstructions of `split` and its samples (`samples` of them,
    from its prior, or from N(0, I) for a VAE run; default as many as the split has slices, at
    least `MIN_SAMPLES`: the realism measures compare as many of them as half the split has,
    and their diversity takes them all); write the figures and the numbers (`report.json`)
    into `out` (default `run_dir/similarity_<split>`) and return the numbers. The samples are
    drawn with `temperature`, `top_k`, `top_p` and `coarse_top_p` as `predict.py` draws them
    (`sample_code_maps`; either nucleus None: the run's own, `effective_nuclei`; a VAE run
    takes the temperature only). A conditional prior's obedience is judged on draws with
    `guidance` and the same sampling (`judge_conditions`), unless `judge_obedience` is False
    (most of a hifi run's judging time). `convolutional_c2st` adds the
    two-sample tests by a convolutional classifier (`realism.convolutional_two_sample_accuracy`,
    minutes on a CPU). `slices`, when given, is the data already loaded with the splits the
    run was trained on (as `training.train_run` took them); by default the run's data (or
    `data`) is loaded and split as the run saw it. `progress`, when given, is called with a
    line saying what starts next (the judging of a hifi run takes minutes on a CPU;
    `similarity.py` prints them)."""
    announce = progress or (lambda message: None)
    run = load_run(run_dir, prior="optional")
    hyperparameters, autoencoder, pixelcnn = run.hyperparameters, run.autoencoder, run.pixelcnn
    check_temperature(temperature)
    check_top_k(top_k, hyperparameters.num_embeddings)
    check_top_p(top_p)
    check_top_p(coarse_top_p, "coarse_top_p")
    try:
        check_prior_options(run, top_k, top_p, coarse_top_p)
        nuclei = effective_nuclei(run, top_p, coarse_top_p)
    except ValueError as error:
        raise RunError(str(error)) from None
    if slices is None:
        slices = load_run_data(run, data, cache_dir=cache_dir)
    chosen = slices.splits.get(split)
    if chosen is None or len(chosen) == 0:
        raise RunError(f"{slices.source} has no slices in the {split!r} split")
    out = Path(out) if out else run.folder.path / f"similarity_{split}"
    out.mkdir(parents=True, exist_ok=True)

    batch_size = hyperparameters.inference_batch_size
    announce(f"reconstructing the {len(chosen)} slices of the {split} split")
    images = chosen.float_images()
    reconstructions = reconstruct_images(autoencoder, images, batch_size)
    scores = score_reconstructions(images, reconstructions)
    target = hyperparameters.ssim_target
    report = {"run": str(run.folder.path), "data": str(slices.source), "split": split}
    report["sampling"] = {"temperature": temperature, "top_k": top_k, **nuclei}
    # Which decoder draws the samples: the adversarial stage's, or the autoencoder's own.
    report["sampling"]["decoder"] = "adversarial" if run.adversarial is not None else run.kind
    report |= scores.summary(target)
    labels = [f"{s} #{i}" for s, i in zip(chosen.subject_ids, chosen.slice_indices, strict=True)]
    figures = [
        plotting.plot_ssim_histogram(scores.ssim, target, out / "ssim_histogram.png"),
        plotting.plot_ssim_by_slice(
            scores.ssim, chosen.slice_indices, target, out / "ssim_by_slice.png"
        ),
        plotting.plot_worst_slices(
            images, reconstructions, scores.ssim, labels, out / "worst_slices.png"
        ),
    ]
    history = run.folder.history(run.kind)
    if history.exists():
        figures.append(plotting.plot_ssim_history(history, target, out / "ssim_per_epoch.png"))

    # The slices as the decoder of the samples gives them back: what a perfect prior's samples
    # would look like, the reference of the realism and obedience measures.
    drawn_reconstructions = reconstructions
    if run.adversarial is not None:
        drawn_reconstructions = reconstruct_images(run.generator, images, batch_size)
    generated = None
    samples = samples or max(MIN_SAMPLES, len(chosen))
    if run.kind == "vae" or pixelcnn is not None:
        announce(f"drawing {samples} samples")
    if run.kind == "vae":
        report |= vae_scores(autoencoder, images, batch_size, hyperparameters.seed)
        generated = autoencoder.sample(samples, seed=seed, temperature=temperature)
    elif pixelcnn is not None:
        real_codes = encode_code_maps(autoencoder, images, batch_size=batch_size)
        conditions = None
        if pixelcnn.condition_names:
            conditions = slice_conditions(
                pixelcnn.condition_names, chosen, slices.demographics, real_codes
            )
        report["prior_bits_per_code"] = prior_bits_per_code(
            pixelcnn, real_codes, batch_size, conditions
        )
        report["uniform_bits_per_code"] = float(np.log2(hyperparameters.num_embeddings))
        sampled_codes = sample_code_maps(
            pixelcnn,
            samples,
            temperature,
            seed=seed,
            top_k=top_k,
            conditions=with_drawn_levels(pixelcnn, samples, None, seed),
            **nuclei,
        )
        if "slice_position" in pixelcnn.condition_names:
            report["sampling"]["slice_position"] = "drawn uniformly over the trained levels"
        generated = decode_code_maps(run.generator, sampled_codes, batch_size=batch_size)
        real_usage = code_usage(real_codes, hyperparameters.num_embeddings)
        sampled_usage = code_usage(sampled_codes, hyperparameters.num_embeddings)
        report["code_usage_total_variation"] = float(0.5 * np.abs(real_usage - sampled_usage).sum())
        figures.append(plotting.plot_code_usage(real_usage, sampled_usage, out / "code_usage.png"))
    if generated is not None:
        novelty = novelty_ssim(generated, slices.splits["train"].float_images())
        report |= {
            "samples": samples,
            "novelty_ssim_mean": float(novelty.mean()),
            "novelty_ssim_max": float(novelty.max()),
        }
        halves = subject_halves(chosen)
        smallest = min(len(half) for half in halves)
        if smallest < MIN_REALISM_SLICES:
            report["realism_skipped"] = (
                f"the realism measures compare two halves of the {split} split's people of at "
                f"least {MIN_REALISM_SLICES} slices each; the smaller half has {smallest}"
            )
        else:
            announce(
                "judging how real and varied the samples are"
                + (" (with convolutional two-sample tests: minutes)" if convolutional_c2st else "")
            )
            realism_numbers, realism_figures = judge_realism(
                run,
                slices.splits["train"],
                chosen,
                halves,
                drawn_reconstructions,
                generated,
                out,
                convolutional_c2st,
            )
            report["realism"] = realism_numbers
            figures += realism_figures
    conditional = pixelcnn is not None and bool(pixelcnn.condition_names)
    if conditional and not judge_obedience:
        report["conditions_skipped"] = "not asked for"
    elif conditional and "realism" in report:
        announce("judging the conditions: slices asked for levels, ages and a diagnosis, volumes")
        network = run_feature_network(run, slices.splits["train"])
        report["conditions"], condition_figures = judge_conditions(
            run,
            network,
            slices.splits["train"],
            chosen,
            drawn_reconstructions,
            slices.demographics,
            seed,
            out,
            guidance,
            {"temperature": temperature, "top_k": top_k, **nuclei},
        )
        figures += condition_figures
    report["figures"] = [str(path) for path in figures]
    report["report_file"] = str(out / REPORT_FILE)
    write_atomically(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
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
    if "kl_loss" in report:
        rows.append(("KL to N(0, I) (nats/element)", f"{report['kl_loss']:.4f}"))
        rows.append(
            ("SSIM mean, from a posterior draw", f"{report['ssim_mean_posterior_draw']:.4f}")
        )
    if "prior_bits_per_code" in report:
        rows.append(
            (
                "prior NLL (bits/code)",
                f"{report['prior_bits_per_code']:.3f} "
                f"(uniform {report['uniform_bits_per_code']:.3f})",
            )
        )
    if "samples" in report:
        sampling = report["sampling"]
        coarse = sampling.get("coarse_top_p")
        coarse = "" if coarse is None else f", coarse level top-p {coarse:g}"
        rows += [
            (
                "sampling",
                f"temperature {sampling['temperature']:g}, top-k {sampling['top_k'] or 'all'}, "
                f"top-p {sampling['top_p'] or 1:g}{coarse}, decoded by the "
                f"{sampling.get('decoder', 'vqvae')} decoder",
            ),
            ("novelty (max SSIM to train), mean", f"{report['novelty_ssim_mean']:.4f}"),
        ]
    if "code_usage_total_variation" in report:
        rows.append(("code usage total variation", f"{report['code_usage_total_variation']:.4f}"))
    width = max(len(name) for name, _ in rows)
    title = f"{report['run']} on the {report['split']} split of {report['data']}"
    lines = [title, *(f"  {name:<{width}}  {value}" for name, value in rows)]
    if "realism" in report:
        lines += ["", f"{report['samples']} samples against the held-out slices:"]
        lines.append(realism.format_realism(report["realism"]))
    if "conditions" in report:
        lines += [
            "",
            f"conditional prior, guidance {describe_guidance(report['conditions']['guidance'])} "
            "(obedience: r of asked against read back; ceiling: held-out slices):",
        ]
        lines += format_conditions(report["conditions"])
    if "realism_skipped" in report:
        lines += ["", f"realism not measured: {report['realism_skipped']}"]
    if "conditions_skipped" in report:
        lines += ["", f"conditional prior's obedience not judged: {report['conditions_skipped']}"]
    if "report_file" in report:
        lines += ["", f"numbers in {report['report_file']}, figures beside it"]
    return "\n".join(lines)


def format_diagnosis(scores: dict) -> str:
    """The line of `format_conditions` on the diagnosis (`judge_diagnosis`)."""

    def years(effect: dict) -> str:
        return f"{effect['years_per_cdr']:+.1f} ± {effect['standard_error']:.1f}"

    low, high = scores["age_range"]
    line = (
        f"  cdr: slices asked for CDR {scores['asked_cdr'][1]:g} read "
        f"{years(scores['generated'])} years older per CDR point than those asked for CDR 0 "
        f"at the same ages ({low:g}-{high:g}) and levels"
    )
    ceiling = scores.get("cross_validated")
    if ceiling is None:
        return line
    if "skipped" in ceiling:
        return line + f" (no ceiling: {ceiling['skipped']})"
    return line + (
        f" (ceiling: {ceiling['reconstructed']['count']} training people of known CDR, "
        f"cross-validated, reconstructed {years(ceiling['reconstructed'])}, real "
        f"{years(ceiling['real'])})"
    )


def format_conditions(conditions: dict) -> list[str]:
    """The lines of `format_report` on a conditional prior's obedience and volumes."""
    lines = []
    for name, scores in conditions.items():
        if name in ("volumes", "guidance"):
            continue
        if "skipped" in scores:
            lines.append(f"  {name}: {scores['skipped']}")
            continue
        if name == "cdr":
            lines.append(format_diagnosis(scores))
            continue
        generated = scores["generated"]
        # The ceiling is the held-out slices as the decoder gives them back.
        ceiling = scores.get("reconstructed", scores["real"])
        line = (
            f"  {name}: r {generated['r']:.3f}, MAE {generated['mae']:.3g} "
            f"(ceiling r {ceiling['r']:.3f}, MAE {ceiling['mae']:.3g}"
        )
        if "reconstructed" in scores:
            line += f"; real slices r {scores['real']['r']:.3f}"
        if "cross_validated" in scores:
            cross = scores["cross_validated"]
            line += (
                f"; cross-validated over {cross['people']} training people: reconstructed r "
                f"{cross['reconstructed']['r']:.3f}, real r {cross['real']['r']:.3f}"
            )
        lines.append(line + ")")
        volumes = scores.get("volumes", {})
        if "skipped" in volumes:
            lines.append(f"  {name} of whole volumes: {volumes['skipped']}")
        elif volumes:
            lines.append(
                f"  {name} of whole volumes: r {volumes['generated']['r']:.3f}, MAE "
                f"{volumes['generated']['mae']:.3g} (ceiling: held-out people r "
                f"{volumes['reconstructed']['r']:.3f}, MAE {volumes['reconstructed']['mae']:.3g}; "
                f"real r {volumes['real']['r']:.3f})"
            )
    volumes = conditions.get("volumes")
    if volumes and "skipped" in volumes:
        lines.append(f"  volumes: {volumes['skipped']}")
    elif volumes:
        lines.append(
            f"  {volumes['volumes']} volumes of {volumes['depth']} slices drawn each way, "
            f"adjacent-slice SSIM: coherent {volumes['coherent_adjacent_ssim']:.3f}, "
            f"slice by slice {volumes['independent_adjacent_ssim']:.3f}, "
            f"real {volumes['real_adjacent_ssim']:.3f}"
        )
        line = (
            "  coronal/sagittal cuts told from those of "
            f"{volumes['reference_volumes']} training volumes reconstructed (C2ST, 0.5 = not at "
            f"all): coherent {volumes['coherent_cut_c2st']:.3f}, slice by slice "
            f"{volumes['independent_cut_c2st']:.3f} (a perfect prior "
            f"{volumes['perfect_prior_cut_c2st']:.3f}"
        )
        if "real_vs_reconstructed_cut_c2st" in volumes:
            line += f"; real held-out volumes {volumes['real_vs_reconstructed_cut_c2st']:.3f}"
        lines.append(line + ")")
    return lines
