"""Realism measures: each on cases whose answer is known without the code under test."""

from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
from conftest import brain_like_slice

from brain_vqvae import feature_network, realism

SIZE = 32


def brain_like_set(count: int, seed: int, hole: bool = False) -> np.ndarray:
    """`count` brain-like 32x32 slices (N, 32, 32, 1) in [0, 1]; with `hole`, the darker inner
    ellipse is cut out to background."""
    rng = np.random.default_rng(seed)
    images = np.stack([brain_like_slice(rng, SIZE) for _ in range(count)]).astype(np.float32)
    if hole:
        images[(images > 0) & (images < 120)] = 0.0
    return images[..., None] / 255.0


def disc(centre: tuple[float, float], radius: float, size: int = SIZE) -> np.ndarray:
    rows, columns = np.mgrid[0:size, 0:size]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2


def as_image(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float32)[None, ..., None] * 0.7


# Fréchet distance ----------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    # The 8 sign vectors of {-1, 1}^3 have mean 0, uncorrelated coordinates and, with the
    # n - 1 denominator, variance 8 / 7 in each coordinate.
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))
    sigma_a, mean_a = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    sigma_b, mean_b = np.array([3.0, 1.0, 0.5]), np.array([2.0, 1.0, 1.0])
    features_a, features_b = signs * sigma_a + mean_a, signs * sigma_b + mean_b
    # ||mu_a - mu_b||^2 = 4 + 0 + 4; trace term (8/7) sum (sigma_a - sigma_b)^2 = (8/7) (4 + 1)
    assert realism.frechet_distance(features_a, features_b) == pytest.approx(8 + 40 / 7, rel=1e-6)
    assert realism.frechet_distance(features_a, features_a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_floor_of_two_halves_is_far_below_a_different_distribution():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(400, 4))
    shifted = rng.normal(size=(200, 4)) + 1.0  # ||mu diff||^2 = 4
    floor = realism.frechet_distance(same[:200], same[200:])
    assert floor < 0.2
    assert realism.frechet_distance(same[:200], shifted) > 3.0


def test_frechet_distance_survives_singular_covariances_and_refuses_bad_shapes():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 20))  # N < F: both covariances singular
    assert math.isfinite(realism.frechet_distance(few, rng.normal(size=(5, 20))))
    with pytest.raises(ValueError, match="features_b"):
        realism.frechet_distance(few, few[:, :3])


# Precision and recall ------------------------------------------------------------------------


def test_precision_recall_is_one_for_identical_sets_and_zero_for_a_far_set():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 8))
    assert realism.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert realism.precision_recall(real, rng.normal(size=(50, 8)) + 100.0) == (0.0, 0.0)


def test_precision_counts_fakes_inside_the_real_balls():
    # Real points 0, 1, 2, 3, 10 on a line: with k = 1 the radii are 1, 1, 1, 1, 7.
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = np.array([[0.5], [3.9], [4.1], [20.0]])  # 0.5 and 3.9 (within 7 of 10) inside
    precision, _ = realism.precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.75)


# Classifier two-sample test ------------------------------------------------------------------


def test_classifier_two_sample_test_is_at_chance_on_one_distribution():
    images = brain_like_set(160, seed=0)
    accuracy = realism.classifier_two_sample_accuracy(images[:80], images[80:])
    assert 0.35 <= accuracy <= 0.65


def test_classifier_two_sample_test_tells_clearly_different_sets_apart():
    intact, holed = brain_like_set(60, seed=1), brain_like_set(60, seed=2, hole=True)
    assert realism.classifier_two_sample_accuracy(intact, holed) > 0.9
    noise = np.random.default_rng(3).random((40, SIZE, SIZE, 1), dtype=np.float32)
    assert realism.classifier_two_sample_accuracy(intact, noise) > 0.9


def test_classifier_two_sample_test_refuses_bad_features():
    images = brain_like_set(12, seed=5)
    features = np.zeros((12, 4))
    with pytest.raises(ValueError, match="given together"):
        realism.classifier_two_sample_accuracy(images, images, features_a=features)
    with pytest.raises(ValueError, match="features_b has 11 rows for 12 images"):
        realism.classifier_two_sample_accuracy(
            images, images, features_a=features, features_b=features[:11]
        )


def test_convolutional_two_sample_test_is_at_chance_on_one_distribution():
    images = brain_like_set(120, seed=0)
    accuracy = realism.convolutional_two_sample_accuracy(images[:60], images[60:], folds=3)
    assert 0.3 <= accuracy <= 0.7


def test_convolutional_two_sample_test_tells_clearly_different_sets_apart():
    intact, holed = brain_like_set(60, seed=1), brain_like_set(60, seed=2, hole=True)
    assert realism.convolutional_two_sample_accuracy(intact, holed, folds=3) > 0.8


def test_convolutional_two_sample_test_refuses_bad_input():
    images = brain_like_set(12, seed=5)
    with pytest.raises(ValueError, match="epochs"):
        realism.convolutional_two_sample_accuracy(images, images, epochs=0)
    with pytest.raises(ValueError, match="differ in size"):
        realism.convolutional_two_sample_accuracy(images, images[:, :16, :16])
    with pytest.raises(ValueError, match="groups_b has 3 values for 12 images"):
        realism.convolutional_two_sample_accuracy(images, images, groups_b=["x", "y", "z"])


def test_texture_statistics_of_known_images():
    """A flat square of 0.5 on background: all its intensity in bin 8 of 16, no gradient and no
    Laplacian inside it (bin 0); a checkerboard of 0.3 and 0.7 in the same square: intensity
    split between bins 4 and 11, every inner pixel's |Laplacian| 4 x 0.4 = 1.6 (beyond the
    range: the last bin); an empty slice: no brain, all zeros."""
    flat = np.zeros((SIZE, SIZE), np.float32)
    flat[8:24, 8:24] = 0.5
    checker = flat.copy()
    checker[8:24, 8:24] = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 0.3, 0.7)
    empty = np.zeros_like(flat)
    stats = realism.texture_statistics(np.stack([flat, checker, empty])[..., None])
    bins = realism.TEXTURE_BINS
    intensity, gradient, laplacian = (stats[:, i * bins : (i + 1) * bins] for i in range(3))
    assert intensity[0, 8] == pytest.approx(1.0)
    assert gradient[0, 0] == pytest.approx(1.0) and laplacian[0, 0] == pytest.approx(1.0)
    assert intensity[1, 4] == pytest.approx(0.5, abs=0.03)
    assert intensity[1, 4] + intensity[1, 11] == pytest.approx(1.0)
    assert laplacian[1, -1] > 0.8
    np.testing.assert_array_equal(stats[2], 0.0)
    np.testing.assert_allclose(stats[:2].reshape(2, 3, bins).sum(axis=2), 1.0)


def test_brain_area_is_the_share_of_the_slice_inside_the_outline():
    """Discs of radius 10 and 5 on a 32x32 slice cover pi r^2 / 1024 of it: the outline, smoothed
    by a Gaussian of one pixel, lies within 2 pixels outside the disc's edge; an empty slice
    has no brain, a full one is all brain."""
    slices = np.concatenate(
        [
            as_image(disc((16, 16), 10)),
            as_image(disc((16, 16), 5)),
            np.zeros((1, SIZE, SIZE, 1), np.float32),
            np.full((1, SIZE, SIZE, 1), 0.7, np.float32),
        ]
    )
    area = realism.brain_area(slices)
    assert area.shape == (4,)
    for radius, share in zip((10, 5), area[:2], strict=True):
        assert np.pi * radius**2 / SIZE**2 <= share <= np.pi * (radius + 2) ** 2 / SIZE**2
    assert area[2] == 0.0 and area[3] == 1.0


def test_classifier_two_sample_test_sees_fine_texture_that_block_means_hide():
    """The same kind of brain-like slices, half of them with a +-0.1 checkerboard of 1-pixel
    squares on the 2x2 blocks inside the brain: every block keeps its mean, so the 16x16 block
    means alone cannot tell the sets apart; the texture can."""
    images = brain_like_set(120, seed=4) * 0.8
    checker = np.where(np.indices((SIZE, SIZE)).sum(axis=0) % 2 == 0, 0.1, -0.1)[..., None]
    block_minima = images[60:, ..., 0].reshape(60, SIZE // 2, 2, SIZE // 2, 2).min(axis=(2, 4))
    inside = np.kron(block_minima >= 0.1, np.ones((2, 2)))
    mottled = images[60:] + checker * inside[..., None]
    assert mottled.min() >= 0.0 and mottled.max() <= 1.0
    blocks = [realism._downsample(x, realism.C2ST_PIXELS) for x in (images[60:], mottled)]
    np.testing.assert_allclose(blocks[0], blocks[1], atol=1e-6)
    assert realism.classifier_two_sample_accuracy(images[:60], mottled) > 0.9


def test_classifier_two_sample_p_value():
    assert realism.two_sample_p_value(0.5, 100) > 0.4
    assert realism.two_sample_p_value(1.0, 20) == pytest.approx(0.5**20)


@pytest.mark.parametrize(("side", "size"), [(100, 16), (57, 16), (130, 32)])
def test_block_means_of_sides_that_do_not_divide_are_tensorflows_area_resampling(side, size):
    import tensorflow as tf

    images = np.random.default_rng(side).uniform(0, 1, (3, side, side, 1)).astype(np.float32)
    expected = tf.image.resize(images, (size, size), method="area").numpy().reshape(3, -1)
    np.testing.assert_allclose(realism._downsample(images, size), expected, atol=1e-6)


# Diversity -----------------------------------------------------------------------------------


def test_ms_ssim_scales_fit_the_window():
    assert [realism.ms_ssim_scales(size) for size in (32, 64, 128, 256)] == [3, 4, 5, 5]
    with pytest.raises(ValueError, match="32x32"):
        realism.ms_ssim_scales(16)


@pytest.mark.parametrize("measure", [realism.pairwise_ms_ssim, realism.pairwise_ssim])
def test_diversity_is_one_for_identical_images_and_lower_for_different(measure):
    image = brain_like_set(1, seed=0)
    assert measure(np.repeat(image, 4, axis=0)) == pytest.approx(1.0, abs=1e-5)
    assert measure(brain_like_set(8, seed=1), max_pairs=10) < 0.95


# Power spectrum ------------------------------------------------------------------------------


def test_radial_power_spectrum_of_a_cosine_is_at_its_frequency():
    """cos(2 pi 8 x / 32): all its power (variance 1/2) at 8 cycles per image, split between
    the two frequencies (0, +-8), so the mean over the ring's 48 frequencies (the integer
    points at rounded radius 8) is 1/2 / 48 and every other ring is empty."""
    columns = np.arange(SIZE)
    cosine = 0.5 + 0.5 * np.cos(2 * np.pi * 8 * columns / SIZE)
    images = np.broadcast_to(cosine, (2, SIZE, SIZE))[..., None]
    spectrum = realism.radial_power_spectrum(images)
    assert spectrum.shape == (round(SIZE / math.sqrt(2)),)
    ring = sum(round(math.hypot(u, v)) == 8 for u in range(-16, 16) for v in range(-16, 16))
    assert spectrum[8 - 1] == pytest.approx(0.125 / ring, rel=1e-4)
    assert np.delete(spectrum, 8 - 1).max() < 1e-8 * spectrum[8 - 1]


def test_spectral_distance_is_near_zero_for_halves_and_sees_blur_and_a_checkerboard():
    from scipy import ndimage

    images = brain_like_set(64, seed=30)
    rng = np.random.default_rng(30)
    images = np.clip(images + 0.05 * rng.standard_normal(images.shape), 0, 1)
    floor = realism.spectral_distance(images[:32], images[32:])
    blurred = ndimage.gaussian_filter(images[32:], sigma=(0, 1.5, 1.5, 0))
    checkered = images[32:].copy()
    checkered[:, ::2, ::2] = np.clip(checkered[:, ::2, ::2] + 0.2, 0, 1)
    assert floor < 0.05
    assert realism.spectral_distance(images[:32], blurred) > floor + 0.5
    assert realism.spectral_distance(images[:32], checkered) > floor + 0.1
    with pytest.raises(ValueError, match="differ in size"):
        realism.spectral_distance(images, images[:, :16, :16])


def test_plot_spectra_writes_a_png(tmp_path):
    images = brain_like_set(4, seed=31)
    path = realism.plot_spectra({"real": images, "samples": images[::-1]}, tmp_path / "s.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# Implausible samples -------------------------------------------------------------------------


def test_topology_counts_islands_and_holes():
    two_discs = as_image(disc((10, 8), 5) | disc((20, 24), 5))
    ring = as_image(disc((16, 16), 12) & ~disc((16, 16), 5))
    speck = as_image(disc((16, 16), 10) | disc((2, 2), 0.8))  # a single pixel: not an island
    components, holes = realism.brain_mask_topology(np.concatenate([two_discs, ring, speck]))
    assert components.tolist() == [2, 1, 1]
    assert holes.tolist() == [0, 1, 0]


def test_implausible_judges_islands_against_real_slices_at_the_same_level():
    one = as_image(disc((16, 16), 10))
    three = as_image(disc((8, 8), 4) | disc((8, 24), 4) | disc((24, 16), 4))
    real = np.concatenate([three, three, one, one])
    real_levels = np.array([0.05, 0.1, 0.85, 0.9])
    samples = np.concatenate([three, three, one])
    flagged = realism.implausible(samples, [0.9, 0.08, 0.9], real, real_levels)
    assert flagged.tolist() == [True, False, False]
    # With two estimates of each level, a sample is flagged only if implausible at both.
    two_estimates = [[0.9, 0.95], [0.9, 0.08], [0.9, 0.9]]
    flagged = realism.implausible(samples, two_estimates, real, real_levels)
    assert flagged.tolist() == [True, False, False]


# Feature network and report ------------------------------------------------------------------


@pytest.fixture(scope="module")
def network_and_data():
    training = brain_like_set(64, seed=10)
    levels = np.linspace(0.0, 1.0, 64)
    network = feature_network.train_feature_network(
        training, levels, epochs=3, batch_size=16, widths=(8, 16)
    )
    return network, training, levels


def test_feature_network_trains_saves_and_reloads(network_and_data, tmp_path):
    network, training, _ = network_and_data
    assert len(network.history.history["loss"]) == 3
    features = feature_network.image_features(network, training[:8])
    assert features.shape == (8, 16) and features.dtype == np.float64
    network.save(tmp_path / "features.keras")
    reloaded = feature_network.load_feature_network(tmp_path / "features.keras")
    np.testing.assert_allclose(
        feature_network.image_features(reloaded, training[:8]), features, atol=1e-6
    )
    positions = feature_network.predict_positions(reloaded, training[:8])
    assert positions.shape == (8,) and np.all((positions >= 0) & (positions <= 1))


def test_feature_network_without_positions_predicts_none():
    images = brain_like_set(8, seed=4)
    network = feature_network.train_feature_network(images, epochs=1, batch_size=8, widths=(4,))
    assert feature_network.predict_positions(network, images) is None
    with pytest.raises(ValueError, match="positions"):
        feature_network.train_feature_network(images, np.arange(3.0), epochs=1)


def test_realism_report_has_every_documented_key_and_its_figures(
    network_and_data, tmp_path, monkeypatch
):
    network, training, levels = network_and_data
    # The convolutional tests as they are, trained for fewer epochs to keep the suite fast.
    monkeypatch.setattr(
        realism,
        "convolutional_two_sample_accuracy",
        functools.partial(realism.convolutional_two_sample_accuracy, epochs=3),
    )
    real = brain_like_set(64, seed=20)
    samples = brain_like_set(32, seed=21, hole=True)
    reconstructions = brain_like_set(64, seed=22)
    report = realism.realism_report(
        network,
        real[:32],
        real[32:],
        reconstructions[:32],
        reconstructions[32:],
        samples,
        training,
        levels,
        groups_a=np.repeat(np.arange(4), 8).astype(str),
        groups_b=np.repeat(np.arange(4, 8), 8).astype(str),
        max_pairs=20,
        folds=2,
        convolutional=True,
        perfect_prior=brain_like_set(40, seed=25),
        perfect_prior_groups=np.repeat(np.arange(8, 13), 8).astype(str),
    )
    for row in realism.REPORT_ROWS:
        assert row[1] in report and row[2] in report
    keys = set(realism.realism_report.__doc__.replace(",", " ").replace(":", " ").split())
    assert set(report) - {key for key in report if key.endswith("_p_value")} <= keys
    assert all(math.isfinite(value) for value in report.values())
    # Holed ellipses against intact ones: told apart, unlike two halves of one set.
    assert report["c2st_real_vs_samples"] > report["c2st_real_floor"] + 0.2
    # The holes are background: the samples' brains cover less of the slice (a little: the
    # mask's smoothing closes the holes' narrow ends).
    assert report["brain_area_samples"] < report["brain_area_real"]
    # No training slice has a hole, so every holed sample and no real slice is implausible.
    assert report["implausible_samples_share"] == 1.0 and report["implausible_real"] == 0
    json.dumps(report)
    table = realism.format_realism(report)
    assert "real-vs-real floor" in table and "MS-SSIM" in table
    assert realism.plot_realism(report, tmp_path / "realism.png").stat().st_size > 0
    figure = realism.plot_nearest_training(
        network, samples, training, tmp_path / "nearest.png", count=4
    )
    assert figure.stat().st_size > 0


def test_the_diversity_of_reconstructions_is_measured_on_the_reconstructions(network_and_data):
    """Blurred copies of real slices (a decoder's output) are more alike than the real slices:
    the perfect prior's diversity is theirs."""
    from scipy import ndimage

    network, training, levels = network_and_data
    real = brain_like_set(32, seed=23)
    blurred = ndimage.gaussian_filter(real, sigma=(0, 2, 2, 0))
    report = realism.realism_report(
        network, real[:16], real[16:], blurred[:16], blurred[16:], real[:16], training, levels
    )
    assert report["ms_ssim_reconstructions"] > report["ms_ssim_real"] + 0.05
    assert report["ssim_reconstructions"] > report["ssim_real"] + 0.05


def test_a_perfect_prior_is_judged_as_the_samples_are(network_and_data):
    """A perfect prior given the compared held-out half itself: the floor's Fréchet
    distance, precision and recall to the last digit, the real slices' diversity and size when
    given all of them, none implausible, and a two-sample test against the same slices that
    cannot tell (each slice in both sets, so every pair is judged alike: exactly 0.5); holed
    slices in its place are told apart, and every one is implausible."""
    network, training, levels = network_and_data
    real = brain_like_set(32, seed=26)
    people = np.repeat(np.arange(8), 4).astype(str)
    arguments = (network, real[:16], real[16:], real[:16], real[16:], real[:16], training, levels)
    groups = {"groups_a": people[:16], "groups_b": people[16:], "folds": 2}
    report = realism.realism_report(
        *arguments, **groups, perfect_prior=real[16:], perfect_prior_groups=people[16:]
    )
    for measure in ("fd", "precision", "recall"):
        assert report[f"{measure}_perfect_prior"] == report[f"{measure}_real_floor"]
    assert report["c2st_reconstructions_vs_perfect_prior"] == 0.5
    assert report["implausible_perfect_prior"] == 0
    report = realism.realism_report(*arguments, perfect_prior=real, perfect_prior_groups=people)
    for measure in ("ms_ssim", "ssim", "brain_area"):
        assert report[f"{measure}_perfect_prior"] == report[f"{measure}_real"]
    holed = brain_like_set(16, seed=27, hole=True)
    report = realism.realism_report(
        *arguments, **groups, perfect_prior=holed, perfect_prior_groups=people[16:]
    )
    assert report["c2st_reconstructions_vs_perfect_prior"] > 0.7
    assert report["implausible_perfect_prior_share"] == 1.0  # no training slice has a hole
    assert report["fd_perfect_prior"] > report["fd_real_floor"]
    with pytest.raises(ValueError, match="perfect_prior_groups"):
        realism.realism_report(*arguments, perfect_prior=real)


def test_diversity_counts_every_slice_on_the_same_pairs(network_and_data):
    """Samples that are the held-out slices themselves (twice as many as the compared n), and
    reconstructions that are exact, score the real slices' diversity and brain size to the last
    digit: every sample and every held-out slice is in the estimate, and reconstructions are
    scored on the real slices' pairs."""
    network, training, levels = network_and_data
    real = brain_like_set(32, seed=24)
    report = realism.realism_report(
        network, real[:16], real[16:], real[:16], real[16:], real, training, levels, max_pairs=50
    )
    assert report["n_compared"] == 16
    assert report["n_samples"] == 32 and report["n_real"] == 32
    assert "all 32 samples and 32 held-out slices" in realism.format_realism(report)
    for measure in ("ms_ssim", "ssim", "brain_area"):
        assert report[f"{measure}_samples"] == report[f"{measure}_real"]
        assert report[f"{measure}_reconstructions"] == report[f"{measure}_real"]


def test_the_two_sample_test_judges_people_it_did_not_see():
    """24 people drawn from one distribution, each with a faint texture of their own, split
    12 and 12: slices of the same people in training and held-out folds let a classifier tell
    the halves apart by who is in them; judged on people it did not see, it cannot."""
    rng = np.random.default_rng(7)
    people = np.repeat(np.arange(24), 6)
    textures = np.kron(rng.normal(0.0, 0.12, (24, 8, 8)), np.ones((SIZE // 8, SIZE // 8)))
    images = brain_like_set(len(people), seed=8)
    images = np.clip(images + textures[people][..., None] * (images > 0), 0.0, 1.0)
    half = people < 12
    grouped = realism.classifier_two_sample_accuracy(
        images[half], images[~half], groups_a=people[half], groups_b=people[~half]
    )
    ungrouped = realism.classifier_two_sample_accuracy(images[half], images[~half])
    assert 0.3 <= grouped <= 0.7
    assert ungrouped > grouped + 0.2
