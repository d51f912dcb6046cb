"""Reconstruction summaries, generation-quality measures and `python similarity.py`."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import types

import numpy as np
import pytest
from conftest import tiny_arguments
from fixtures import OASIS1_COLUMNS, write_csv
from PIL import Image

import similarity
from brain_vqvae import evaluation, generation, metrics, realism, runs
from brain_vqvae.data.slices import make_slice_set


def test_summary_counts_slices_at_or_above_the_target():
    scores = evaluation.SliceScores(
        ssim=np.array([0.2, 0.6, 0.9, 0.95]), psnr=np.full(4, 20.0), mae=np.full(4, 0.1)
    )
    summary = scores.summary(0.6)
    assert summary["fraction_above_target"] == 0.75
    assert summary["ssim_mean"] == pytest.approx(0.6625)
    assert summary["slices"] == 4


def test_novelty_detects_a_generator_that_copies_its_training_set(image_pairs):
    training, _ = image_pairs
    copies = training[[2, 0]]
    assert evaluation.novelty_ssim(copies, training) == pytest.approx([1.0, 1.0], abs=1e-5)
    fresh = np.random.default_rng(5).random((2, 48, 48, 1), dtype=np.float32)
    assert evaluation.novelty_ssim(fresh, training).max() < 0.2


def test_novelty_scored_a_few_samples_at_a_time_is_the_best_ssim_to_any_reference(image_pairs):
    """Five noisy copies scored two at a time (the last pass ragged): each sample's highest SSIM
    over every reference slice, found by scoring it against all of them."""
    training, noisy = image_pairs
    samples = np.concatenate([noisy, noisy[[1]]])
    every = [
        metrics.ssim_per_slice(np.repeat(sample[None], len(training), axis=0), training).max()
        for sample in samples
    ]
    novelty = evaluation.novelty_ssim(samples, training, candidates=2, chunk=4)
    assert novelty == pytest.approx(every, abs=1e-6)


def test_each_persons_slices_are_averaged_into_one_age():
    ages, reads = evaluation.per_person_means(
        ["b", "a", "b", "a", "c"], [40, 20, 40, 20, 70], [36.0, 25.0, 44.0, 15.0, 61.0]
    )
    np.testing.assert_allclose(ages, [20, 40, 70])  # people a, b, c
    np.testing.assert_allclose(reads, [20.0, 40.0, 61.0])


class _BrightnessReader:
    """Reads 100 x a slice's mean brightness; refuses levels outside the age reader's."""

    def predict(self, images, positions):
        assert np.all((np.asarray(positions) >= 0.25) & (np.asarray(positions) <= 0.75))
        return 100.0 * np.asarray(images).mean(axis=(1, 2))


def test_a_volume_is_read_as_the_mean_of_its_readable_slices():
    # Two volumes of 5 slices at levels 0, 0.25, 0.5, 0.75, 1; slice d of volume v is uniformly
    # v / 2 + d / 10: the readable slices d = 1, 2, 3 read 10, 20, 30 (+ 50 for the second).
    volumes = np.zeros((2, 5, 4, 4), dtype=np.float32)
    for volume in range(2):
        for depth in range(5):
            volumes[volume, depth] = volume / 2 + depth / 10
    ages = evaluation.read_volume_ages(_BrightnessReader(), volumes)
    np.testing.assert_allclose(ages, [20.0, 70.0], rtol=1e-5)
    with pytest.raises(ValueError, match="none at levels"):
        evaluation.read_volume_ages(_BrightnessReader(), volumes[:, :2])


def ellipsoid_people(count: int, seed: int, depth: int = 16, size: int = 32) -> np.ndarray:
    """`count` volumes [count, depth, size, size] uint8: a bright ellipsoid of random radii
    whose axial sections grow and shrink smoothly from slice to slice, with a little noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (depth, size, size)), indexing="ij")
    volumes = []
    for _ in range(count):
        a, b, c = rng.uniform(0.55, 0.9, 3)
        inside = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1
        texture = 150 + 60 * np.cos(5 * y + rng.uniform(0, 6)) + rng.normal(0, 4, inside.shape)
        volumes.append(np.clip(np.where(inside, texture, 0), 0, 255).astype(np.uint8))
    return np.stack(volumes)


def as_slice_set(volumes: np.ndarray, prefix: str):
    depth, size = volumes.shape[1], volumes.shape[2]
    people = [f"{prefix}{person}" for person in range(len(volumes)) for _ in range(depth)]
    indices = [index for _ in range(len(volumes)) for index in range(depth)]
    return make_slice_set(list(volumes.reshape(-1, size, size)), people, indices, size)


def test_volumes_whose_slices_do_not_fit_together_are_told_apart_by_their_cuts(
    tmp_path, monkeypatch
):
    # A generator that draws new people of the training people's kind, slice on slice, and,
    # "slice by slice", the same people with their slices in a random order: the cuts of the
    # first cannot be told from the training volumes', those of the second can.
    training, held_out = ellipsoid_people(32, seed=0), ellipsoid_people(8, seed=1)
    drawn = ellipsoid_people(evaluation.GENERATED_VOLUMES, seed=2)
    shuffled = np.stack(
        [volume[np.random.default_rng(i).permutation(16)] for i, volume in enumerate(drawn)]
    )

    def sample_volumes(run, count, depth, seed, coherent, **draw):
        assert (count, depth, draw) == (evaluation.GENERATED_VOLUMES, 16, {"guidance": 2.0})
        return None, drawn if coherent else shuffled

    monkeypatch.setattr(evaluation, "sample_volumes", sample_volumes)
    # A generator that gives every slice back as it is: the reference is the training people.
    monkeypatch.setattr(evaluation, "reconstruct_images", lambda model, images, batch: images)
    run = types.SimpleNamespace(
        generator=None, hyperparameters=types.SimpleNamespace(inference_batch_size=8)
    )
    report, figure = evaluation.judge_volumes(
        run,
        as_slice_set(training, "t"),
        as_slice_set(held_out, "h"),
        seed=0,
        draw={"guidance": 2.0},
        out=tmp_path,
    )
    assert (report["depth"], report["reference_volumes"]) == (16, 32)
    assert report["coherent_cut_c2st"] < 0.65 and report["perfect_prior_cut_c2st"] < 0.65
    assert report["real_vs_reconstructed_cut_c2st"] < 0.65
    assert report["independent_cut_c2st"] > 0.9
    assert report["independent_adjacent_ssim"] < report["coherent_adjacent_ssim"] - 0.1
    assert report["coherent_adjacent_ssim"] == pytest.approx(report["real_adjacent_ssim"], abs=0.05)
    assert figure == tmp_path / "volume_cuts.png" and figure.is_file()
    # Three training people cannot be halved into two groups of two: said, not measured.
    few = as_slice_set(training[:3], "t")
    report, figure = evaluation.judge_volumes(run, few, few, 0, {"guidance": 2.0}, tmp_path)
    assert figure is None and "3 training volumes of 16 slices" in report["skipped"]
    assert evaluation.format_conditions({"volumes": report}) == [f"  volumes: {report['skipped']}"]


def test_two_sample_groups_are_people_or_a_lone_persons_slabs():
    slices = evaluation.SliceSet(
        images=np.zeros((6, 4, 4), dtype=np.uint8),
        subject_ids=np.array(["a", "a", "a", "b", "b", "b"]),
        slice_indices=np.array([0, 7, 8, 0, 9, 17], dtype=np.int32),
    )
    first, second = evaluation.subject_halves(slices)
    assert first.tolist() == [0, 1, 2] and second.tolist() == [3, 4, 5]
    # Each half is one person: slabs of 8 neighbouring levels.
    assert evaluation.two_sample_groups(slices, first).tolist() == ["a:0", "a:0", "a:1"]
    assert evaluation.two_sample_groups(slices, second).tolist() == ["b:0", "b:1", "b:2"]
    both = np.arange(6)
    assert evaluation.two_sample_groups(slices, both).tolist() == ["a"] * 3 + ["b"] * 3


@pytest.mark.parametrize(
    ("conditions", "demographics", "why"),
    [
        (("cdr",), {"a": {"age": 70, "cdr": 1.0}}, "does not take the age"),
        (("age", "cdr"), {"a": {"cdr": 1.0}}, "no ages"),
    ],
)
def test_the_diagnosis_is_reported_skipped_where_its_age_cannot_be_read(
    conditions, demographics, why, tmp_path
):
    """The diagnosis is read by the age reader in slices asked for one age: a prior that does
    not take the age, or data without ages, gets a reason, not a silent gap."""
    run = types.SimpleNamespace(pixelcnn=types.SimpleNamespace(condition_names=conditions))
    training = evaluation.SliceSet(
        images=np.zeros((2, 4, 4), dtype=np.uint8),
        subject_ids=np.array(["a", "a"]),
        slice_indices=np.array([0, 1], dtype=np.int32),
    )
    report, figures = evaluation.judge_conditions(
        run, None, training, training, None, demographics, seed=0, out=tmp_path
    )
    assert figures == [] and set(report) == {"guidance", *conditions}
    assert why in report["cdr"]["skipped"]
    assert report["cdr"] == report.get("age", report["cdr"])
    assert f"  cdr: {report['cdr']['skipped']}" in evaluation.format_conditions(report)


def test_command_reports_json_and_writes_the_figures(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "figures"
    assert similarity.main(["--run", str(run), "--json", "--samples", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert "similarity: drawing 6 samples" in printed.err  # progress on stderr, JSON on stdout
    # The prior's bits per code on the test split: training wrote them to metrics.json by the
    # same definition; both score the same code maps of the same split.
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["prior_bits_per_code"] == pytest.approx(metrics["prior_bits_per_code"], rel=1e-4)
    assert report["ssim_mean"] == pytest.approx(metrics["ssim_mean"], abs=1e-5)
    for key in (
        "ssim_mean",
        "ssim_median",
        "ssim_p05",
        "fraction_above_target",
        "psnr_mean",
        "mae_mean",
        "slices",
        "prior_bits_per_code",
        "novelty_ssim_mean",
        "code_usage_total_variation",
    ):
        assert key in report, key
    assert report["slices"] == 6
    assert json.loads((out / "report.json").read_text()) == report  # kept beside the figures
    for name in (
        "ssim_histogram.png",
        "ssim_by_slice.png",
        "worst_slices.png",
        "ssim_per_epoch.png",
        "code_usage.png",
    ):
        with Image.open(out / name) as figure:
            assert figure.format == "PNG" and figure.size[0] > 100


def test_samples_are_drawn_with_the_sampling_controls_asked_for(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    argv = ["--run", str(run), "--json", "--samples", "6", "--out", str(tmp_path / "figures")]
    assert similarity.main([*argv, "--temperature", "0.7", "--top-k", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sampling"] == {
        "temperature": 0.7,
        "top_k": 3,
        "top_p": 1.0,  # the run's own sampling_top_p: every code
        "coarse_top_p": None,  # a flat prior has no coarse level
        "decoder": "adversarial",  # the tiny run has an adversarial stage
        "slice_position": "drawn uniformly over the trained levels",
    }
    assert similarity.main([*argv, "--temperature", "0"]) == 2
    assert "temperature must be" in capsys.readouterr().err
    assert similarity.main([*argv, "--coarse-top-p", "0.9"]) == 2
    assert "'s prior is flat (pixelcnn_coarse_codes 0)" in capsys.readouterr().err


def test_the_conditions_are_judged_on_draws_with_the_sampling_controls_asked_for(
    tiny_run, tmp_path, capsys
):
    """--top-k 1 draws every code as the most likely one, so the slices asked for levels are the
    same whatever the seed, and so is how their levels read back; plain draws, which the
    obedience measures once took whatever was asked, differ from seed to seed."""
    run = shutil.copytree(tiny_run[0], tmp_path / "run")
    argv = ["--run", str(run), "--split", "train", "--samples", "24", "--json"]
    levels = {}
    for controls in ([], ["--top-k", "1"]):
        for seed in ("0", "1"):
            out = tmp_path / f"figures{len(controls)}{seed}"
            assert similarity.main([*argv, *controls, "--seed", seed, "--out", str(out)]) == 0
            report = json.loads(capsys.readouterr().out)["conditions"]
            levels[len(controls), seed] = report["slice_position"]["generated"]
    assert levels[2, "0"] == levels[2, "1"]
    assert levels[0, "0"] != levels[0, "1"]


def test_command_names_a_missing_run(tmp_path, capsys):
    assert similarity.main(["--run", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_realism_is_measured_beside_its_floor_with_a_feature_network_saved_in_the_run(
    tiny_run, tmp_path, capsys, monkeypatch
):
    run = shutil.copytree(tiny_run[0], tmp_path / "run")
    argv = ["--run", str(run), "--split", "train", "--samples", "24", "--json"]
    assert similarity.main([*argv, "--out", str(tmp_path / "first")]) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = report["realism"]
    assert numbers["n_real_a"] == 12 and numbers["n_compared"] == 12  # two people per half
    for key in (
        "fd_samples",
        "fd_real_floor",
        "c2st_reconstructions_vs_samples",
        "c2st_real_floor",
        "fd_perfect_prior",
        "c2st_reconstructions_vs_perfect_prior",
        "ms_ssim_perfect_prior",
    ):
        assert math.isfinite(numbers[key]), key
    assert 0.0 <= numbers["c2st_real_floor"] <= 1.0
    assert "cnn_c2st_real_floor" not in numbers  # only when asked for
    assert 0.0 <= numbers["implausible_samples_share"] <= 1.0
    assert (run / "realism_features.keras").is_file()
    for name in ("realism.png", "nearest_training.png"):
        assert (tmp_path / "first" / name).is_file()
    # The tiny run's prior is conditioned on the level and the slice below: obedience of the
    # level (generated and real, read by the feature network) and the volume measures.
    conditions = report["conditions"]
    assert conditions["guidance"] == generation.DEFAULT_GUIDANCE
    assert report["sampling"]["slice_position"] == "drawn uniformly over the trained levels"
    for side in ("generated", "reconstructed", "real"):
        assert -1.0 <= conditions["slice_position"][side]["r"] <= 1.0
    assert conditions["slice_position"]["generated"]["count"] == 128
    assert conditions["slice_position"]["real"]["count"] == 24
    assert conditions["slice_position"]["reconstructed"]["count"] == 24
    volumes = conditions["volumes"]
    assert (volumes["depth"], volumes["reference_volumes"]) == (6, 4)  # four people of six slices
    assert volumes["volumes"] == evaluation.GENERATED_VOLUMES
    for key in ("real", "coherent", "independent"):
        assert 0.0 < volumes[f"{key}_adjacent_ssim"] <= 1.0
    # Cuts told apart by a classifier: held-out accuracies over whole cuts, so multiples of
    # one over the number of cuts compared (four volumes of 2 x 3 cuts each at the most).
    for key in ("coherent", "independent", "perfect_prior", "real_vs_reconstructed"):
        accuracy = volumes[f"{key}_cut_c2st"]
        assert 0.0 <= accuracy <= 1.0 and math.isclose(accuracy * 48, round(accuracy * 48)), key
    assert (tmp_path / "first" / "volume_cuts.png").is_file()
    assert (tmp_path / "first" / "obedience_slice_position.png").is_file()
    # The saved network is reused: the same features, so the same floor.
    trained_at = (run / "realism_features.keras").stat().st_mtime_ns
    # ... and asked for, the convolutional two-sample tests join the linear ones (trained for
    # fewer epochs here, to keep the suite fast).
    monkeypatch.setattr(
        realism,
        "convolutional_two_sample_accuracy",
        functools.partial(realism.convolutional_two_sample_accuracy, epochs=2),
    )
    # Told to skip the conditions, the run judges the same samples the same way, and no more.
    second = [*argv, "--out", str(tmp_path / "second"), "--convolutional-c2st"]
    assert similarity.main([*second, "--skip-conditions"]) == 0
    report_again = json.loads(capsys.readouterr().out)
    again = report_again["realism"]
    assert "conditions" not in report_again and report_again["conditions_skipped"]
    assert not (tmp_path / "second" / "obedience_slice_position.png").exists()
    assert (run / "realism_features.keras").stat().st_mtime_ns == trained_at
    assert again["fd_real_floor"] == pytest.approx(numbers["fd_real_floor"], rel=1e-6)
    assert again["fd_samples"] == pytest.approx(numbers["fd_samples"], rel=1e-6)
    assert again["c2st_real_floor"] == numbers["c2st_real_floor"]
    assert again["c2st_reconstructions_vs_samples"] == numbers["c2st_reconstructions_vs_samples"]
    pairs = ("real_vs_reconstructions", "reconstructions_vs_samples", "real_vs_samples")
    for pair in (*pairs, "real_floor"):
        assert 0.0 <= again[f"cnn_c2st_{pair}"] <= 1.0
        assert 0.0 <= again[f"cnn_c2st_{pair}_p_value"] <= 1.0


def test_a_perfect_priors_draws_are_training_slices_decoded_half_of_them_mirrored(tiny_run):
    """The run's prior trained on mirror images too, so each draw is the generator's
    reconstruction of a training slice or of its mirror image, both kinds among them; a prior
    trained without them draws none mirrored. Asked for more than there are, every training
    slice is drawn once, in order, with its person."""
    run = runs.load_run(tiny_run[0])
    assert run.hyperparameters.prior_mirror_images
    training = runs.load_run_data(run).splits["train"]
    images = training.float_images()
    straight = run.generator.predict(images, verbose=0)
    mirrored = run.generator.predict(images[:, :, ::-1], verbose=0)

    def kinds(draws):
        as_straight = np.all(np.abs(draws - straight) < 1e-4, axis=(1, 2, 3))
        as_mirrored = np.all(np.abs(draws - mirrored) < 1e-4, axis=(1, 2, 3))
        assert np.all(as_straight | as_mirrored)
        return (as_straight & ~as_mirrored).sum(), (as_mirrored & ~as_straight).sum()

    draws, people = evaluation.perfect_prior_draws(run, training, len(training) + 5, seed=3)
    assert draws.shape == images.shape
    np.testing.assert_array_equal(people, training.subject_ids)
    only_straight, only_mirrored = kinds(draws)
    assert only_straight > 0 and only_mirrored > 0
    unmirrored = dataclasses.replace(
        run, hyperparameters=run.hyperparameters.replace(prior_mirror_images=False)
    )
    draws, _ = evaluation.perfect_prior_draws(unmirrored, training, len(training), seed=3)
    assert kinds(draws)[1] == 0


def test_a_split_too_small_for_two_halves_is_reported_not_measured(tiny_run, tmp_path, capsys):
    out = tmp_path / "figures"
    assert similarity.main(["--run", str(tiny_run[0]), "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "realism" not in report and "smaller half has 3" in report["realism_skipped"]
    assert not (tiny_run[0] / "realism_features.keras").exists()


def test_obedience_to_age_and_diagnosis_is_read_by_the_tissue_reader(
    tiny_hyperparameters, tiny_png_tree, tmp_path, capsys
):
    """A run whose data has an OASIS table is conditioned on age and CDR too; similarity.py
    reads the asked ages back from generated slices with the age reader, beside its ceiling,
    and how much older it reads slices asked for dementia than those asked for none."""
    import train

    data = tmp_path / "data"
    shutil.copytree(tiny_png_tree, data / "keras_png_slices_data")
    ages = {1: 22, 2: 48, 3: 71, 4: 90, 5: 35, 6: 80}
    cdr = {1: 0.5, 2: 0, 3: 0, 4: 1, 5: 0, 6: 0}  # training people 1-4: dementia at 22 and 90
    rows = [
        {"ID": f"{case:03d}", "Age": str(age), "CDR": str(cdr[case])} for case, age in ages.items()
    ]
    write_csv(data / "oasis_cross-sectional.csv", OASIS1_COLUMNS, rows)
    run = tmp_path / "run"
    train.run_training(tiny_arguments(tiny_hyperparameters, data, run), verbose=0)
    capsys.readouterr()  # what training printed
    hyperparameters = json.loads((run / "hyperparameters.json").read_text())
    assert hyperparameters["prior_conditions"] == "slice_position,age,cdr,previous_slice"

    argv = ["--run", str(run), "--split", "train", "--samples", "24", "--json"]
    assert similarity.main([*argv, "--out", str(tmp_path / "figures")]) == 0
    conditions = json.loads(capsys.readouterr().out)["conditions"]
    age = conditions["age"]
    assert age["generated"]["count"] == evaluation.OBEDIENCE_SAMPLES
    # Two of each person's six slices (levels 0.4 and 0.6) lie in the reader's levels.
    assert age["reconstructed"]["count"] == age["real"]["count"] == 8
    assert age["held_out_people"] == 4
    for side in ("generated", "reconstructed", "real"):
        assert -1.0 <= age[side]["r"] <= 1.0
    # The ceilings over every training person, each read by readers trained on the others.
    cross = age["cross_validated"]
    assert cross["people"] == cross["folds"] == 4
    assert cross["reconstructed"]["count"] == cross["real"]["count"] == 8
    assert (tmp_path / "figures" / "obedience_age.png").is_file()
    # Whole volumes asked for ages, each read as the mean of its slices, against the people.
    volumes = age["volumes"]
    assert volumes["generated"]["count"] == evaluation.AGE_VOLUMES
    assert volumes["reconstructed"]["count"] == volumes["real"]["count"] == 4
    assert volumes["coherent"] is True
    assert (tmp_path / "figures" / "obedience_age_volumes.png").is_file()
    # Pairs asked for CDR 0 and 1 (the highest seen is 1) at the demented people's ages; the
    # ceiling: the four training people within those ages, their CDRs 0.5, 0, 0 and 1.
    diagnosis = conditions["cdr"]
    assert diagnosis["asked_cdr"] == [0.0, 1.0] and diagnosis["age_range"] == [22.0, 90.0]
    assert diagnosis["generated"]["count"] == 2 * evaluation.DIAGNOSIS_PAIRS
    for side in ("reconstructed", "real"):
        assert diagnosis["cross_validated"][side]["count"] == 4
    for effect in (diagnosis["generated"], *diagnosis["cross_validated"].values()):
        assert math.isfinite(effect["years_per_cdr"]) and effect["standard_error"] >= 0.0
    assert (tmp_path / "figures" / "obedience_cdr.png").is_file()
    assert similarity.main([*argv[:-1], "--out", str(tmp_path / "table")]) == 0
    table = capsys.readouterr().out
    assert "  age: r " in table and "  age of whole volumes: r " in table
    assert "cross-validated over 4 training people" in table
    assert "  cdr: slices asked for CDR 1 read " in table and "(ceiling: 4 training people" in table
