"""Tests for the model (brain_vqvae.model, through the `modules` facade) on tiny models: 32x32
images, 8x8 code maps, 8 codes of dimension 4."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from fixtures import write_as_saved_before
from skimage.metrics import structural_similarity as skimage_ssim

import modules
from brain_vqvae.model.convolution import OneFilterConv2D
from brain_vqvae.model.gated_prior import GatedLayer
from brain_vqvae.model.sampler import _SAMPLERS, raster_scan
from brain_vqvae.model.trackers import SSIM_BINS, QuantileTracker, histogram_counts
from brain_vqvae.model.vqvae import SSIM_LOSS_WEIGHT
from hyperparameters import Hyperparameters
from modules import (
    VQVAE,
    VQVAE_METRICS,
    MaskedConv2D,
    PixelCNN,
    VectorQuantizer,
    build_decoder,
    build_encoder,
    build_pixelcnn,
    build_vqvae,
    causal_mask,
    decode_code_maps,
    encode_code_maps,
    sample_code_maps,
)

TINY = Hyperparameters(
    image_size=32,
    encoder_filters=(8, 8, 16),
    downsample_stages=2,
    num_embeddings=8,
    latent_dim=4,
    pixelcnn_filters=16,
    pixelcnn_residual_blocks=2,
    batch_size=8,
)
CODES = TINY.num_embeddings
MAP_SIZE = TINY.code_map_size  # 8


def wave_images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Plane waves of random frequency and phase, 0.5 +- 0.4: [count, size, size, 1] in [0, 1].

    Every 11x11 window has structure. (On large flat regions, SSIM's contrast-structure term
    punishes the decoder's initial noise so hard that a tiny decoder goes flat and stalls.)
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size] / size
    frequencies = rng.uniform(1.0, 3.0, (count, 2))
    phases = rng.uniform(0.0, 2 * np.pi, count)
    angles = (
        2 * np.pi * (frequencies[:, 0, None, None] * rows + frequencies[:, 1, None, None] * columns)
    )
    images = 0.5 + 0.4 * np.sin(angles + phases[:, None, None])
    return images[..., None].astype("float32")


def reference_ssim(images: np.ndarray, others: np.ndarray) -> np.ndarray:
    """SSIM of each pair by scikit-image (Gaussian window, sigma 1.5, data range 1): (N,)."""
    return np.array(
        [
            skimage_ssim(
                image[..., 0],
                other[..., 0],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for image, other in zip(images, others, strict=True)
        ]
    )


def quantizer_with_codebook(codebook: np.ndarray, **options) -> VectorQuantizer:
    """A built `VectorQuantizer` whose codebook (and EMA cluster sums) start at `codebook`."""
    quantizer = VectorQuantizer(codebook.shape[0], codebook.shape[1], **options)
    quantizer.build((None, codebook.shape[1]))
    quantizer.codebook.assign(codebook)
    if quantizer.ema:
        quantizer.ema_cluster_sum.assign(codebook)
    return quantizer


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return wave_images(8)


@pytest.fixture(scope="module")
def vqvae(images) -> VQVAE:
    keras.utils.set_random_seed(0)
    return build_vqvae(TINY, float(images.var()))


PRIOR_DESIGNS = [(architecture, dim) for architecture in ("masked", "gated") for dim in (0, 8)]
PRIOR_IDS = [
    f"{architecture}-{'embedded' if dim else 'one-hot'}" for architecture, dim in PRIOR_DESIGNS
]


def tiny_prior(architecture: str, embedding_dim: int, **changes) -> PixelCNN:
    keras.utils.set_random_seed(0)
    return build_pixelcnn(
        TINY.replace(
            pixelcnn_architecture=architecture, pixelcnn_embedding_dim=embedding_dim, **changes
        )
    )


@pytest.fixture(scope="module", params=PRIOR_DESIGNS, ids=PRIOR_IDS)
def pixelcnn(request) -> PixelCNN:
    """The tiny prior of each architecture, with codes entering as one-hot vectors or as
    8-dimensional embeddings."""
    return tiny_prior(*request.param)


# ---------------------------------------------------------------------------------------------
# Vector quantizer
# ---------------------------------------------------------------------------------------------


def test_quantizer_picks_the_true_nearest_codes():
    rng = np.random.default_rng(1)
    codebook = rng.normal(size=(CODES, 4)).astype("float32")
    latents = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    outputs = quantizer_with_codebook(codebook)(latents)

    distances = ((latents[..., None, :] - codebook) ** 2).sum(axis=-1)
    expected = distances.argmin(axis=-1)
    assert outputs["code_indices"].dtype == "int32"
    np.testing.assert_array_equal(outputs["code_indices"], expected)
    np.testing.assert_allclose(outputs["quantized"], codebook[expected], atol=1e-6)


def test_quantizer_loss_is_codebook_plus_beta_commitment_and_beta_only_with_ema():
    rng = np.random.default_rng(2)
    codebook = rng.normal(size=(CODES, 4)).astype("float32")
    latents = rng.normal(size=(64, 4)).astype("float32")
    squared_error = np.mean(
        (latents - codebook[quantizer_with_codebook(codebook).code_indices(latents)]) ** 2
    )

    plain = quantizer_with_codebook(codebook, beta=0.25)(latents)["loss"]
    ema = quantizer_with_codebook(codebook, beta=0.25, ema=True)(latents)["loss"]
    np.testing.assert_allclose(plain, 1.25 * squared_error, rtol=1e-5)
    np.testing.assert_allclose(ema, 0.25 * squared_error, rtol=1e-5)


def test_straight_through_gradient_copies_the_decoder_gradient_to_the_encoder_outputs():
    rng = np.random.default_rng(3)
    quantizer = quantizer_with_codebook(rng.normal(size=(CODES, 4)).astype("float32"))
    latents = tf.Variable(rng.normal(size=(3, 4)).astype("float32"))
    weights = rng.normal(size=(3, 4)).astype("float32")
    with tf.GradientTape() as tape:
        objective = tf.reduce_sum(quantizer(latents)["quantized"] * weights)
    np.testing.assert_allclose(tape.gradient(objective, latents), weights, rtol=1e-6)


def test_reconstruction_gradient_reaches_every_encoder_weight(vqvae, images):
    with tf.GradientTape() as tape:
        quantized = vqvae.quantizer(vqvae.encode(images))["quantized"]
        loss = vqvae.reconstruction_loss(images, vqvae.decoder(quantized))
    gradients = tape.gradient(loss, vqvae.encoder.trainable_variables)
    assert all(g is not None and np.abs(g).max() > 0 for g in gradients)


@pytest.mark.parametrize(
    ("assigned_codes", "perplexity", "codes_used"),
    [
        ([3] * 16, 1.0, 1 / 8),
        (list(range(8)) * 2, 8.0, 1.0),
        ([0, 2, 4, 6] * 4, 4.0, 0.5),
    ],
)
def test_perplexity_and_fraction_of_codes_used(assigned_codes, perplexity, codes_used):
    codebook = 5.0 * np.random.default_rng(4).normal(size=(CODES, 4)).astype("float32")
    outputs = quantizer_with_codebook(codebook)(codebook[assigned_codes])
    np.testing.assert_allclose(outputs["perplexity"], perplexity, rtol=1e-5)
    np.testing.assert_allclose(outputs["codes_used"], codes_used)


def _code_to_cluster_mean_distance(quantizer: VectorQuantizer, latents: np.ndarray) -> float:
    indices = np.asarray(quantizer.code_indices(latents))
    codebook = quantizer.codebook.numpy()
    return np.mean(
        [np.linalg.norm(codebook[k] - latents[indices == k].mean(0)) for k in np.unique(indices)]
    )


def test_ema_codebook_moves_toward_the_mean_of_its_assigned_vectors_only_in_training():
    rng = np.random.default_rng(5)
    centres = np.array([[2, 0], [0, 2], [-2, 0], [0, -2]], dtype="float32")
    latents = (np.repeat(centres, 16, axis=0) + 0.1 * rng.normal(size=(64, 2))).astype("float32")
    quantizer = quantizer_with_codebook(0.5 * centres, ema=True, ema_decay=0.8)
    assert not quantizer.codebook.trainable
    initial = _code_to_cluster_mean_distance(quantizer, latents)

    quantizer(latents, training=False)
    assert _code_to_cluster_mean_distance(quantizer, latents) == initial
    for _ in range(20):
        quantizer(latents, training=True)
    assert _code_to_cluster_mean_distance(quantizer, latents) < 0.05 * initial


def test_one_ema_step_follows_the_laplace_smoothed_update():
    codebook = np.array([[0, 0], [10, 10], [-10, 10]], dtype="float32")
    latents = np.array([[1, 0], [0, 1], [9, 9]], dtype="float32")
    quantizer = quantizer_with_codebook(codebook, ema=True, ema_decay=0.9, ema_epsilon=1e-5)
    quantizer(latents, training=True)

    counts = np.array([2, 1, 0])
    sums = np.array([[1, 1], [9, 9], [0, 0]])
    cluster_size = 0.9 * 1 + 0.1 * counts
    cluster_sum = 0.9 * codebook + 0.1 * sums
    total = cluster_size.sum()
    smoothed = (cluster_size + 1e-5) / (total + 3e-5) * total
    np.testing.assert_allclose(quantizer.ema_cluster_size, cluster_size, rtol=1e-6)
    np.testing.assert_allclose(quantizer.codebook, cluster_sum / smoothed[:, None], rtol=1e-5)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_reseeds_an_unused_code_with_an_encoder_output(ema):
    codebook = np.array([[0, 0], [1, 0], [0, 1], [50, 50]], dtype="float32")
    noise = 0.05 * np.random.default_rng(6).normal(size=(30, 2))
    latents = (np.repeat(codebook[:3], 10, axis=0) + noise).astype("float32")
    quantizer = quantizer_with_codebook(
        codebook, ema=ema, ema_decay=0.4, dead_code_restart=True, dead_code_threshold=0.3, seed=0
    )
    np.testing.assert_allclose(quantizer.usage_share, [0.6] * 4)  # twice the threshold

    quantizer(latents, training=False)
    np.testing.assert_array_equal(quantizer.codebook, codebook)
    quantizer(latents, training=True)  # code 3: 0.4 * 0.6 + 0.6 * 0 < 0.3; others 0.44
    restarted = quantizer.codebook.numpy()[3]
    assert np.abs(latents - restarted).sum(axis=1).min() < 1e-6
    np.testing.assert_allclose(quantizer.usage_share.numpy(), [0.44, 0.44, 0.44, 0.6], rtol=1e-5)
    if ema:
        assert quantizer.ema_cluster_size.numpy()[3] == 1.0
        np.testing.assert_allclose(quantizer.ema_cluster_sum.numpy()[3], restarted)
    else:
        np.testing.assert_array_equal(quantizer.codebook.numpy()[:3], codebook[:3])


def test_dead_codes_restart_where_the_codebook_fits_worst_not_on_the_background():
    codebook = np.array([[0, 0], [50, 50], [-50, 50]], dtype="float32")
    tissue = 5.0 + 0.1 * np.random.default_rng(7).normal(size=(8, 2))
    latents = np.concatenate([np.zeros((400, 2)), tissue]).astype("float32")  # 98 % background
    quantizer = quantizer_with_codebook(
        codebook, ema_decay=0.4, dead_code_restart=True, dead_code_threshold=0.3, seed=0
    )
    quantizer(latents, training=True)  # codes 1 and 2 draw nothing: both restarted
    for restarted in quantizer.codebook.numpy()[1:]:
        assert np.abs(tissue - restarted).sum(axis=1).min() < 1e-6


def clusters_with_background(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four tight clusters of 20 vectors in 2-D and 400 copies of one background vector."""
    centres = np.array([[3, 0], [0, 3], [-3, 0], [0, -3]], dtype="float32")
    noise = 0.05 * np.random.default_rng(seed).normal(size=(80, 2))
    vectors = np.concatenate([np.repeat(centres, 20, axis=0) + noise, np.zeros((400, 2))])
    return centres, vectors.astype("float32")


def test_kmeans_puts_a_centroid_on_every_cluster_despite_a_mass_of_copies():
    centres, vectors = clusters_with_background(12)
    centroids = np.asarray(modules.kmeans(vectors, 5, keras.random.SeedGenerator(0)))
    for point in [*centres, [0, 0]]:
        assert np.linalg.norm(centroids - point, axis=1).min() < 0.1
    empty = modules.kmeans(np.zeros((0, 2), "float32"), 3, keras.random.SeedGenerator(0))
    np.testing.assert_array_equal(empty, np.zeros((3, 2)))


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_init_replaces_the_codebook_on_the_first_training_call_only(ema):
    centres, vectors = clusters_with_background(13)
    quantizer = VectorQuantizer(5, 2, ema=ema, kmeans_init=True, seed=0)
    quantizer.build((None, 2))
    initial = quantizer.codebook.numpy().copy()
    quantizer(vectors, training=False)
    np.testing.assert_array_equal(quantizer.codebook, initial)

    outputs = quantizer(vectors, training=True)
    codebook = quantizer.codebook.numpy().copy()
    for point in [*centres, [0, 0]]:
        assert np.linalg.norm(codebook - point, axis=1).min() < 0.1
    assert float(outputs["codes_used"]) == 1.0
    quantizer(vectors[:80] + 1.0, training=True)  # not clustered again
    if not ema:
        np.testing.assert_array_equal(quantizer.codebook, codebook)
    assert float(quantizer.initialized) == 1.0


def test_l2_normalized_quantizer_picks_codes_by_direction_and_outputs_unit_vectors():
    codebook = np.array([[1, 0], [0, 5], [-0.1, 0], [0, -1]], dtype="float32")
    latents = np.array([[0.1, 0.01], [300, 290.0], [-2, 0.5], [0.2, -40]], dtype="float32")
    quantizer = quantizer_with_codebook(codebook, l2_normalize=True)
    outputs = quantizer(latents)
    np.testing.assert_array_equal(outputs["code_indices"], [0, 0, 2, 3])
    np.testing.assert_array_equal(quantizer.code_indices(latents * 1e3), [0, 0, 2, 3])
    units = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    np.testing.assert_allclose(outputs["quantized"], units[[0, 0, 2, 3]], atol=1e-6)
    np.testing.assert_allclose(quantizer.lookup(np.array([1, 2])), units[[1, 2]], atol=1e-6)
    directions = latents / np.linalg.norm(latents, axis=1, keepdims=True)
    squared_error = np.mean((directions - units[[0, 0, 2, 3]]) ** 2)
    np.testing.assert_allclose(outputs["loss"], 1.25 * squared_error, rtol=1e-5)


def test_quantizer_rejects_bad_arguments():
    for arguments in (
        {"num_embeddings": 1},
        {"latent_dim": 0},
        {"beta": -0.1},
        {"ema_decay": 1.0},
        {"ema_epsilon": 0.0},
        {"dead_code_threshold": 1.0},
    ):
        with pytest.raises(ValueError, match=next(iter(arguments))):
            VectorQuantizer(**{"num_embeddings": 8, "latent_dim": 4, **arguments})
    with pytest.raises(ValueError, match="latent_dim=4"):
        VectorQuantizer(8, 4)(np.zeros((2, 3), dtype="float32"))


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_embeddings": 1},
        {"latent_dim": 0},
        {"beta": -0.1},
        {"ema_decay": 0.0},
        {"ema_epsilon": -1.0},
        {"dead_code_threshold": -0.1},
    ],
)
def test_quantizer_and_hyperparameters_refuse_a_value_with_the_same_message(arguments):
    with pytest.raises(ValueError) as from_layer:
        VectorQuantizer(**{"num_embeddings": 8, "latent_dim": 4, **arguments})
    with pytest.raises(ValueError) as from_settings:
        Hyperparameters(**arguments)
    assert str(from_layer.value) == str(from_settings.value)


def test_quantizer_config_round_trip():
    quantizer = VectorQuantizer(8, 4, beta=0.5, ema=True, dead_code_restart=True, seed=3)
    assert VectorQuantizer.from_config(quantizer.get_config()).get_config() == (
        quantizer.get_config()
    )


# ---------------------------------------------------------------------------------------------
# Encoder, decoder and VQ-VAE
# ---------------------------------------------------------------------------------------------


def test_card_encoder_and_decoder_shapes_and_strides():
    card = Hyperparameters()
    encoder = build_encoder(card)
    assert encoder.output.shape == (None, 8, 8, 16)
    strides = [layer.strides for layer in encoder.layers if layer.name.startswith("conv_")]
    assert strides == [(2, 2)] * 4 + [(1, 1)]
    assert build_decoder(card).output.shape == (None, 128, 128, 1)
    assert build_encoder(card.replace(downsample_stages=2)).output.shape == (None, 32, 32, 16)
    with_blocks = build_encoder(card.replace(residual_blocks=2))
    assert {"residual_0_conv3x3", "residual_1_conv1x1"} <= {
        layer.name for layer in with_blocks.layers
    }


@pytest.mark.parametrize(("strides", "padding"), [(1, "same"), (2, "valid")])
def test_one_filter_conv_is_conv2d_computed_depthwise_on_tensorflow_cpu(strides, padding):
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.standard_normal((2, 16, 16, 8)), dtype="float32")
    plain = keras.layers.Conv2D(1, 3, strides=strides, padding=padding)
    layer = OneFilterConv2D(3, strides=strides, padding=padding)
    plain.build(inputs.shape)
    layer.build(inputs.shape)
    plain.set_weights([rng.standard_normal((3, 3, 8, 1)), rng.standard_normal(1)])
    layer.set_weights(plain.get_weights())

    results = []
    for convolution in (plain, layer):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = convolution(inputs)
            weighted = tf.reduce_sum(outputs * np.linspace(-1, 1, outputs.shape.num_elements()))
        results.append([outputs, *tape.gradient(weighted, [inputs, convolution.kernel])])
    for expected, actual in zip(*results, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    graph = tf.function(layer).get_concrete_function(inputs).graph
    operations = {operation.type for operation in graph.get_operations()}
    assert "DepthwiseConv2dNative" in operations and "Conv2D" not in operations

    config = layer.get_config()
    assert "filters" not in config
    rebuilt = OneFilterConv2D.from_config(config)
    assert (rebuilt.filters, rebuilt.strides, rebuilt.padding) == (1, (strides,) * 2, padding)
    assert isinstance(build_decoder(TINY).get_layer("conv_out"), OneFilterConv2D)


@pytest.mark.parametrize("reconstruction_loss", ["mse", "ssim_l1"])
def test_vqvae_training_lowers_the_loss_and_reports_every_metric(images, reconstruction_loss):
    keras.utils.set_random_seed(0)
    settings = TINY.replace(reconstruction_loss=reconstruction_loss)
    model = build_vqvae(settings, float(images.var()))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(images, batch_size=8, epochs=18, verbose=0).history

    assert set(history) == set(VQVAE_METRICS)
    assert all(np.isfinite(values).all() for values in history.values())
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert 1.0 <= history["perplexity"][-1] <= CODES
    assert 0.0 < history["codes_used"][-1] <= 1.0
    evaluation = model.evaluate(images, batch_size=8, verbose=0, return_dict=True)
    assert set(evaluation) == set(VQVAE_METRICS)
    reconstructions = np.asarray(model(images), dtype=np.float64)  # clipped to [0, 1]
    expected_ssim = reference_ssim(images, reconstructions).mean()
    mse = ((images - reconstructions) ** 2).reshape(len(images), -1).mean(axis=1)
    assert evaluation["ssim"] == pytest.approx(expected_ssim, abs=1e-4)
    assert evaluation["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)
    # The spread of the slices' SSIM, from the same pass: the share at or above the target and
    # the 5th percentile (to within one histogram bin, 0.005, of the slice that reaches it).
    scores = reference_ssim(images, reconstructions)
    assert evaluation["above_target"] == pytest.approx(np.mean(scores >= TINY.ssim_target))
    fifth = np.percentile(scores, 5, method="inverted_cdf")
    assert evaluation["ssim_p05"] == pytest.approx(fifth, abs=0.0051)


def test_quantile_tracker_reads_a_quantile_of_every_score_counted_since_its_reset():
    scores = np.random.default_rng(0).uniform(-0.3, 0.97, 1000)
    width = 2.0 / SSIM_BINS
    expectations = ((0.05, np.percentile(scores, 5)), (0.0, scores.min()), (1.0, scores.max()))
    for quantile, expected in expectations:
        tracker = QuantileTracker(quantile)
        for chunk in np.array_split(scores, 7):  # in batches, as a training step counts them
            tracker.update_state(histogram_counts(chunk, SSIM_BINS, -1.0, 1.0))
        assert float(tracker.result()) == pytest.approx(expected, abs=width)
    tracker.reset_state()
    assert float(tracker.result()) == 0.0  # nothing counted, as an empty mean reads
    # Scores outside [low, high] are counted in the end bins.
    counts = np.asarray(histogram_counts(np.array([-3.0, 0.0, 5.0]), 4, -1.0, 1.0))
    np.testing.assert_array_equal(counts, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="quantile"):
        QuantileTracker(1.5)


def test_compiled_train_step_updates_ema_restart_and_kmeans_state_but_evaluate_does_not(images):
    keras.utils.set_random_seed(0)
    settings = TINY.replace(ema=True, dead_code_restart=True, kmeans_init=True)
    model = build_vqvae(settings, float(images.var()))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    quantizer = model.quantizer
    state = (
        quantizer.codebook,
        quantizer.ema_cluster_size,
        quantizer.usage_share,
        quantizer.initialized,
    )

    before = [variable.numpy().copy() for variable in state]
    model.fit(images, batch_size=8, epochs=2, verbose=0)
    assert not model.run_eagerly
    after = [variable.numpy().copy() for variable in state]
    assert all(not np.array_equal(old, new) for old, new in zip(before, after, strict=True))
    model.evaluate(images, batch_size=8, verbose=0)
    for old, variable in zip(after, state, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())


def test_build_vqvae_keeps_the_variance_and_divides_the_mse_by_it(images):
    variance = float(images.var())
    model = build_vqvae(TINY.replace(reconstruction_loss="mse"), variance)
    assert model.data_variance == variance
    assert model.get_config()["data_variance"] == variance

    guesses = np.random.default_rng(7).uniform(size=images.shape).astype("float32")
    expected = np.mean((images - guesses) ** 2) / variance
    np.testing.assert_allclose(model.reconstruction_loss(images, guesses), expected, rtol=1e-5)

    model.compile(optimizer="adam")
    raw = model.decoder(model.quantizer.lookup(model.code_indices(images))).numpy()
    metrics = model.evaluate(images, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        metrics["reconstruction_loss"], np.mean((images - raw) ** 2) / variance, rtol=1e-4
    )


def test_ssim_l1_training_starts_on_mse_and_hands_over_within_the_warm_up(images):
    model = build_vqvae(TINY.replace(mse_warmup_steps=10), float(images.var()))
    guesses = np.random.default_rng(3).uniform(size=images.shape).astype("float32")
    mse = float(np.mean((images - guesses) ** 2) / model.data_variance)
    ssim_l1 = float(model.reconstruction_loss(images, guesses))
    blended = {step: float(model.reconstruction_loss(images, guesses, step)) for step in (0, 5, 20)}
    assert blended[0] == pytest.approx(mse, rel=1e-5)
    assert blended[5] == pytest.approx((mse + ssim_l1) / 2, rel=1e-5)
    assert blended[20] == pytest.approx(ssim_l1, rel=1e-5)
    assert mse != pytest.approx(ssim_l1, rel=1e-2)


def test_ssim_l1_scores_the_clipped_output_as_the_metric_does(images):
    model = build_vqvae(TINY.replace(mse_warmup_steps=0), float(images.var()))
    guesses = np.random.default_rng(5).uniform(-0.2, 1.2, size=images.shape).astype("float32")
    clipped = np.clip(guesses, 0.0, 1.0)
    ssim = reference_ssim(images, clipped).mean()
    l1 = float(np.mean(np.abs(images - guesses)))  # of the raw output: a gradient everywhere
    expected = SSIM_LOSS_WEIGHT * (1 - ssim) + (1 - SSIM_LOSS_WEIGHT) * l1
    loss = float(model.reconstruction_loss(images, guesses))
    assert loss == pytest.approx(expected, abs=1e-5)
    unclipped = (
        SSIM_LOSS_WEIGHT * (1 - reference_ssim(images, guesses).mean())
        + (1 - SSIM_LOSS_WEIGHT) * l1
    )
    assert loss != pytest.approx(unclipped, abs=1e-4)


def test_a_variance_computed_on_0_255_pixels_is_refused(images):
    with pytest.raises(ValueError, match="0-255"):
        build_vqvae(TINY, float((255 * images).var()))
    with pytest.raises(ValueError, match="data_variance"):
        build_vqvae(TINY, 0.0)


def test_vqvae_save_and_load_give_identical_outputs(tmp_path, images):
    keras.utils.set_random_seed(0)
    settings = TINY.replace(ema=True, dead_code_restart=True, residual_blocks=1)
    model = build_vqvae(settings, float(images.var()))
    model.quantizer(model.encode(images), training=True)  # EMA state away from its start
    path = tmp_path / "vqvae.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, VQVAE)
    assert loaded.hyperparameters == settings
    assert loaded.data_variance == model.data_variance
    np.testing.assert_array_equal(loaded(images), model(images))
    np.testing.assert_array_equal(loaded.quantizer.ema_cluster_sum, model.quantizer.ema_cluster_sum)
    code_maps = encode_code_maps(loaded, images)
    np.testing.assert_array_equal(code_maps, encode_code_maps(model, images))
    np.testing.assert_array_equal(
        decode_code_maps(loaded, code_maps), decode_code_maps(model, code_maps)
    )


def test_encode_and_decode_code_maps_in_batches(vqvae, images):
    code_maps = encode_code_maps(vqvae, images[:5], batch_size=2)
    assert code_maps.shape == (5, MAP_SIZE, MAP_SIZE) and code_maps.dtype == np.int32
    np.testing.assert_array_equal(code_maps, vqvae.code_indices(images[:5]))
    assert code_maps.min() >= 0 and code_maps.max() < CODES

    decoded = decode_code_maps(vqvae, code_maps, batch_size=2)
    assert decoded.shape == (5, 32, 32, 1) and decoded.dtype == np.float32
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    np.testing.assert_allclose(decoded, vqvae.decode_indices(code_maps), atol=1e-6)
    np.testing.assert_allclose(vqvae(images[:5]), decoded, atol=1e-6)
    assert encode_code_maps(vqvae, images[:0]).shape == (0, MAP_SIZE, MAP_SIZE)


def test_encode_and_decode_reject_bad_inputs(vqvae, images):
    with pytest.raises(ValueError, match=r"\[0, 1\] scale"):
        encode_code_maps(vqvae, 255 * images)
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 1\)"):
        encode_code_maps(vqvae, images[..., 0])
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        decode_code_maps(vqvae, np.full((1, MAP_SIZE, MAP_SIZE), CODES))
    with pytest.raises(ValueError, match="integers"):
        decode_code_maps(vqvae, np.zeros((1, MAP_SIZE, MAP_SIZE), dtype="float32"))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        encode_code_maps(vqvae, images, batch_size=0)


def test_encode_and_decode_default_to_the_inference_batch_size(images, monkeypatch):
    model = build_vqvae(TINY.replace(inference_batch_size=3), float(images.var()))
    seen = []
    code_indices = model.code_indices

    def counted(batch):
        seen.append(len(batch))
        return code_indices(batch)

    monkeypatch.setattr(model, "code_indices", counted)
    code_maps = encode_code_maps(model, images[:7])
    assert seen == [3, 3, 1]
    assert decode_code_maps(model, code_maps).shape == (7, 32, 32, 1)


# ---------------------------------------------------------------------------------------------
# Masked convolutions and PixelCNN
# ---------------------------------------------------------------------------------------------


def test_causal_masks_hide_the_future_and_for_type_a_the_centre():
    mask_a = causal_mask((3, 3), 2, 5, "A")
    mask_b = causal_mask((3, 3), 2, 5, "B")
    assert mask_a.shape == mask_b.shape == (3, 3, 2, 5)
    np.testing.assert_array_equal(mask_a[:, :, 1, 4], [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask_b[:, :, 0, 0], [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert (mask_a == mask_a[:, :, :1, :1]).all() and (mask_b == mask_b[:, :, :1, :1]).all()
    assert causal_mask((7, 7), 1, 1, "A").sum() == 24
    assert causal_mask((7, 7), 1, 1, "B").sum() == 25


def test_masked_conv_multiplies_the_mask_into_the_kernel_without_changing_the_weights():
    layer = MaskedConv2D("A", 3, 5)
    inputs = np.random.default_rng(8).normal(size=(2, 6, 6, 4)).astype("float32")
    outputs = layer(inputs)
    assert layer.mask.shape == (5, 5, 4, 3)
    kernel = layer.kernel.numpy()
    assert np.abs(kernel[2, 2]).sum() > 0  # the stored kernel keeps its masked-out entries
    expected = tf.nn.conv2d(inputs, kernel * layer.mask, 1, "SAME") + layer.bias.numpy()
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert MaskedConv2D.from_config(layer.get_config()).mask_type == "A"


def test_masked_conv_rejects_configurations_that_break_causality():
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2D("C", 4, 3)
    with pytest.raises(ValueError, match="strides 1"):
        MaskedConv2D("B", 4, 3, strides=2)
    with pytest.raises(ValueError, match="odd kernel"):
        MaskedConv2D("B", 4, 4)
    with pytest.raises(ValueError, match="odd kernel"):
        MaskedConv2D("B", 4, (3, 2))


def test_pixelcnn_layout_for_four_residual_blocks():
    network = build_pixelcnn(Hyperparameters(pixelcnn_architecture="masked")).network
    masked = [layer for layer in network.layers if isinstance(layer, MaskedConv2D)]
    one_by_one_b = [
        conv.name for conv in masked if conv.kernel_size == (1, 1) and conv.mask_type == "B"
    ]
    assert masked[0].mask_type == "A" and masked[0].kernel_size == (7, 7)
    assert one_by_one_b == ["mask_b_1", "mask_b_2", "mask_b_3"]
    assert len([conv for conv in masked if conv.kernel_size == (3, 3)]) == 4
    assert network.output.shape == (None, None, None, 16)


def test_pixelcnn_logits_depend_only_on_earlier_codes(pixelcnn):
    positions = MAP_SIZE * MAP_SIZE
    base = np.random.default_rng(9).integers(0, CODES, (MAP_SIZE, MAP_SIZE))
    perturbed = np.repeat(base[None], positions, axis=0)  # map p changes the code at p only
    rows, columns = np.divmod(np.arange(positions), MAP_SIZE)
    perturbed[np.arange(positions), rows, columns] = (base[rows, columns] + 1) % CODES
    logits = np.asarray(pixelcnn(np.concatenate([base[None], perturbed])))
    logits = logits.reshape(positions + 1, positions, CODES)
    # change[p, t]: how much the logits at position t move when the code at p changes.
    change = np.abs(logits[1:] - logits[:1]).max(axis=-1)

    at_or_after = np.triu(np.ones((positions, positions), dtype=bool)).T  # p >= t
    assert change[at_or_after].max() < 1e-5
    assert all(change[:target, target].max() > 1e-3 for target in range(1, positions))


def unknown_condition_features(prior: PixelCNN, count: int):
    """The condition features of `count` maps with every condition unknown, what the sampler
    gives a gated prior told only the positions (the default); None for a masked prior."""
    if prior.condition_encoder is None:
        return None
    size = prior.code_map_size
    return prior.condition_features(prior.with_coarse_map(np.zeros((count, size, size), "int32")))


@pytest.mark.parametrize(("architecture", "embedding_dim"), PRIOR_DESIGNS, ids=PRIOR_IDS)
def test_raster_scan_replaying_a_map_gives_the_whole_map_logits(architecture, embedding_dim):
    """The sampler's cached position-by-position pass computes what one call on the whole map
    does, at every position, borders included."""
    prior = tiny_prior(
        architecture, embedding_dim, image_size=64, pixelcnn_residual_blocks=3
    )  # 16x16, gated dilations 1, 2, 4, 8, 1, 2
    code_maps = np.random.default_rng(11).integers(0, CODES, (3, 16, 16)).astype("int32")
    whole = np.asarray(prior(code_maps)).reshape(3, 16 * 16, CODES)
    logits_seen = {}

    def replay(position, logits):  # eager: tf.while_loop runs as a Python loop
        logits_seen[int(position)] = np.asarray(logits)
        return code_maps.reshape(3, -1)[:, int(position)]

    replayed = raster_scan(prior)(3, replay, unknown_condition_features(prior, 3))
    np.testing.assert_array_equal(replayed, code_maps)
    assert sorted(logits_seen) == list(range(16 * 16))
    for position, logits in logits_seen.items():
        np.testing.assert_allclose(logits, whole[:, position], atol=1e-5)


def input_gradients(network, features, target):
    """|d logits[target] / d features| summed over channels: [positions] of the first map."""
    features = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        logits = network(features)
        size = logits.shape[2]
        selected = tf.reduce_sum(logits[0, target // size, target % size])
    return np.abs(tape.gradient(selected, features).numpy()[0]).sum(axis=-1).ravel()


@pytest.mark.parametrize("image_size", [32, 128], ids=["8x8", "32x32"])
def test_gated_receptive_field_is_every_earlier_position_and_nothing_else(image_size):
    """d logits[t] / d one-hot input[p] is nonzero for every p before t and zero for p >= t:
    for every t of an 8x8 map, and for the last position and a few others of a 32x32 one."""
    # The network's own causality: the positions enter through the condition features,
    # which do not depend on the codes (test_conditional).
    prior = tiny_prior(
        "gated", 0, image_size=image_size, pixelcnn_filters=8, pixelcnn_position_features=False
    )
    size = prior.code_map_size
    positions = size * size
    codes = np.random.default_rng(4).integers(0, CODES, (1, size, size))
    features = np.eye(CODES, dtype="float32")[codes]
    targets = range(positions) if size == 8 else (0, 1, size, size + 1, positions - 1)
    for target in targets:
        gradient = input_gradients(prior.network, features, target)
        assert gradient[target:].max() == 0.0, target
        assert target == 0 or gradient[:target].min() > 0.0, target


@pytest.mark.parametrize("first", [True, False])
def test_gated_layer_stacks_see_only_what_they_may(first):
    """The vertical output at row i sees vertical inputs of rows <= i only; the horizontal
    output at (i, j) sees vertical inputs of rows < i, and horizontal inputs of row i left of j
    (first layer) or at and left of j (later layers)."""
    layer = GatedLayer(4, 3, dilation=2, first=first)
    rng = np.random.default_rng(5)
    vertical, horizontal = (
        tf.constant(rng.normal(size=(1, 7, 7, 4)).astype("float32")) for _ in range(2)
    )
    row, column = 4, 3
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([vertical, horizontal])
        vertical_out, horizontal_out = layer((vertical, horizontal))
        vertical_at = tf.reduce_sum(vertical_out[0, row, column])
        horizontal_at = tf.reduce_sum(horizontal_out[0, row, column])

    def seen(output, inputs):
        gradient = tape.gradient(output, inputs)
        return np.zeros((7, 7), bool) if gradient is None else np.abs(gradient[0]).sum(-1) > 0

    rows = np.arange(7)[:, None] + np.zeros((1, 7), int)
    assert not seen(vertical_at, vertical)[rows > row].any()
    assert seen(vertical_at, vertical)[row, column] and seen(vertical_at, vertical)[row - 2, 5]
    assert not seen(vertical_at, horizontal).any()
    assert not seen(horizontal_at, vertical)[rows >= row].any()
    assert seen(horizontal_at, vertical)[row - 1, column]
    horizontal_seen = seen(horizontal_at, horizontal)
    assert not horizontal_seen[rows != row].any()
    assert horizontal_seen[row, column] == (not first)
    assert not horizontal_seen[row, column + 1 :].any()
    assert horizontal_seen[row, column - 1 if first else column - 2]


def test_a_pixelcnn_saved_before_the_architecture_field_loads_as_masked(tmp_path):
    """A `.keras` prior whose config has no pixelcnn_architecture (saved before it existed)."""
    prior = tiny_prior("masked", 0)
    prior.save(tmp_path / "new.keras")

    def without_architecture(config: dict) -> None:
        del config["config"]["hyperparameters"]["pixelcnn_architecture"]

    write_as_saved_before(tmp_path / "new.keras", tmp_path / "old.keras", without_architecture)
    loaded = keras.saving.load_model(tmp_path / "old.keras")
    assert loaded.hyperparameters.pixelcnn_architecture == "masked"
    code_maps = np.random.default_rng(12).integers(0, CODES, (2, MAP_SIZE, MAP_SIZE))
    np.testing.assert_array_equal(loaded(code_maps), prior(code_maps))


def test_pixelcnn_save_and_load_give_identical_logits(tmp_path, pixelcnn):
    code_maps = np.random.default_rng(10).integers(0, CODES, (4, MAP_SIZE, MAP_SIZE))
    path = tmp_path / "pixelcnn.keras"
    pixelcnn.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PixelCNN) and loaded.hyperparameters == pixelcnn.hyperparameters
    np.testing.assert_array_equal(loaded(code_maps), pixelcnn(code_maps))
    np.testing.assert_array_equal(
        sample_code_maps(loaded, 2, seed=1), sample_code_maps(pixelcnn, 2, seed=1)
    )


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def test_sampler_shape_range_and_seeds(pixelcnn):
    first = sample_code_maps(pixelcnn, 3, seed=7)
    assert first.shape == (3, MAP_SIZE, MAP_SIZE) and first.dtype == np.int32
    assert first.min() >= 0 and first.max() < CODES
    assert len(np.unique(first)) > 1
    np.testing.assert_array_equal(sample_code_maps(pixelcnn, 3, seed=7), first)
    assert not np.array_equal(sample_code_maps(pixelcnn, 3, seed=8), first)
    sample_code_maps(pixelcnn, 5, temperature=0.5, seed=9)
    filtered = sample_code_maps(pixelcnn, 3, seed=7, top_k=3, top_p=0.8)
    np.testing.assert_array_equal(
        sample_code_maps(pixelcnn, 3, seed=7, top_k=3, top_p=0.8), filtered
    )
    sample_code_maps(pixelcnn, 3, seed=7, top_k=5)
    sample_code_maps(pixelcnn, 3, seed=7, top_p=0.5)
    # one compiled sampler per number of maps, unguided: one pass (the fixture's prior serves
    # other tests too), each traced once for every setting
    compiled = _SAMPLERS[pixelcnn]._compiled
    assert {(3, 1), (5, 1)} <= set(compiled)
    assert all(function.experimental_get_tracing_count() == 1 for function in compiled.values())


def inverse_cdf(noise: np.ndarray, logits) -> np.ndarray:
    """The codes [N] at which the cumulative softmax(logits [N, K]) passes noise [N]."""
    logits = np.asarray(logits, dtype="float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    cumulative = np.cumsum(probabilities / probabilities.sum(-1, keepdims=True), axis=-1)
    return np.minimum((cumulative < noise[:, None]).sum(-1), CODES - 1).astype("int32")


@pytest.mark.parametrize("architecture", ["masked", "gated"])
def test_cached_draws_equal_a_full_network_reference(architecture):
    """The cached scan draws what a slow loop draws that runs the whole network on the partial
    maps at every position, from the same logits and the same uniform noise."""
    prior = tiny_prior(architecture, 0)
    count, positions = 3, MAP_SIZE * MAP_SIZE
    noise = np.random.default_rng(13).uniform(size=(positions, count))
    reference = np.zeros((count, MAP_SIZE, MAP_SIZE), "int32")
    for position in range(positions):
        row, column = divmod(position, MAP_SIZE)
        logits = np.asarray(prior(reference))[:, row, column]
        reference[:, row, column] = inverse_cdf(noise[position], logits)

    def draw(position, logits):  # eager: tf.while_loop runs as a Python loop
        return inverse_cdf(noise[int(position)], logits)

    features = unknown_condition_features(prior, count)
    np.testing.assert_array_equal(raster_scan(prior)(count, draw, features), reference)
    assert len(np.unique(reference)) > 1


def greedy_maps(prior: PixelCNN, count: int) -> np.ndarray:
    features = unknown_condition_features(prior, count)
    return raster_scan(prior)(
        count, lambda position, logits: np.argmax(logits, -1).astype("int32"), features
    )


@pytest.mark.parametrize("architecture", ["masked", "gated"])
def test_top_1_and_a_tiny_nucleus_are_greedy_decoding(architecture):
    prior = tiny_prior(architecture, 8)
    # A random bias breaks the ties of the untrained prior's exactly zero logits at (0, 0),
    # which top-1 keeps all of.
    bias = np.random.default_rng(14).normal(size=CODES).astype("float32")
    prior.network.get_layer("logits").bias.assign(bias)
    greedy = greedy_maps(prior, 4)
    for seed in (0, 1):
        np.testing.assert_array_equal(sample_code_maps(prior, 4, seed=seed, top_k=1), greedy)
        np.testing.assert_array_equal(sample_code_maps(prior, 4, seed=seed, top_p=1e-6), greedy)
    assert not np.array_equal(sample_code_maps(prior, 4, seed=0), greedy)


def constant_prior(probabilities) -> PixelCNN:
    """A gated prior whose logits are log(`probabilities`) at every position of every map."""
    prior = tiny_prior("gated", 0)
    for weight in prior.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    prior.network.get_layer("logits").bias.assign(np.log(probabilities).astype("float32"))
    return prior


def test_top_k_and_nucleus_draw_only_the_kept_codes():
    probabilities = np.array([0.02, 0.3, 0.03, 0.4, 0.05, 0.1, 0.06, 0.04])
    prior = constant_prior(probabilities)
    drawn = np.unique(sample_code_maps(prior, 16, seed=0))
    assert len(drawn) == CODES  # without filtering every code turns up in 1024 draws
    kept = {2: {3, 1}, 3: {3, 1, 5}}
    for top_k, codes in kept.items():
        assert set(np.unique(sample_code_maps(prior, 16, seed=1, top_k=top_k))) == codes
    # Sorted: 0.4, 0.3, 0.1, 0.06, ...: 0.4 + 0.3 < 0.75 <= 0.4 + 0.3 + 0.1.
    nucleus = {0.35: {3}, 0.65: {3, 1}, 0.75: {3, 1, 5}, 0.85: {3, 1, 5, 6}}
    for top_p, codes in nucleus.items():
        assert set(np.unique(sample_code_maps(prior, 16, seed=2, top_p=top_p))) == codes
    both = sample_code_maps(prior, 16, seed=3, top_k=2, top_p=0.99)
    assert set(np.unique(both)) == {3, 1}
    share = np.mean(sample_code_maps(prior, 16, seed=4, top_k=2) == 3)
    assert abs(share - 0.4 / 0.7) < 0.05  # renormalised over the kept codes


def test_sampler_rejects_bad_temperature_and_count(pixelcnn):
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            sample_code_maps(pixelcnn, 2, temperature=temperature)
    with pytest.raises(ValueError, match="count"):
        sample_code_maps(pixelcnn, 0)
    for top_k in (0, CODES + 1):
        with pytest.raises(ValueError, match="top_k"):
            sample_code_maps(pixelcnn, 2, top_k=top_k)
    with pytest.raises(ValueError, match="top_p"):
        sample_code_maps(pixelcnn, 2, top_p=0.0)


@pytest.mark.parametrize("embedding_dim", [0, 8])
def test_prior_trained_on_constant_maps_samples_constant_maps(embedding_dim):
    keras.utils.set_random_seed(0)
    prior = build_pixelcnn(TINY.replace(pixelcnn_embedding_dim=embedding_dim))
    constants = np.array([2, 6] * 32)
    code_maps = np.broadcast_to(constants[:, None, None], (64, MAP_SIZE, MAP_SIZE)).copy()
    prior.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    prior.fit(code_maps, code_maps, batch_size=16, epochs=15, verbose=0)

    samples = sample_code_maps(prior, 8, seed=0)
    majority_code = [np.bincount(sample.ravel(), minlength=CODES).argmax() for sample in samples]
    share_of_majority = [
        np.mean(sample == code) for sample, code in zip(samples, majority_code, strict=True)
    ]
    assert set(majority_code) <= {2, 6}
    assert np.mean(share_of_majority) > 0.9


def test_pixelcnn_reports_the_mean_cross_entropy_of_code_maps_alone():
    keras.utils.set_random_seed(0)
    prior = build_pixelcnn(TINY)
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    code_maps = np.random.default_rng(3).integers(0, CODES, (10, MAP_SIZE, MAP_SIZE))
    logits = prior.predict(code_maps, verbose=0).astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    chosen = np.take_along_axis(log_softmax, code_maps[..., None], axis=-1)
    evaluation = prior.evaluate(code_maps, batch_size=10, verbose=0, return_dict=True)
    assert set(evaluation) == {"loss", "accuracy"}
    np.testing.assert_allclose(evaluation["loss"], -chosen.mean(), rtol=1e-5)
    hits = logits.argmax(axis=-1) == code_maps
    np.testing.assert_allclose(evaluation["accuracy"], hits.mean(), rtol=1e-6)
    history = prior.fit(code_maps, batch_size=5, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


def test_models_take_an_empty_batch(vqvae, pixelcnn):
    """A replica gets one when the last batch has fewer rows than there are replicas."""
    assert vqvae(np.zeros((0, 32, 32, 1), "float32")).shape == (0, 32, 32, 1)
    assert pixelcnn(np.zeros((0, MAP_SIZE, MAP_SIZE), "int32")).shape == (0, 8, 8, CODES)


def test_saved_models_name_their_classes_as_earlier_versions_did(tmp_path, vqvae, pixelcnn):
    """`.keras` files find a class by its registered name, "brain_vqvae>ClassName": the names
    files saved before the model moved into the brain_vqvae package carry, and must keep."""
    for model, name in ((vqvae, "VQVAE"), (pixelcnn, "PixelCNN")):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        assert config["class_name"] == name
        assert config["registered_name"] == f"brain_vqvae>{name}"
    for layer_class in (VectorQuantizer, MaskedConv2D, GatedLayer, VQVAE, PixelCNN):
        expected = f"brain_vqvae>{layer_class.__name__}"
        assert keras.saving.get_registered_name(layer_class) == expected
        assert keras.saving.get_registered_object(expected) is layer_class


def test_the_vqvae_keeps_its_variable_order_so_saved_optimizer_states_still_load(
    tiny_hyperparameters,
):
    """Keras matches a saved optimizer's slots to the model's variables by their order; runs
    saved before the VAE baseline had encoder, codebook, decoder, so that order must stay."""
    vqvae = modules.build_vqvae(tiny_hyperparameters, data_variance=0.05)
    variables = vqvae.trainable_variables
    encoder, decoder = (
        {id(variable) for variable in part.trainable_variables}
        for part in (vqvae.encoder, vqvae.decoder)
    )
    codebook = next(
        index for index, variable in enumerate(variables) if "codebook" in variable.path
    )
    assert all(id(variable) in encoder for variable in variables[:codebook])
    assert len(variables[codebook + 1 :]) == len(decoder)
    assert all(id(variable) in decoder for variable in variables[codebook + 1 :])
