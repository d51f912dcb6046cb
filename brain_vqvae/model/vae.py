"""The classical baseline: a Gaussian VAE (Kingma and Welling 2014, "Auto-Encoding Variational
Bayes") with the VQ-VAE's own encoder and decoder, sampled from N(0, I).

For a slice x of shape [S, S, 1] on the [0, 1] scale (the card: S = 128, h = 8, d = 16)

    encoder      z_e = E(x - 1/2)                                   [h, h, d]
    posterior    mu = W_mu z_e + b_mu,  log sigma^2 = W_s z_e + b_s [h, h, d]  (1x1 convolutions)
                 q(z | x) = N(mu, diag(sigma^2))
    sample       z = mu + sigma * eps,  eps ~ N(0, I)               [h, h, d]  (reparameterised)
    decoder      x_hat = D(z) + 1/2                                 [S, S, 1]
    prior        p(z) = N(0, I) over the whole h x h x d map

trained on

    L = L_rec(x, x_hat) + vae_kl_weight * KL(q(z | x) || N(0, I)) / (h h d),
    KL(q(z | x) || N(0, I)) = 1/2 sum over the h h d elements of (mu^2 + sigma^2 - 1 - log sigma^2),

with L_rec the VQ-VAE's reconstruction loss (`Autoencoder.reconstruction_loss`, its MSE warm-up
included). The KL term is averaged per latent element, as L_rec is a mean over pixels, so the
weight does not change with the latent map's size; the KL of one image in nats is that mean
times h h d. A larger weight is the beta-VAE trade-off (Higgins et al. 2017): posteriors closer to
the prior, so decoded prior samples look more like the data, and blurrier reconstructions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from brain_vqvae.model.distribute import apply_to_rows
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.vqvae import Autoencoder
from hyperparameters import Hyperparameters, check_sample_count, check_temperature

VAE_METRICS = ("loss", "reconstruction_loss", "kl_loss", "ssim", "psnr")
LOG_VARIANCE_RANGE = (-30.0, 20.0)  # log sigma^2 is clipped here, so exp never overflows


def kl_divergence(mean, log_variance):
    """KL(N(mu, diag(sigma^2)) || N(0, I)) per image, averaged over its latent elements:
    [N, h, h, d] mu and log sigma^2 -> [N], 1/2 mean(mu^2 + sigma^2 - 1 - log sigma^2)."""
    terms = ops.square(mean) + ops.exp(log_variance) - 1.0 - log_variance
    return 0.5 * ops.mean(ops.reshape(terms, (ops.shape(terms)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GaussianVAE(Autoencoder):
    """Encoder -> diagonal Gaussian posterior -> decoder, trained by its own `train_step`; the
    maths is in the module docstring.

    `GaussianVAE(hyperparameters, data_variance)` takes the same config as `VQVAE`: the dict of
    `Hyperparameters.to_dict()` (encoder and decoder widths, `latent_dim`, `vae_kl_weight`,
    the reconstruction loss) and the pixel variance of the training images on the [0, 1] scale.

    `model(images)` maps [N, S, S, 1] in [0, 1] to the reconstructions decoded from the posterior
    mean, clipped to [0, 1]. `posterior(images)` gives mu and log sigma^2 [N, h, h, latent_dim];
    `decode(latents)` maps [N, h, h, latent_dim] to images clipped to [0, 1]; `sample(count,
    seed, temperature)` decodes `prior_latents`. `fit` and `evaluate` report the epoch means of
    loss, reconstruction_loss, kl_loss (the weighted KL's mean per latent element, unweighted),
    and ssim and psnr of the clipped reconstructions. `train_step` and `test_step` decode
    z = mu + sigma * eps, a one-sample estimate of the loss, with eps drawn statelessly from
    (seed, optimizer step, replica), so a run is reproducible, a resumed run draws what it would
    have drawn and a validation pass is deterministic; their ssim and psnr are those of the
    sampled reconstructions. `call` (and so the reported test scores and `ValidationSSIM`)
    decodes mu. The two differ: the decoder's first layer rectifies the unit-variance noise of
    the latent elements the posterior leaves at the prior, which it learns to expect, so D(mu) is
    not the typical D(z); early in training it scores well below it. Validating on D(mu) would
    choose the best checkpoint on that gap rather than on the loss being minimised. Replica
    weighting under `tf.distribute` is `VQVAE`'s (`Autoencoder`).
    """

    def __init__(self, hyperparameters: dict, data_variance: float, **kwargs):
        super().__init__(hyperparameters, data_variance, VAE_METRICS, **kwargs)
        latent_dim = self.hyperparameters.latent_dim
        self.posterior_mean = keras.layers.Conv2D(latent_dim, 1, name="posterior_mean")
        self.posterior_log_variance = keras.layers.Conv2D(
            latent_dim, 1, name="posterior_log_variance"
        )
        self.posterior_mean.build(self.encoder.output.shape)
        self.posterior_log_variance.build(self.encoder.output.shape)
        self.built = True  # every weight exists once the parts above are made

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, h, latent_dim) of one latent map."""
        size = self.hyperparameters.code_map_size
        return (size, size, self.hyperparameters.latent_dim)

    def call(self, images, training=False):
        return self.decode(self.posterior(images)[0])

    def posterior(self, images, training=False):
        """q(z | x): [N, S, S, 1] in [0, 1] -> mu and log sigma^2, each [N, h, h, latent_dim]."""
        latents = apply_to_rows(self.encoder, images, training=training)
        log_variance = ops.clip(self.posterior_log_variance(latents), *LOG_VARIANCE_RANGE)
        return self.posterior_mean(latents), log_variance

    def decode(self, latents):
        """Images from latent maps: [N, h, h, latent_dim] -> [N, S, S, 1] clipped to [0, 1]."""
        return ops.clip(self.decoder(latents), 0.0, 1.0)

    def prior_latents(self, count: int, temperature: float = 1.0, seed: int | None = None):
        """`count` latent maps z = T eps, eps ~ N(0, I): [count, h, h, latent_dim] float32.

        The temperature T scales the prior's standard deviation (T < 1 draws nearer the mode,
        the mean image, T > 1 further out), the usual temperature of a Gaussian prior. The same
        `seed` gives the same maps (NumPy's default generator); None draws fresh ones."""
        check_sample_count(count)
        check_temperature(temperature)
        noise = np.random.default_rng(seed).standard_normal((count, *self.latent_shape))
        return (temperature * noise).astype(np.float32)

    def sample(self, count: int, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        """`count` new images [count, S, S, 1] in [0, 1], decoded from `prior_latents`."""
        latents = self.prior_latents(count, temperature, seed)
        return decode_latent_maps(self, latents, self.hyperparameters.inference_batch_size)

    def _forward(self, images, training: bool) -> dict:
        """The loss's forward pass: z = mu + sigma * eps, eps drawn from (seed, step, replica)."""
        mean, log_variance = self.posterior(images, training=training)
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        step = ops.cast(self.optimizer.iterations, "int32")
        seed = tf.random.experimental.stateless_fold_in(
            tf.stack([self.hyperparameters.seed, step]), replica
        )
        noise = tf.random.stateless_normal(ops.shape(mean), seed=seed)
        latents = mean + ops.exp(0.5 * log_variance) * noise
        reconstructions = apply_to_rows(self.decoder, latents, training=training)
        return {"mean": mean, "log_variance": log_variance, "reconstructions": reconstructions}

    def _loss_terms(self, images, outputs: dict, step=None) -> dict:
        reconstruction_loss = self.reconstruction_loss(images, outputs["reconstructions"], step)
        kl_loss = ops.mean(kl_divergence(outputs["mean"], outputs["log_variance"]))
        return {
            "loss": reconstruction_loss + self.hyperparameters.vae_kl_weight * kl_loss,
            "reconstruction_loss": reconstruction_loss,
            "kl_loss": kl_loss,
        }


def decode_latent_maps(vae: GaussianVAE, latents: np.ndarray, batch_size: int) -> np.ndarray:
    """Decode [N, h, h, latent_dim] latent maps `batch_size` at a time: [N, S, S, 1] float32
    in [0, 1]."""
    chunks = [
        ops.convert_to_numpy(vae.decode(latents[start : start + batch_size]))
        for start in range(0, len(latents), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)


def posterior_kl(vae: GaussianVAE, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`kl_divergence` of each image's posterior, `batch_size` images at a time: [N, S, S, 1]
    in [0, 1] -> [N] nats per latent element."""
    chunks = [
        ops.convert_to_numpy(kl_divergence(*vae.posterior(images[start : start + batch_size])))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def build_vae(hyperparameters: Hyperparameters, data_variance: float) -> GaussianVAE:
    """A `GaussianVAE` for `hyperparameters`, its weights built by a call on a dummy batch;
    `data_variance` as for `build_vqvae`."""
    model = GaussianVAE(hyperparameters.to_dict(), data_variance, name="vae")
    size = hyperparameters.image_size
    model(np.zeros((1, size, size, 1), dtype="float32"))
    return model
