"""The adversarial stage's model: which weights each term trains, that only the decoder and the
discriminator move, that the discriminator learns, and that a saved model reloads the same."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import modules
from brain_vqvae.model.adversarial import AdversarialDecoder, build_adversarial_decoder


@pytest.fixture
def images():
    """16 slices (16, 32, 32, 1) in [0, 1]: a bright disc of random size on black."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:32, 0:32] - 15.5
    radii = rng.uniform(8, 14, size=(16, 1, 1))
    discs = (np.hypot(rows, columns)[None] < radii).astype(np.float32)
    return (0.8 * discs + 0.05 * rng.random((16, 32, 32), dtype=np.float32))[..., None]


def ring_mean_power(images: tf.Tensor) -> tf.Tensor:
    """The radial power spectrum written out: [N, S, S, 1] -> [N, R], the mean of
    |FFT(x - mean x)|^2 / S^4 over each ring of integer frequencies at rounded radius r, one
    boolean mask per ring, r = 1 .. round(S / sqrt 2)."""
    size = images.shape[1]
    pixels = images[..., 0] - tf.reduce_mean(images, axis=(1, 2, 3))[:, None, None]
    power = tf.abs(tf.signal.fft2d(tf.cast(pixels, tf.complex64))) ** 2 / size**4
    index = np.arange(size)
    signed = np.where(index < size // 2, index, index - size)
    radius = np.rint(np.sqrt(signed[:, None] ** 2 + signed[None, :] ** 2))
    rings = [
        tf.reduce_mean(tf.boolean_mask(power, radius == r, axis=1), axis=1)
        for r in range(1, round(size / np.sqrt(2)) + 1)
    ]
    return tf.stack(rings, axis=1)


@pytest.fixture
def adversarial(tiny_hyperparameters, images):
    keras.utils.set_random_seed(0)
    settings = tiny_hyperparameters.replace(adversarial_weight=0.5, spectral_weight=0.2)
    vqvae = modules.build_vqvae(settings, float(images.var()))
    return build_adversarial_decoder(vqvae, settings), vqvae


def test_it_starts_as_the_vqvae_and_trains_only_the_decoder_and_the_discriminator(
    adversarial, images
):
    model, vqvae = adversarial
    np.testing.assert_allclose(model(images), vqvae(images), atol=1e-6)
    trainable = {id(variable) for variable in model.trainable_variables}
    decoder = {id(variable) for variable in model.vqvae.decoder.trainable_variables}
    discriminator = {id(variable) for variable in model.discriminator.trainable_variables}
    assert trainable == decoder | discriminator
    assert model.discriminator(images).shape == (16, 4, 4, 1)  # one logit per patch


def test_the_discriminator_learns_the_hinge_loss_and_the_decoder_the_weighted_judgement(
    adversarial, images
):
    """The one loss's gradient with respect to D's weights is that of the hinge loss alone,
    and with respect to G's that of L_rec + mu L_spec + lambda mean softplus(-D(G(z))), each
    computed here from its definition."""
    model, _ = adversarial
    decoder = model.vqvae.decoder.trainable_variables
    discriminator = model.discriminator.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = model.step_loss(images, training=True)
        raw = model.vqvae.decoder(model.vqvae.quantizer.lookup(model.vqvae.code_indices(images)))
        decoded = tf.clip_by_value(raw, 0.0, 1.0)
        hinge = tf.reduce_mean(tf.nn.relu(1.0 - model.discriminator(images))) + tf.reduce_mean(
            tf.nn.relu(1.0 + model.discriminator(decoded))
        )
        judged = tf.reduce_mean(tf.nn.softplus(-model.discriminator(decoded)))
        floor = 1e-12
        spectral = tf.reduce_mean(
            tf.nn.relu(
                tf.math.log(tf.maximum(ring_mean_power(decoded), floor))
                - tf.math.log(tf.maximum(ring_mean_power(tf.constant(images)), floor))
            )
        ) / np.log(10.0)
        generator = model.vqvae.reconstruction_loss(images, raw) + 0.2 * spectral + 0.5 * judged
    for ours, expected in zip(
        tape.gradient(loss, discriminator), tape.gradient(hinge, discriminator), strict=True
    ):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    for ours, expected in zip(
        tape.gradient(loss, decoder), tape.gradient(generator, decoder), strict=True
    ):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert float(loss) == pytest.approx(
        float(model.vqvae.reconstruction_loss(images, raw)) + 0.2 * float(spectral) + float(hinge),
        rel=1e-5,
    )


def test_fitting_moves_the_decoder_keeps_the_codes_and_the_discriminator_learns(
    adversarial, images
):
    model, vqvae = adversarial
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    history = model.fit(images, batch_size=8, epochs=15, verbose=0).history
    assert set(history) == {
        "loss",
        "reconstruction_loss",
        "spectral_loss",
        "generator_loss",
        "discriminator_loss",
        "discriminator_accuracy",
        "ssim",
    }
    # An untrained decoder's output is easy to tell from the discs: the discriminator learns,
    # and the decoded discs' excess of power over the real ones' falls (over the second half
    # of the epochs: it comes back for an epoch at a time as the decoder answers the
    # discriminator, on some machines in the last one).
    spectral = history["spectral_loss"]
    assert np.mean(spectral[len(spectral) // 2 :]) < 0.7 * np.max(spectral[:3]), spectral
    losses = history["discriminator_loss"]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert np.mean(history["discriminator_accuracy"][-3:]) > 0.75
    for frozen, start in (
        (model.vqvae.encoder, vqvae.encoder),
        (model.vqvae.quantizer, vqvae.quantizer),
    ):
        for after, before in zip(frozen.weights, start.weights, strict=True):
            np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(model.vqvae.code_indices(images), vqvae.code_indices(images))
    moved = [
        not np.array_equal(after, before)
        for after, before in zip(model.vqvae.decoder.weights, vqvae.decoder.weights, strict=True)
    ]
    assert all(moved)


def test_a_saved_model_reloads_with_the_same_outputs_and_frozen_codes(
    adversarial, images, tmp_path
):
    model, _ = adversarial
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "adversarial.keras")
    loaded = keras.saving.load_model(tmp_path / "adversarial.keras")
    assert isinstance(loaded, AdversarialDecoder)
    assert loaded.hyperparameters == model.hyperparameters
    maps = np.random.default_rng(1).integers(0, 8, size=(4, 8, 8)).astype("int32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded.vqvae.decode_indices(maps)),
        ops.convert_to_numpy(model.vqvae.decode_indices(maps)),
    )
    np.testing.assert_array_equal(loaded.discriminator(images), model.discriminator(images))
    assert len(loaded.trainable_variables) == len(model.trainable_variables)
    # Its saved optimizer continues.
    loaded.fit(images, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 4
