"""brain_vqvae.metrics against independent implementations: scikit-image's SSIM and PSNR,
TensorFlow's MS-SSIM, a hand-computed entropy, scipy's log-softmax and per-map bincounts,
Parseval's theorem for the power spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity as skimage_ssim

import brain_vqvae.metrics as metrics


def reference_ssim(originals: np.ndarray, others: np.ndarray) -> list[float]:
    return [
        skimage_ssim(
            original[..., 0],
            other[..., 0],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for original, other in zip(originals, others, strict=True)
    ]


def test_ssim_agrees_with_scikit_image(image_pairs):
    originals, noisy = image_pairs
    reference = reference_ssim(originals, noisy)
    np.testing.assert_allclose(metrics.ssim_per_slice(originals, noisy), reference, atol=1e-3)
    np.testing.assert_allclose(
        metrics.ssim_per_slice(originals, noisy, chunk=3), reference, atol=1e-3
    )
    in_graph = tf.function(metrics.structural_similarity)(originals, noisy)
    np.testing.assert_allclose(in_graph, reference, atol=1e-3)
    assert metrics.ssim_per_slice(originals, originals) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim_per_slice(originals[..., 0], noisy[..., 0]) == pytest.approx(
        reference, abs=1e-3
    )
    assert metrics.ssim_per_slice(originals[:0], noisy[:0]).shape == (0,)


def test_ssim_is_differentiable(image_pairs):
    originals, noisy = image_pairs
    guesses = tf.Variable(noisy)
    with tf.GradientTape() as tape:
        score = tf.reduce_mean(metrics.structural_similarity(originals, guesses))
    gradient = tape.gradient(score, guesses)
    assert gradient is not None and np.isfinite(gradient).all() and np.abs(gradient).max() > 0


@pytest.mark.parametrize(("size", "scales"), [(128, 5), (64, 4), (100, 3), (57, 2)])
def test_ms_ssim_agrees_with_tensorflow(size, scales):
    """The banded-matmul MS-SSIM gives `tf.image.ssim_multiscale`'s numbers (7 taps, the
    standard weights' first `scales` renormalised), odd sides halved by symmetric padding as
    TensorFlow pads them (100 -> 50 -> 25 -> 13; 57 -> 29)."""
    rng = np.random.default_rng(size)
    images = rng.uniform(0, 1, (4, size, size, 1)).astype(np.float32)
    others = np.clip(images + rng.normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    others[0] = images[0]
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])[:scales]
    weights = tuple(float(weight) for weight in weights / weights.sum())
    expected = tf.image.ssim_multiscale(
        images, others, 1.0, power_factors=weights, filter_size=7, filter_sigma=1.5
    ).numpy()
    ours = np.asarray(metrics.multiscale_structural_similarity(images, others, weights, 7))
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert ours[0] == pytest.approx(1.0, abs=1e-5) and ours[1:].max() < 0.95


def test_radial_power_spectra_sum_to_the_variance_ring_by_ring():
    """Parseval: the power over all frequencies is the image's variance. White noise spreads
    it evenly, so every ring's mean power is variance / (S^2 - 1) up to the noise's own
    scatter; a constant image has none."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.5, 0.1, size=(64, 32, 32, 1)).astype(np.float32)
    spectra = np.asarray(metrics.radial_power_spectra(noise))
    assert spectra.shape == (64, round(32 / np.sqrt(2)))
    variance = noise.var(axis=(1, 2, 3)).mean()
    np.testing.assert_allclose(spectra.mean(axis=0), variance / (32**2 - 1), rtol=0.2)
    flat = np.full((1, 32, 32, 1), 0.3, np.float32)
    assert np.abs(np.asarray(metrics.radial_power_spectra(flat))).max() < 1e-12


def test_log_spectral_distance_counts_decades_and_floors_empty_rings():
    spectra = np.array([[1e-4, 1e-6], [1e-4, 0.0]], np.float32)
    others = np.array([[1e-5, 1e-6], [1e-4, 1e-11]], np.float32)
    # (1 decade + 0) / 2, and (0 + log10(1e-11 / 1e-12)) / 2 with the empty ring at the floor.
    np.testing.assert_allclose(
        metrics.log_spectral_distance(spectra, others), [0.5, 0.5], rtol=1e-5
    )
    # The excess counts the first ring of the first pair, not the lack in the second.
    np.testing.assert_allclose(
        metrics.log_spectral_excess(spectra, others), [0.5, 0.0], rtol=1e-5, atol=1e-7
    )


def test_the_spectral_distance_is_differentiable(image_pairs):
    originals, noisy = image_pairs
    guesses = tf.Variable(noisy)
    with tf.GradientTape() as tape:
        distance = tf.reduce_mean(
            metrics.log_spectral_distance(
                metrics.radial_power_spectra(guesses), metrics.radial_power_spectra(originals)
            )
        )
    gradient = tape.gradient(distance, guesses)
    assert gradient is not None and np.isfinite(gradient).all() and np.abs(gradient).max() > 0


def test_psnr_and_mae_have_their_textbook_values():
    original = np.zeros((2, 8, 8, 1), np.float32)
    shifted = original + np.array([0.1, 0.5], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(metrics.mae_per_slice(original, shifted), [0.1, 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        metrics.psnr_per_slice(original, shifted), [20.0, 10 * np.log10(4)], rtol=1e-5
    )
    assert metrics.psnr_per_slice(original, original) == pytest.approx([100.0, 100.0])
    with pytest.raises(ValueError, match="differ"):
        metrics.mae_per_slice(original, original[:1])
    with pytest.raises(ValueError, match="differ"):
        metrics.psnr_per_slice(original, original[:1])


def test_psnr_agrees_with_scikit_image_in_numpy_and_in_graph(image_pairs):
    originals, noisy = image_pairs
    reference = [
        peak_signal_noise_ratio(original, other, data_range=1.0)
        for original, other in zip(originals, noisy, strict=True)
    ]
    np.testing.assert_allclose(metrics.psnr_per_slice(originals, noisy), reference, rtol=1e-5)
    in_graph = tf.function(metrics.peak_signal_noise_ratio)(originals, noisy)
    np.testing.assert_allclose(in_graph, reference, rtol=1e-5)
    # The one floor: identical images score 10 log10(1 / PSNR_MSE_FLOOR), not infinity.
    floor = 10 * np.log10(1 / metrics.PSNR_MSE_FLOOR)
    assert metrics.psnr_per_slice(originals, originals) == pytest.approx([floor] * 4)


@pytest.mark.parametrize(
    "counts", [[3, 0, 1, 4], [5, 5, 5, 5], [0, 7, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]]
)
def test_usage_statistics_are_the_exponentiated_entropy_and_the_share_of_codes_used(counts):
    total = sum(counts)
    entropy = -sum(count / total * np.log(count / total) for count in counts if count)
    perplexity, used = metrics.usage_statistics(np.array(counts, dtype="float32"))
    assert float(perplexity) == pytest.approx(np.exp(entropy), rel=1e-5)
    assert float(used) == pytest.approx(sum(count > 0 for count in counts) / len(counts))


def test_code_usage_and_per_map_histograms_are_distributions_over_all_codes():
    code_maps = np.array([[[0, 0], [1, 3]], [[4, 4], [4, 4]], [[1, 0], [3, 3]]])
    usage = metrics.code_usage(code_maps[:1], 5)
    np.testing.assert_allclose(usage, [0.5, 0.25, 0.0, 0.25, 0.0])
    histograms = metrics.code_histograms(code_maps, 5)
    expected = [np.bincount(code_map.ravel(), minlength=5) / 4 for code_map in code_maps]
    np.testing.assert_allclose(histograms, expected)
    np.testing.assert_allclose(histograms.mean(axis=0), metrics.code_usage(code_maps, 5))


def test_bits_per_code_is_the_mean_negative_log2_likelihood():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 4, 4, 6)).astype("float32")
    code_maps = rng.integers(0, 6, (3, 4, 4))
    chosen = np.take_along_axis(
        log_softmax(logits.astype(np.float64), axis=-1), code_maps[..., None], -1
    )
    expected = -chosen.mean() / np.log(2)
    assert metrics.bits_per_code(logits, code_maps) == pytest.approx(expected)
    for chunk in (1, 6, 7 * 6):  # a row, or several, of logits at a time: the same mean
        assert metrics.bits_per_code(logits, code_maps, chunk) == pytest.approx(expected)
    uniform = np.zeros((2, 4, 4, 8), "float32")
    assert metrics.bits_per_code(uniform, code_maps[:2] % 8) == pytest.approx(3.0)
    huge = np.where(np.arange(6) == 2, 1000.0, 0.0) * np.ones((1, 2, 2, 1))  # no overflow
    assert metrics.bits_per_code(huge, np.full((1, 2, 2), 2)) == pytest.approx(0.0, abs=1e-12)
