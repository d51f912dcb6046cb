"""Reconstruction metrics, generation-quality measures and `python similarity.py`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import similarity


@pytest.fixture
def image_pairs():
    rng = np.random.default_rng(0)
    originals = rng.random((4, 48, 48, 1), dtype=np.float32)
    originals[1] = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48, 1)
    noisy = np.clip(originals + rng.normal(0, 0.15, originals.shape), 0, 1).astype(np.float32)
    return originals, noisy


def test_summary_counts_slices_at_or_above_the_target():
    scores = similarity.SliceScores(
        ssim=np.array([0.2, 0.6, 0.9, 0.95]), psnr=np.full(4, 20.0), mae=np.full(4, 0.1)
    )
    summary = scores.summary(0.6)
    assert summary["fraction_above_target"] == 0.75
    assert summary["ssim_mean"] == pytest.approx(0.6625)
    assert summary["slices"] == 4


def test_novelty_detects_a_generator_that_copies_its_training_set(image_pairs):
    training, _ = image_pairs
    copies = training[[2, 0]]
    assert similarity.novelty_ssim(copies, training) == pytest.approx([1.0, 1.0], abs=1e-5)
    fresh = np.random.default_rng(5).random((2, 48, 48, 1), dtype=np.float32)
    assert similarity.novelty_ssim(fresh, training).max() < 0.2


def test_diversity_is_one_for_identical_samples_and_lower_for_different_ones(image_pairs):
    originals, _ = image_pairs
    assert similarity.pairwise_ssim_mean(np.repeat(originals[:1], 3, axis=0)) == pytest.approx(1.0)
    assert similarity.pairwise_ssim_mean(originals) < 0.5


def test_code_usage_is_a_distribution_over_all_codes():
    usage = similarity.code_usage(np.array([[[0, 0], [1, 3]]]), 5)
    np.testing.assert_allclose(usage, [0.5, 0.25, 0.0, 0.25, 0.0])


def test_command_reports_json_and_writes_the_figures(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "figures"
    assert similarity.main(["--run", str(run), "--json", "--samples", "6", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in (
        "ssim_mean",
        "ssim_median",
        "ssim_p05",
        "fraction_above_target",
        "psnr_mean",
        "mae_mean",
        "slices",
        "prior_bits_per_code",
        "sample_diversity_ssim",
        "novelty_ssim_mean",
        "code_usage_total_variation",
    ):
        assert key in report, key
    assert report["slices"] == 6
    for name in (
        "ssim_histogram.png",
        "ssim_by_slice.png",
        "worst_slices.png",
        "ssim_per_epoch.png",
        "code_usage.png",
    ):
        with Image.open(out / name) as figure:
            assert figure.format == "PNG" and figure.size[0] > 100


def test_command_names_a_missing_run(tmp_path, capsys):
    assert similarity.main(["--run", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
