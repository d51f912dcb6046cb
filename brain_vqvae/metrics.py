"""Image and code metrics, one definition each.

Images are compared on the [0, 1] scale, shaped (N, S, S, 1):

- SSIM (Wang et al. 2004) with an 11x11 Gaussian window of sigma 1.5, data range 1,
  K1 = 0.01, K2 = 0.03, averaged over the window positions that lie wholly inside the image
  (the same numbers as `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`): `structural_similarity`
  (differentiable, in-graph) and `ssim_per_slice` (numpy); its multiscale form, MS-SSIM
  (Wang, Simoncelli and Bovik 2003): `multiscale_structural_similarity` (in-graph);
- PSNR = 10 log10(1 / max(MSE, 1e-10)) in dB: the MSE is floored at `PSNR_MSE_FLOOR` so that
  identical images score a finite 100 dB instead of infinity (which would turn every mean over
  slices into infinity): `peak_signal_noise_ratio` (in-graph, the VQ-VAE's training metric) and
  `psnr_per_slice` (numpy);
- MAE = mean |x - y|: `mae_per_slice`;
- the radial power spectrum (`radial_power_spectra`), the mean distance in decades between
  two of them (`log_spectral_distance`) and the excess of one over the other
  (`log_spectral_excess`): blur lacks power at short periods, the checkerboard of an
  up-convolution has too much at 2 pixels (in-graph, differentiable).

Code maps (N, h, w) of integer codes in [0, K):

- `code_usage` (the share of each code over all maps) and `code_histograms` (per map);
- `usage_statistics`: the perplexity exp(-sum_k p_k log p_k) of the code shares p and the
  fraction of codes in use, from counts (in-graph);
- `bits_per_code`: the mean -log2 p(k) of codes under a prior's logits (its negative
  log-likelihood in bits, against log2 K for a uniform prior).
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops

SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
PSNR_MSE_FLOOR = 1e-10  # identical images: 10 log10(1 / 1e-10) = 100 dB
SPECTRUM_FLOOR = 1e-12  # power per frequency; a real 128x128 slice has 1e-10 or more


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _gaussian_band(size: int, taps: int = SSIM_FILTER_SIZE) -> np.ndarray:
    """The [size - taps + 1, size] matrix G whose rows are the normalised 1-D Gaussian window
    (`taps` taps, sigma = SSIM_FILTER_SIGMA) at every 'valid' offset, so that G @ X @ G^T is X
    filtered by the separable 2-D Gaussian without padding."""
    offsets = np.arange(taps) - (taps - 1) / 2
    window = np.exp(-(offsets**2) / (2 * SSIM_FILTER_SIGMA**2))
    window /= window.sum()
    band = np.zeros((size - taps + 1, size), dtype="float32")
    for row in range(len(band)):
        band[row, row : row + taps] = window
    return band


def _similarity_maps(images, others, taps: int = SSIM_FILTER_SIZE):
    """SSIM's two factors at every window position of each pair of [0, 1] images, [N, H, W]
    x 2 -> (luminance, contrast_structure), each [N, H - taps + 1, W - taps + 1]:

        luminance = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1),
        contrast_structure = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2),

    with mu, sigma^2 and sigma_xy the local means, variances and covariance under a Gaussian
    window of `taps` taps and sigma 1.5 (no padding), C1 = 0.01^2, C2 = 0.03^2 for data range 1.
    The separable filter is applied as two matrix products with banded matrices
    (`_gaussian_band`), one dense matmul per axis, which a CPU runs faster than the depthwise
    convolution of `tf.image.ssim`; the values are the same up to float rounding."""
    rows = ops.convert_to_tensor(_gaussian_band(images.shape[1], taps))
    columns = ops.convert_to_tensor(_gaussian_band(images.shape[2], taps))
    moments = ops.concatenate(
        [images, others, images * images, others * others, images * others], axis=0
    )
    filtered = ops.matmul(ops.matmul(rows, moments), ops.transpose(columns))
    mean_x, mean_y, square_x, square_y, product = ops.split(filtered, 5, axis=0)
    variance_x = square_x - mean_x * mean_x
    variance_y = square_y - mean_y * mean_y
    covariance = product - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    luminance = (2 * mean_x * mean_y + c1) / (mean_x * mean_x + mean_y * mean_y + c1)
    contrast_structure = (2 * covariance + c2) / (variance_x + variance_y + c2)
    return luminance, contrast_structure


def structural_similarity(images, others):
    """SSIM of each pair of [0, 1] images: [N, H, W, 1] x 2 -> [N] (Wang et al. 2004): the mean
    over window positions of luminance x contrast_structure (`_similarity_maps`, 11 taps, as
    `tf.image.ssim` and skimage's `gaussian_weights=True`). Differentiable.
    """
    luminance, contrast_structure = _similarity_maps(
        ops.cast(images, "float32")[..., 0], ops.cast(others, "float32")[..., 0]
    )
    return ops.mean(luminance * contrast_structure, axis=(1, 2))


def _halved(images):
    """[N, H, W] -> [N, ceil(H / 2), ceil(W / 2)]: the means of 2x2 blocks, an odd side first
    extended by repeating its last row or column (symmetric padding)."""
    if images.shape[1] % 2:
        images = ops.concatenate([images, images[:, -1:]], axis=1)
    if images.shape[2] % 2:
        images = ops.concatenate([images, images[:, :, -1:]], axis=2)
    count, height, width = ops.shape(images)[0], images.shape[1] // 2, images.shape[2] // 2
    return ops.mean(ops.reshape(images, (count, height, 2, width, 2)), axis=(2, 4))


def multiscale_structural_similarity(images, others, weights, taps: int):
    """MS-SSIM (Wang, Simoncelli and Bovik 2003) of each pair of [0, 1] images: [N, H, W, 1] x 2
    -> [N]. At M = len(`weights`) scales j = 1..M, the images halved j - 1 times (`_halved`),
    with l_j and c_j SSIM's two factors there (`_similarity_maps`, a Gaussian window of `taps`
    taps and sigma 1.5) and mean(.) over window positions,

        MS-SSIM = relu(mean(l_M c_M))^w_M * prod_{j < M} relu(mean(c_j))^w_j,

    as `tf.image.ssim_multiscale` computes it. The coarsest scale must hold the window:
    H, W >= taps * 2^(M - 1)."""
    images = ops.cast(images, "float32")[..., 0]
    others = ops.cast(others, "float32")[..., 0]
    score = 1.0
    for scale, weight in enumerate(weights):
        if scale > 0:
            images, others = _halved(images), _halved(others)
        luminance, contrast_structure = _similarity_maps(images, others, taps)
        if scale == len(weights) - 1:
            contrast_structure = luminance * contrast_structure
        factor = ops.relu(ops.mean(contrast_structure, axis=(1, 2)))
        score = score * ops.power(factor, float(weight))
    return score


def peak_signal_noise_ratio(images, others):
    """PSNR in dB of each pair of [0, 1] images, 10 log10(1 / max(MSE, `PSNR_MSE_FLOOR`)):
    [N, ...] x 2 -> [N] float32. In-graph (keras.ops)."""
    images = ops.cast(images, "float32")
    others = ops.cast(others, "float32")
    squared = ops.reshape(ops.square(images - others), (ops.shape(images)[0], -1))
    mse = ops.mean(squared, axis=1)
    return 10.0 * ops.log10(1.0 / ops.maximum(mse, PSNR_MSE_FLOOR))


@functools.cache
def _ring_means(size: int) -> np.ndarray:
    """The [S * S, R] matrix whose column r - 1 averages a flattened S x S spectrum (in the
    order of `fft2`) over the frequencies (u, v) with round(sqrt(u^2 + v^2)) = r, for
    r = 1 .. R = round(S / sqrt 2); the constant term (r = 0) is left out."""
    frequencies = np.fft.fftfreq(size, d=1.0 / size)
    radius = np.rint(np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij")))
    radius = radius.astype(int).ravel()
    rings = (radius[:, None] == np.arange(1, radius.max() + 1)[None, :]).astype("float32")
    return rings / rings.sum(axis=0)


def radial_power_spectra(images):
    """Each image's azimuthally averaged power spectrum: [N, S, S, 1] -> [N, R] float32, entry
    r - 1 for the spatial frequency of r cycles per image, r = 1 .. R = round(S / sqrt 2)
    (period S / r pixels: r = S / 2 is the 2-pixel period along a row or column, and the
    diagonal frequencies beyond it reach the checkerboard (-1)^(x + y) at r = S / sqrt 2).

    The image's mean is removed, P(u, v) = |F(x)(u, v)|^2 / S^4 is its power at the frequency
    (u, v) (F the 2D discrete Fourier transform, u and v in -S/2 .. S/2 - 1, so that P sums to
    the image's variance), and A(r) the mean of P over the frequencies with
    round(sqrt(u^2 + v^2)) = r. In-graph (keras.ops) and differentiable.
    """
    images = ops.cast(images, "float32")[..., 0]
    size = images.shape[1]
    centred = images - ops.mean(images, axis=(1, 2), keepdims=True)
    real, imaginary = ops.fft2((centred, ops.zeros_like(centred)))
    power = (real * real + imaginary * imaginary) / float(size) ** 4
    flat = ops.reshape(power, (-1, size * size))
    return ops.matmul(flat, ops.convert_to_tensor(_ring_means(size)))


def _decades(spectra, others):
    """log10 A(r) - log10 B(r) of two radial power spectra ([..., R] each), power below
    `SPECTRUM_FLOOR` (far below any ring of a real 8-bit image) counted as that floor, so that
    empty rings stay finite."""
    spectra = ops.maximum(ops.cast(spectra, "float32"), SPECTRUM_FLOOR)
    others = ops.maximum(ops.cast(others, "float32"), SPECTRUM_FLOOR)
    return ops.log10(spectra) - ops.log10(others)


def log_spectral_distance(spectra, others):
    """Mean |log10 A(r) - log10 B(r)| over the last axis of two radial power spectra
    (`radial_power_spectra`, [..., R] each) -> [...]: 0 for the same spectrum, 1 for a tenfold
    excess or lack of power at every frequency (`_decades` floors empty rings)."""
    return ops.mean(ops.abs(_decades(spectra, others)), axis=-1)


def log_spectral_excess(spectra, others):
    """Mean max(0, log10 A(r) - log10 B(r)) over the last axis -> [...]: the same as
    `log_spectral_distance` but counting only where A holds more power than B (a periodic
    pattern B lacks), not less (blur)."""
    return ops.mean(ops.relu(_decades(spectra, others)), axis=-1)


def as_image_batch(images, name: str = "images") -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) in [0, 1] -> float32 array (N, S, S, 1)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"{name} must be shaped (N, S, S, 1), got {images.shape}")
    return images


def _same_shape(originals, reconstructions) -> tuple[np.ndarray, np.ndarray]:
    originals = np.asarray(originals, dtype=np.float32)
    reconstructions = np.asarray(reconstructions, dtype=np.float32)
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"originals {originals.shape} and reconstructions {reconstructions.shape} differ"
        )
    return originals, reconstructions


def ssim_per_slice(originals, reconstructions, chunk: int = 256) -> np.ndarray:
    """SSIM of each pair, (N, S, S, 1) x 2 -> (N,) float64: `structural_similarity`, `chunk`
    pairs at a time to bound memory."""
    originals, reconstructions = _same_shape(
        as_image_batch(originals), as_image_batch(reconstructions)
    )
    scores = [
        np.asarray(
            structural_similarity(
                originals[start : start + chunk], reconstructions[start : start + chunk]
            )
        )
        for start in range(0, len(originals), chunk)
    ]
    return np.concatenate(scores or [np.zeros(0)]).astype(np.float64)


def psnr_per_slice(originals, reconstructions) -> np.ndarray:
    """PSNR in dB of each pair (`peak_signal_noise_ratio`): (N, ...) x 2 -> (N,) float64."""
    originals, reconstructions = _same_shape(originals, reconstructions)
    if len(originals) == 0:
        return np.zeros(0)
    return np.asarray(peak_signal_noise_ratio(originals, reconstructions)).astype(np.float64)


def mae_per_slice(originals, reconstructions) -> np.ndarray:
    """Mean absolute error of each pair: (N, ...) x 2 -> (N,) float64."""
    originals, reconstructions = _same_shape(originals, reconstructions)
    difference = np.abs(originals - reconstructions).reshape(len(originals), -1)
    return difference.mean(axis=1, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------


def usage_statistics(counts):
    """Perplexity and fraction of codes used, from the number of vectors assigned to each code
    (counts [K], summing to M). In-graph (keras.ops); numpy counts are fine too.

    With p_k = counts_k / M the share of the M vectors assigned to code k, the perplexity is
    exp(-sum_k p_k log p_k): 1 when every vector uses one code, K when all K codes are used
    equally often. The fraction of codes used is #{k : p_k > 0} / K.
    """
    counts = ops.cast(counts, "float32")
    average_usage = counts / ops.sum(counts)
    entropy = -ops.sum(average_usage * ops.log(average_usage + 1e-10))
    return ops.exp(entropy), ops.mean(ops.cast(average_usage > 0, "float32"))


def code_histograms(code_maps, num_embeddings: int) -> np.ndarray:
    """(N, h, w) codes -> (N, K) shares: row n, column k = the share of map n's positions with
    code k. Counted with one bincount over n K + code, so no (N, h w, K) one-hot is made."""
    code_maps = np.asarray(code_maps)
    flat = code_maps.reshape(len(code_maps), -1).astype(np.int64)
    offsets = num_embeddings * np.arange(len(flat))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * num_embeddings)
    return counts.reshape(len(flat), num_embeddings) / max(flat.shape[1], 1)


def code_usage(code_maps, num_embeddings: int) -> np.ndarray:
    """Share of all positions given to each code: (N, h, w) ints -> (K,), sums to 1."""
    counts = np.bincount(np.asarray(code_maps).ravel(), minlength=num_embeddings)
    return counts / counts.sum()


def bits_per_code(logits, code_maps, chunk_elements: int = 2**22) -> float:
    """Mean negative log2-likelihood of `code_maps` (N, h, w) under `logits` (N, h, w, K): the
    cross-entropy in nats (a PixelCNN's loss) divided by ln 2,

        -log p(k) = logsumexp(l) - l_k = (m + log sum_j exp(l_j - m)) - l_k,  m = max_j l_j,

    in float64, over about `chunk_elements` logits at a time: a whole batch of the hifi
    preset's (64, 32, 32, 4096) logits cast to float64, with its temporaries, would take eight
    times the memory of the logits themselves."""
    logits = np.asarray(logits)
    codes = np.asarray(code_maps).astype(np.int64).reshape(-1)
    logits = logits.reshape(len(codes), -1)
    rows = max(1, chunk_elements // logits.shape[1])
    total = 0.0
    for start in range(0, len(codes), rows):
        chunk = logits[start : start + rows].astype(np.float64)
        peak = chunk.max(axis=1)
        log_normaliser = peak + np.log(np.exp(chunk - peak[:, None]).sum(axis=1))
        chosen = np.take_along_axis(chunk, codes[start : start + rows, None], axis=1)[:, 0]
        total += float((log_normaliser - chosen).sum())
    return total / len(codes) / np.log(2.0)
