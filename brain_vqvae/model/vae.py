"""The classical baseline: a Gaussian VAE (Kingma and Welling 2014, "Auto-Encoding Variational
Bayes") with the VQ-VAE's own encoder and decoder and one latent vector per image between them,
sampled from N(0, I).

For a slice x of shape [S, S, 1] on the [0, 1] scale (the card: S = 128, h = 8, c = latent_dim
= 16, d = vae_latent_dim = 128)

    encoder      z_e = flatten(E(x - 1/2))                          [h h c]
    posterior    (mu, log sigma^2) = W_q z_e + b_q                  [d], [d]  (one dense layer)
                 q(z | x) = N(mu, diag(sigma^2))
    sample       z = mu + sigma * eps,  eps ~ N(0, I)               [d]  (reparameterised)
    decoder      x_hat = D(reshape(W_p z + b_p, [h, h, c])) + 1/2   [S, S, 1]  (dense, then D)
    prior        p(z) = N(0, I_d)

trained on

    L = L_rec(x, x_hat) + vae_kl_weight * KL(q(z | x) || N(0, I)) / d,
    KL(q(z | x) || N(0, I)) = 1/2 sum over the d elements of (mu^2 + sigma^2 - 1 - log sigma^2),

with L_rec the VQ-VAE's reconstruction loss (`Autoencoder.reconstruction_loss`, its MSE warm-up
included). The KL term is averaged per latent element, as L_rec is a mean over pixels, so the
weight does not change with d; the KL of one image in nats is that mean times d. A larger
weight is the beta-VAE trade-off (Higgins et al. 2017): posteriors closer to the prior, so
decoded prior samples look more like the data, and blurrier reconstructions. One vector per
image, rather than a Gaussian at each of the h x h positions of the VQ-VAE's map, is what lets
a draw from N(0, I) decode to one whole brain-shaped slice: the dense layer spreads every
element over the whole map, where independent draws at each position have no global shape.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from brain_vqvae.model.distribute import TENSORFLOW, apply_to_rows, replica_id
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.vqvae import Autoencoder
from hyperparameters import Hyperparameters, check_sample_count, check_temperature

VAE_METRICS = (
    "loss",
    "reconstruction_loss",
    "kl_loss",
    "ssim",
    "psnr",
    "above_target",
    "ssim_p05",
)
LOG_VARIANCE_RANGE = (-30.0, 20.0)  # log sigma^2 is clipped here, so exp never overflows


def kl_divergence(mean, log_variance):
    """KL(N(mu, diag(sigma^2)) || N(0, I)) per image, averaged over its latent elements:
    [N, ...] mu and log sigma^2 ([N, d] here) -> [N], 1/2 mean(mu^2 + sigma^2 - 1 - log sigma^2)."""
    terms = ops.square(mean) + ops.exp(log_variance) - 1.0 - log_variance
    return 0.5 * ops.mean(ops.reshape(terms, (ops.shape(terms)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GaussianVAE(Autoencoder):
    """Encoder -> dense -> diagonal Gaussian posterior over a d-vector -> dense -> decoder,
    trained by its own training step; the maths is in the module docstring.

    `GaussianVAE(hyperparameters, data_variance)` takes the same config as `VQVAE`: the dict of
    `Hyperparameters.to_dict()` (encoder and decoder widths, `latent_dim`, `vae_latent_dim`,
    `vae_kl_weight`, the reconstruction loss) and the pixel variance of the training images on
    the [0, 1] scale.

    `model(images)` maps [N, S, S, 1] in [0, 1] to the reconstructions decoded from the posterior
    mean, clipped to [0, 1]; it draws nothing, so it is deterministic. `posterior(images)` gives
    mu and log sigma^2 [N, d]; `decode(latents)` maps [N, d] to images clipped to [0, 1];
    `sample(count, seed, temperature)` decodes `prior_latents`. `fit` and `evaluate` report the
    epoch means of loss, reconstruction_loss, kl_loss (the KL's mean per latent element,
    unweighted), and the SSIM (mean, share at or above `ssim_target`, 5th percentile) and PSNR
    of the clipped reconstructions. Its training and validation steps decode
    z = mu + sigma * eps, a one-sample estimate of the loss, with eps drawn statelessly from
    (seed, optimizer step, replica), so a run is reproducible, a resumed run draws what it would
    have drawn and a validation pass is deterministic; their SSIM and PSNR are those of the
    sampled reconstructions. `call` (and so the reported test scores) decodes mu, the usual
    point reconstruction of a VAE. The two can differ a lot: the dense layer and the decoder's
    first ReLU learn the unit-variance noise of the elements the posterior leaves at the prior,
    so D(mu) is not the typical D(z), and at large KL weights
    D(mu) scores far below D(z) (BENCHMARKS.md, "Generation"). The validation loss, not D(mu),
    chooses the best checkpoint, as it is the loss being minimised. Replica weighting under
    `tf.distribute` is `VQVAE`'s (`Autoencoder`).
    """

    def __init__(self, hyperparameters: dict, data_variance: float, **kwargs):
        super().__init__(hyperparameters, data_variance, VAE_METRICS, **kwargs)
        vector_size = self.hyperparameters.vae_latent_dim
        map_elements = int(np.prod(self.map_shape))
        self.posterior_dense = keras.layers.Dense(2 * vector_size, name="posterior")
        self.latent_projection = keras.layers.Dense(map_elements, name="latent_projection")
        self.posterior_dense.build((None, map_elements))
        self.latent_projection.build((None, vector_size))
        self.built = True  # every weight exists once the parts above are made

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(h, h, latent_dim): the encoder's output and the decoder's input."""
        size = self.hyperparameters.code_map_size
        return (size, size, self.hyperparameters.latent_dim)

    @property
    def latent_shape(self) -> tuple[int]:
        """(d,) of one latent vector, d = `vae_latent_dim`."""
        return (self.hyperparameters.vae_latent_dim,)

    def call(self, images, training=False):
        return self.decode(self.posterior(images)[0])

    def posterior(self, images, training=False):
        """q(z | x): [N, S, S, 1] in [0, 1] -> mu and log sigma^2, each [N, d]."""
        features = apply_to_rows(self.encoder, images, training=training)
        flat = ops.reshape(features, (ops.shape(features)[0], -1))
        mean, log_variance = ops.split(self.posterior_dense(flat), 2, axis=-1)
        return mean, ops.clip(log_variance, *LOG_VARIANCE_RANGE)

    def decoder_inputs(self, latents):
        """The decoder's input maps of latent vectors: [N, d] -> [N, h, h, latent_dim]."""
        return ops.reshape(self.latent_projection(latents), (-1, *self.map_shape))

    def decode(self, latents, training=False):
        """Images from latent vectors: [N, d] -> [N, S, S, 1] clipped to [0, 1]."""
        maps = self.decoder_inputs(ops.convert_to_tensor(latents, "float32"))
        return ops.clip(apply_to_rows(self.decoder, maps, training=training), 0.0, 1.0)

    def prior_latents(self, count: int, temperature: float = 1.0, seed: int | None = None):
        """`count` latent vectors z = T eps, eps ~ N(0, I): [count, d] float32.

        The temperature T scales the prior's standard deviation (T < 1 draws nearer the mode,
        T > 1 further out), the usual temperature of a Gaussian prior. The same `seed` gives
        the same vectors (NumPy's default generator); None draws fresh ones."""
        check_sample_count(count)
        check_temperature(temperature)
        noise = np.random.default_rng(seed).standard_normal((count, *self.latent_shape))
        return (temperature * noise).astype(np.float32)

    def sample(self, count: int, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        """`count` new images [count, S, S, 1] in [0, 1], decoded from `prior_latents`."""
        latents = self.prior_latents(count, temperature, seed)
        return decode_latents(self, latents, self.hyperparameters.inference_batch_size)

    def _forward(self, images, training: bool) -> dict:
        """The loss's forward pass: z = mu + sigma * eps, eps drawn from (seed, step, replica)."""
        mean, log_variance = self.posterior(images, training=training)
        step = ops.cast(self.optimizer.iterations, "int32")
        noise = stateless_normal(ops.shape(mean), self.hyperparameters.seed, step, replica_id())
        latents = mean + ops.exp(0.5 * log_variance) * noise
        maps = self.decoder_inputs(latents)
        reconstructions = apply_to_rows(self.decoder, maps, training=training)
        return {"mean": mean, "log_variance": log_variance, "reconstructions": reconstructions}

    def _loss_terms(self, images, outputs: dict, step=None) -> dict:
        reconstruction_loss = self.reconstruction_loss(
            images, outputs["reconstructions"], step, outputs["ssim"]
        )
        kl_loss = ops.mean(kl_divergence(outputs["mean"], outputs["log_variance"]))
        return {
            "loss": reconstruction_loss + self.hyperparameters.vae_kl_weight * kl_loss,
            "reconstruction_loss": reconstruction_loss,
            "kl_loss": kl_loss,
        }


def stateless_normal(shape, seed: int, step, replica):
    """N(0, 1) draws of `shape` that depend only on (`seed`, `step`, `replica`), the last two
    scalar int32 tensors or ints: TensorFlow's stateless normal of the seed pair (seed, step)
    folded with the replica, or on JAX, whose step has a single replica, of the key of `seed`
    folded with the step."""
    if TENSORFLOW:
        import tensorflow as tf

        pair = tf.random.experimental.stateless_fold_in(tf.stack([seed, step]), replica)
        return tf.random.stateless_normal(shape, seed=pair)
    import jax

    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.normal(key, shape)


def decode_latents(vae: GaussianVAE, latents: np.ndarray, batch_size: int) -> np.ndarray:
    """Decode [N, d] latent vectors `batch_size` at a time: [N, S, S, 1] float32 in [0, 1]."""
    chunks = [
        ops.convert_to_numpy(vae.decode(latents[start : start + batch_size]))
        for start in range(0, len(latents), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)


def posteriors(vae: GaussianVAE, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """q(z | x) of each image, `batch_size` images at a time: [N, S, S, 1] in [0, 1] -> mu and
    log sigma^2, each [N, d] float32."""
    chunks = [
        [ops.convert_to_numpy(value) for value in vae.posterior(images[start : start + batch_size])]
        for start in range(0, len(images), batch_size)
    ]
    return tuple(np.concatenate(parts).astype(np.float32) for parts in zip(*chunks, strict=True))


def posterior_draw_reconstructions(
    vae: GaussianVAE, images: np.ndarray, batch_size: int, seed: int
) -> np.ndarray:
    """Reconstructions decoded from one draw of each image's posterior, as the training and
    validation steps score them (`call` decodes mu instead): z = mu + sigma * eps, eps ~ N(0, I)
    from NumPy's generator of `seed`, `batch_size` images at a time: [N, S, S, 1] in [0, 1] ->
    [N, S, S, 1] float32 clipped to [0, 1]."""
    mean, log_variance = posteriors(vae, images, batch_size)
    noise = np.random.default_rng(seed).standard_normal(mean.shape)
    latents = (mean + np.exp(0.5 * log_variance) * noise).astype(np.float32)
    return decode_latents(vae, latents, batch_size)


def posterior_kl(vae: GaussianVAE, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`kl_divergence` of each image's posterior, `batch_size` images at a time: [N, S, S, 1]
    in [0, 1] -> [N] nats per latent element."""
    return ops.convert_to_numpy(kl_divergence(*posteriors(vae, images, batch_size)))


def build_vae(hyperparameters: Hyperparameters, data_variance: float) -> GaussianVAE:
    """A `GaussianVAE` for `hyperparameters`, its weights built by a call on a dummy batch;
    `data_variance` as for `build_vqvae`."""
    model = GaussianVAE(hyperparameters.to_dict(), data_variance, name="vae")
    size = hyperparameters.image_size
    model(np.zeros((1, size, size, 1), dtype="float32"))
    return model
