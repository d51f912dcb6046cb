"""Conditioning and volume measures: each on a case whose answer is known without the code."""

from __future__ import annotations

import numpy as np
import pytest

from brain_vqvae import obedience
from brain_vqvae.data.slices import make_slice_set

# Obedience ------------------------------------------------------------------------------------


def test_condition_obedience_matches_numpy_on_known_values():
    rng = np.random.default_rng(0)
    requested = rng.uniform(0, 1, 50)
    predicted = requested + rng.normal(0, 0.1, 50)
    result = obedience.condition_obedience(requested, predicted)
    assert result["r"] == pytest.approx(np.corrcoef(requested, predicted)[0, 1], abs=1e-12)
    assert result["mae"] == pytest.approx(np.abs(predicted - requested).mean(), abs=1e-12)
    assert result["count"] == 50
    exact = obedience.condition_obedience([1, 2, 3, 4], [10, 20, 30, 40])
    assert exact["r"] == pytest.approx(1.0) and exact["mae"] == pytest.approx(22.5)
    assert obedience.condition_obedience([1, 2, 3], [3, 2, 1])["r"] == pytest.approx(-1.0)
    # Predictions that never change say nothing of the request.
    assert obedience.condition_obedience([1, 2, 3], [5, 5, 5])["r"] == 0.0


@pytest.mark.parametrize(
    ("requested", "predicted", "message"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2], "3 values but predicted has 2"),
        ([0.1, 0.2], [0.1, 0.2], "at least 3 values"),
        ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], "all equal"),
        ([0.1, np.nan, 0.3], [0.1, 0.2, 0.3], "finite"),
    ],
)
def test_condition_obedience_refuses_what_has_no_correlation(requested, predicted, message):
    with pytest.raises(ValueError, match=message):
        obedience.condition_obedience(requested, predicted)


def test_plot_obedience_writes_a_png(tmp_path):
    requested = np.linspace(0, 1, 20)
    path = obedience.plot_obedience(
        requested, requested**2, requested, requested, tmp_path / "obedience.png", "position"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_apparent_age_effect_recovers_a_known_effect_with_the_age_held_fixed():
    """Reads made of an exact 12 years per CDR point and 0.8 per year of age: the fit finds 12
    with no error, although the demented brains are also the older ones."""
    cdr = np.array([0, 0, 0, 0.5, 0.5, 1, 1, 1])
    ages = np.array([60, 66, 71, 70, 78, 75, 84, 90], dtype=float)
    effect = obedience.apparent_age_effect(cdr, ages, 5.0 + 12.0 * cdr + 0.8 * ages)
    assert effect["years_per_cdr"] == pytest.approx(12.0)
    assert effect["standard_error"] == pytest.approx(0.0, abs=1e-6)
    assert effect["count"] == 8


def test_apparent_age_effect_of_one_age_is_the_difference_of_means_and_its_standard_error():
    """At one age the fit is a two-group comparison: the difference of the groups' mean reads,
    with the pooled standard error s sqrt(1/n0 + 1/n1)."""
    rng = np.random.default_rng(1)
    cdr = np.repeat([0.0, 1.0], [9, 7])
    reads = rng.normal(70, 6, 16) + 9 * cdr
    effect = obedience.apparent_age_effect(cdr, np.full(16, 75.0), reads)
    first, second = reads[cdr == 0], reads[cdr == 1]
    assert effect["years_per_cdr"] == pytest.approx(second.mean() - first.mean())
    pooled = (first.var() * 9 + second.var() * 7) / 14
    assert effect["standard_error"] == pytest.approx(np.sqrt(pooled * (1 / 9 + 1 / 7)))


@pytest.mark.parametrize(
    ("cdr", "ages", "message"),
    [
        ([0, 0, 0, 0], [60, 70, 80, 90], "all equal"),
        ([0, 1, 0], [60, 70, 80], "3 brains cannot fit 3 terms"),
        ([0, 1, 0, 1], [60, 70, 80], "4, 3 and 4 values"),
        ([0, 1, np.nan, 1], [60, 70, 80, 90], "finite"),
    ],
)
def test_apparent_age_effect_refuses_what_cannot_be_fitted(cdr, ages, message):
    with pytest.raises(ValueError, match=message):
        obedience.apparent_age_effect(cdr, ages, [70, 80, 75, 85][: len(cdr)])


def test_plot_diagnosis_writes_a_png_with_and_without_people(tmp_path):
    cdr = np.repeat([0.0, 1.0], 10)
    ages = np.tile(np.linspace(60, 90, 10), 2)
    reads = ages + 10 * cdr + np.linspace(-2, 2, 20)
    for people in (None, (cdr, ages, reads - 3 * cdr)):
        path = obedience.plot_diagnosis((cdr, ages, reads), people, tmp_path / "cdr.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Volumes --------------------------------------------------------------------------------------


def smooth_volume(depth: int = 12, size: int = 24) -> np.ndarray:
    """[D, S, S] in [0, 1]: a ball whose cross-section grows then shrinks from slice to slice,
    with a gradient across the image."""
    levels, rows, columns = np.mgrid[0:depth, 0:size, 0:size]
    centre = (depth - 1) / 2
    radius = size / 3 * np.sqrt(1 - ((levels - centre) / (depth / 2 + 1)) ** 2)
    ball = (rows - size / 2) ** 2 + (columns - size / 2) ** 2 < radius**2
    return (0.7 * ball + 0.2 * columns / size).astype(np.float32)


def test_adjacent_slice_ssim_is_one_for_identical_slices_and_lower_when_shuffled():
    identical = np.repeat(smooth_volume()[6][None, None], 5, axis=1)  # [1, 5, 24, 24]
    result = obedience.adjacent_slice_ssim(np.concatenate([identical, identical]))
    assert result["mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["per_gap"].shape == (4,) and result["count"] == 2
    volume = smooth_volume()
    shuffled = volume[np.random.default_rng(1).permutation(len(volume))]
    ordered_ssim = obedience.adjacent_slice_ssim(volume[None, ..., None])["mean"]
    shuffled_ssim = obedience.adjacent_slice_ssim(shuffled[None])["mean"]
    assert shuffled_ssim < ordered_ssim - 0.05
    with pytest.raises(ValueError, match="volumes must be shaped"):
        obedience.adjacent_slice_ssim(volume)


def test_orthogonal_cuts_put_a_marker_where_the_geometry_says():
    depth, size = 8, 16
    volume = np.zeros((depth, size, size), dtype=np.float32)
    # Markers high in the head (slice 6 of 0..7) in the central planes, where fraction 0.5
    # cuts (round(0.5 x 15) = 8): one in front (rows 2-3) in the sagittal plane c = 8, one on
    # the subject's right (columns 12-13) in the coronal plane r = 8.
    volume[6, 2:4, 8] = 1.0
    volume[6, 8, 12:14] = 1.0
    cuts = obedience.orthogonal_cuts(volume[None], size=32, fractions=(0.5,))
    assert cuts["coronal"].shape == (1, 32, 32, 1) and cuts["sagittal"].shape == (1, 32, 32, 1)
    for image in cuts.values():
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    coronal = cuts["coronal"][0, ..., 0]
    sagittal = cuts["sagittal"][0, ..., 0]
    # Slice 6 of 8 is superior: the second slice from the top, image rows 4 to 7 of 32.
    row, column = np.unravel_index(coronal.argmax(), coronal.shape)
    assert 4 <= row < 8
    assert column >= 24  # the subject's right, the image's right (neurological)
    row, column = np.unravel_index(sagittal.argmax(), sagittal.shape)
    assert 4 <= row < 8
    assert 4 <= column < 8  # anterior rows 2-3 of 16: anterior on the image's left
    # Several cuts per volume, volume-major.
    two = np.stack([volume, np.zeros_like(volume)])
    cuts = obedience.orthogonal_cuts(two, size=16, fractions=(0.0, 0.5, 1.0))
    assert cuts["coronal"].shape == (6, 16, 16, 1)
    assert cuts["coronal"][1].max() > 0.5 and cuts["coronal"][3:].max() == 0.0
    with pytest.raises(ValueError, match="fractions"):
        obedience.orthogonal_cuts(two, size=16, fractions=(1.5,))


def test_cut_images_batch_every_cut_with_the_volume_it_comes_from(tmp_path):
    # Volume v is uniformly v / 10: every cut of it shows v / 10, so each cut's value says
    # which volume it came from, independently of the index returned beside it.
    volumes = np.stack([np.full((6, 12, 12), v / 10, np.float32) for v in range(4)])
    images, volume_of_cut = obedience.cut_images(volumes, size=8, fractions=(0.25, 0.75))
    assert images.shape == (4 * 2 * 2, 8, 8, 1) and volume_of_cut.shape == (16,)
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), volume_of_cut / 10, atol=1e-6)
    assert volume_of_cut.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2  # coronal, then sagittal
    path = obedience.plot_volume_cuts(
        {"real": volumes, "drawn": volumes[::-1]}, tmp_path / "cuts.png", shown=3
    )
    assert path.stat().st_size > 0


def test_real_volumes_stack_each_subject_bottom_to_top_and_skip_odd_counts():
    size = 4
    records = []  # (image, subject, slice index): each image's pixels hold its own index
    for subject, count in (("b", 3), ("a", 3), ("c", 2), ("d", 3)):
        for index in reversed(range(count)):  # stored top to bottom, to be reordered
            records.append((np.full((size, size), 10 * index, np.uint8), subject, index))
    images, subjects, indices = zip(*records, strict=True)
    slice_set = make_slice_set(list(images), list(subjects), list(indices), size)
    volumes, subject_ids = obedience.real_volumes(slice_set)
    assert volumes.shape == (3, 3, size, size) and volumes.dtype == np.float32
    assert subject_ids.tolist() == ["a", "b", "d"]  # c has 2 slices, not the usual 3
    np.testing.assert_allclose(volumes[:, :, 0, 0], np.tile([0, 10, 20], (3, 1)) / 255.0)
    single = make_slice_set(list(images[:2]), ["x", "y"], [0, 0], size)
    with pytest.raises(ValueError, match="one slice per subject"):
        obedience.real_volumes(single)
