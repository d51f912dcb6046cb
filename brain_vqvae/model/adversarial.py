"""The adversarial stage: the VQ-VAE's decoder fine-tuned against a discriminator, so that the
code maps the prior draws decode into slices as sharp and varied as real ones. The encoder and
the codebook are frozen: every code keeps its meaning, so the prior trained on the codes and the
reconstruction scores of the run's own VQ-VAE (vqvae.keras, which this stage does not change)
stay valid.

Why: a decoder trained on SSIM + L1 alone draws each code map as the mean of the slices it
stands for, so drawn slices are smoother and more alike than real ones (BENCHMARKS.md, "A
decoder fine-tuned against a discriminator"). A discriminator D that tells real slices from
decoded ones puts back what the mean averages away (Esser et al. 2021, VQGAN).

`AdversarialDecoder(hyperparameters, data_variance)` holds a `VQVAE` (`vqvae`, its encoder and
quantizer frozen) and a PatchGAN discriminator (Isola et al. 2017: 4x4 convolutions of stride 2
and `DISCRIMINATOR_FILTERS` filters with LeakyReLU 0.2, then a 3x3 convolution to one logit per
patch: [N, S, S, 1] -> [N, S/8, S/8, 1]). For a batch x with code maps z = q(E(x)) and decoded
slices y = clip(G(z), 0, 1), its one training loss is

    L = L_rec(x, G(z)) + mu L_spec(x, y) + lambda [g(D(y)) - g(D(sg(y)))] + h(D(x), D(sg(y)))

with L_rec the VQ-VAE's reconstruction loss (SSIM + L1 for the presets), L_spec the mean over
the batch of `metrics.log_spectral_excess` of the radial power spectrum of y over that of x
(how many decades more power y holds than x, averaged over the spatial frequencies, where it
holds more) and mu = `spectral_weight`, g(l) = mean softplus(-l) the non-saturating generator
loss (Goodfellow et al. 2014), h(r, f) = mean relu(1 - r) + mean relu(1 + f) the hinge loss of
the discriminator (Lim and Ye 2017), sg the stop-gradient and lambda = `adversarial_weight`.
The spectral term is there because the discriminator alone teaches the decoder's stride-2
transposed convolutions to add power where real slices have none: a checkerboard of 2-pixel
period, strongest along the brain's edge (Odena et al. 2016; Durall et al. 2020 regularise
spectra for the same reason). Paired with the slice that was encoded, it asks each decoded
slice for no more power than the real one at any scale. It does not ask for as much: a
two-sided term (matching the spectrum) made the decoder invent the power of texture it cannot know
from the codes where the other terms look least, as a column of bright dots along the image's
edge, or, with the edge windowed out, as speckle along the midline. The decoder G sees D's
judgement only through g(D(y)), so its gradient is that of L_rec + mu L_spec + lambda g(D(y));
the two terms in brackets have the same value and depend on D alike, so their gradients with
respect to D cancel exactly, and D's is that of h alone. One loss and one optimizer (Adam,
whose steps are per weight) thus train both players at once, with the same
`steps.TrainingStepModel` step on TensorFlow and JAX: each step is a step of simultaneous
gradient descent, as most GAN code takes with two optimizers. The value of L is L_rec + mu
L_spec + h; `fit` reports loss, reconstruction_loss, spectral_loss (L_spec), generator_loss
(g(D(y))), discriminator_loss (h), discriminator_accuracy (the share of real patches scored
above 0 and decoded ones below, averaged) and ssim (of y against x).
"""

from __future__ import annotations

import keras
from keras import ops

from brain_vqvae.metrics import (
    log_spectral_excess,
    radial_power_spectra,
    structural_similarity,
)
from brain_vqvae.model.distribute import (
    apply_to_rows,
    batch_share,
    replica_sum,
    step_logs,
    weighted_by_share,
)
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.steps import TrainingStepModel
from brain_vqvae.model.vqvae import VQVAE
from hyperparameters import ADVERSARIAL_FIELDS, Hyperparameters

ADVERSARIAL_METRICS = (
    "loss",
    "reconstruction_loss",
    "spectral_loss",
    "generator_loss",
    "discriminator_loss",
    "discriminator_accuracy",
    "ssim",
)
DISCRIMINATOR_FILTERS = (32, 64, 128)
# The stage's Adam: beta_1 0.5, as GAN training commonly takes (Radford et al. 2016), at a
# constant learning rate, as it was measured (BENCHMARKS.md).
ADVERSARIAL_BETA_1 = 0.5
LEAKY_SLOPE = 0.2


def build_discriminator(image_size: int) -> keras.Model:
    """The PatchGAN discriminator (module docstring): [N, S, S, 1] in [0, 1] -> logits
    [N, S / 2**3, S / 2**3, 1], one per overlapping patch."""
    images = keras.Input((image_size, image_size, 1), name="slices")
    features = images
    for index, filters in enumerate(DISCRIMINATOR_FILTERS):
        features = keras.layers.Conv2D(
            filters, 4, strides=2, padding="same", name=f"discriminator_conv{index}"
        )(features)
        features = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"discriminator_relu{index}")(features)
    logits = keras.layers.Conv2D(1, 3, padding="same", name="discriminator_logits")(features)
    return keras.Model(images, logits, name="discriminator")


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class AdversarialDecoder(TrainingStepModel):
    """A `VQVAE` whose decoder alone trains, against a PatchGAN discriminator (module
    docstring). `AdversarialDecoder(hyperparameters, data_variance)` takes what the `VQVAE`
    takes, its whole config; `build_adversarial_decoder` starts it from a trained VQ-VAE.
    `vqvae` is the VQ-VAE that draws the run's sampled code maps (`decode_code_maps`)."""

    def __init__(self, hyperparameters: dict, data_variance: float, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = Hyperparameters.from_dict(hyperparameters)
        self.vqvae = VQVAE(hyperparameters, data_variance, name="vqvae")
        # The codes keep their meaning: only the decoder (and the discriminator) train.
        self.vqvae.encoder.trainable = False
        self.vqvae.quantizer.trainable = False
        self.discriminator = build_discriminator(self.hyperparameters.image_size)
        self.trackers = [keras.metrics.Mean(name=name) for name in ADVERSARIAL_METRICS]
        self.built = True

    @property
    def metrics(self) -> list:
        return self.trackers

    def call(self, images, training=False):
        """Reconstructions through the fine-tuned decoder: [N, S, S, 1] -> the same, in [0, 1]."""
        return self.vqvae.decode_indices(self.vqvae.code_indices(images))

    def step_loss(self, data, training: bool):
        """The loss L of the module docstring for one batch of images, each replica's mean
        weighted by its share of the global batch (`distribute`), and the values to report."""
        images = keras.utils.unpack_x_y_sample_weight(data)[0]
        share = batch_share(images)
        quantized = self.vqvae.quantizer.lookup(self.vqvae.code_indices(images))
        raw = apply_to_rows(self.vqvae.decoder, quantized, training=training)
        decoded = ops.clip(raw, 0.0, 1.0)
        ssim = structural_similarity(images, decoded)
        reconstruction_loss = self.vqvae.reconstruction_loss(images, raw, ssim=ssim)
        spectral_loss = ops.mean(
            log_spectral_excess(radial_power_spectra(decoded), radial_power_spectra(images))
        )
        generator_logits = apply_to_rows(self.discriminator, decoded)
        judged = apply_to_rows(
            self.discriminator, ops.concatenate([images, ops.stop_gradient(decoded)])
        )
        real_logits, decoded_logits = judged[: ops.shape(images)[0]], judged[ops.shape(images)[0] :]
        generator_loss = ops.mean(ops.softplus(-generator_logits))
        held_generator_loss = ops.mean(ops.softplus(-decoded_logits))
        discriminator_loss = ops.mean(ops.relu(1.0 - real_logits)) + ops.mean(
            ops.relu(1.0 + decoded_logits)
        )
        weight = self.hyperparameters.adversarial_weight
        loss = (
            reconstruction_loss
            + self.hyperparameters.spectral_weight * spectral_loss
            + weight * (generator_loss - held_generator_loss)
            + discriminator_loss
        )
        accuracy = 0.5 * (
            ops.mean(ops.cast(real_logits > 0.0, "float32"))
            + ops.mean(ops.cast(decoded_logits < 0.0, "float32"))
        )
        means = {
            "loss": loss,
            "reconstruction_loss": reconstruction_loss,
            "spectral_loss": spectral_loss,
            "generator_loss": generator_loss,
            "discriminator_loss": discriminator_loss,
            "discriminator_accuracy": accuracy,
            "ssim": ops.mean(ssim),
        }
        return weighted_by_share(loss, share), {"means": means, "share": share}

    def record(self, report: dict) -> dict:
        """Track the step's means, weighted by each replica's share and summed over them."""
        share = report["share"]
        for tracker in self.trackers:
            tracker.update_state(
                replica_sum(weighted_by_share(report["means"][tracker.name], share))
            )
        return step_logs({tracker.name: tracker.result() for tracker in self.trackers})

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters.to_dict(),
            "data_variance": self.vqvae.data_variance,
        }


def build_adversarial_decoder(vqvae: VQVAE, hyperparameters: Hyperparameters) -> AdversarialDecoder:
    """An `AdversarialDecoder` starting from the trained `vqvae`, with its configuration and
    the adversarial stage's fields (`ADVERSARIAL_FIELDS`: `adversarial_weight` and
    `spectral_weight`) of the run's `hyperparameters`: the VQ-VAE's weights copied, the
    discriminator new."""
    settings = vqvae.hyperparameters.replace(
        **{name: getattr(hyperparameters, name) for name in ADVERSARIAL_FIELDS}
    )
    model = AdversarialDecoder(settings.to_dict(), vqvae.data_variance, name="adversarial")
    model.vqvae.set_weights(vqvae.get_weights())
    return model
