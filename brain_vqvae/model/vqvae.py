"""Stage 1 of the model: the encoder, the decoder and the `VQVAE` that joins them through a
`VectorQuantizer` and trains itself (see `modules` for the maths of both stages); `Autoencoder`
is what it shares with the Gaussian VAE baseline (`brain_vqvae.model.vae`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from brain_vqvae.metrics import peak_signal_noise_ratio, structural_similarity
from brain_vqvae.model.convolution import OneFilterConv2D
from brain_vqvae.model.distribute import (
    apply_to_rows,
    batch_share,
    replica_sum,
    step_logs,
    weighted_by_share,
)
from brain_vqvae.model.quantizer import VectorQuantizer
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.steps import TrainingStepModel
from brain_vqvae.model.trackers import SSIM_BINS, SSIM_RANGE, QuantileTracker, histogram_counts
from hyperparameters import Hyperparameters

VQVAE_METRICS = (
    "loss",
    "reconstruction_loss",
    "vq_loss",
    "perplexity",
    "codes_used",
    "ssim",
    "psnr",
    "above_target",
    "ssim_p05",
)
# The reported quantiles of the slices' SSIM (`QuantileTracker`), by name: every other reported
# value is a mean.
SSIM_QUANTILES = {"ssim_p05": 0.05}
SSIM_LOSS_WEIGHT = 0.84  # Zhao et al. 2017: alpha in alpha (1 - SSIM) + (1 - alpha) L1
MAX_UNIT_INTERVAL_VARIANCE = 0.25  # no values in [0, 1] have a larger variance


def _encoder_convolutions(hyperparameters: Hyperparameters) -> list[tuple[int, int]]:
    """(filters, stride) of each encoder convolution: stride 2 for the first
    `downsample_stages`, then 1. For the card: (32, 2), (32, 2), (64, 2), (64, 2), (128, 1)."""
    return [
        (filters, 2 if index < hyperparameters.downsample_stages else 1)
        for index, filters in enumerate(hyperparameters.encoder_filters)
    ]


def residual_block(features, name: str):
    """x + conv1x1(relu(conv3x3(x))), then ReLU, at constant width (Sonnet / MONAI VQ-VAE)."""
    channels = features.shape[-1]
    hidden = keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name=f"{name}_conv3x3"
    )(features)
    hidden = keras.layers.Conv2D(channels, 1, name=f"{name}_conv1x1")(hidden)
    return keras.layers.ReLU(name=f"{name}_relu")(keras.layers.Add()([features, hidden]))


def build_encoder(hyperparameters: Hyperparameters) -> keras.Model:
    """Images [N, S, S, 1] in [0, 1] -> pre-quantization vectors z_e [N, h, h, latent_dim].

    Centre (x - 1/2), then one 3x3 ReLU convolution per `encoder_filters` entry (stride 2 for
    the first `downsample_stages`, so h = S / 2**downsample_stages), `residual_blocks`
    residual blocks at that resolution, and a linear 1x1 convolution to `latent_dim`. For the
    card: [N, 128, 128, 1] -> [N, 8, 8, 16].
    """
    size = hyperparameters.image_size
    images = keras.Input((size, size, 1), name="images")
    features = keras.layers.Rescaling(1.0, offset=-0.5, name="centre")(images)
    for index, (filters, stride) in enumerate(_encoder_convolutions(hyperparameters)):
        features = keras.layers.Conv2D(
            filters, 3, strides=stride, padding="same", activation="relu", name=f"conv_{index}"
        )(features)
    for index in range(hyperparameters.residual_blocks):
        features = residual_block(features, name=f"residual_{index}")
    latents = keras.layers.Conv2D(hyperparameters.latent_dim, 1, name="pre_quantization")(features)
    return keras.Model(images, latents, name="encoder")


def build_decoder(hyperparameters: Hyperparameters) -> keras.Model:
    """Quantized vectors [N, h, h, latent_dim] -> images [N, S, S, 1] on the [0, 1] scale.

    The encoder's mirror: a 3x3 ReLU convolution up to the last encoder width, the residual
    blocks, one 3x3 ReLU transposed convolution per encoder convolution in reverse order (stride
    2 where the encoder had stride 2), and a linear 3x3 convolution to one channel
    (`OneFilterConv2D`); 1/2 is added back to undo the encoder's centring. The output is not
    clipped (see the `modules` docstring).
    """
    size = hyperparameters.code_map_size
    quantized = keras.Input((size, size, hyperparameters.latent_dim), name="quantized")
    features = keras.layers.Conv2D(
        hyperparameters.encoder_filters[-1], 3, padding="same", activation="relu", name="conv_in"
    )(quantized)
    for index in range(hyperparameters.residual_blocks):
        features = residual_block(features, name=f"residual_{index}")
    mirrored = reversed(list(enumerate(_encoder_convolutions(hyperparameters))))
    for index, (filters, stride) in mirrored:
        features = keras.layers.Conv2DTranspose(
            filters, 3, strides=stride, padding="same", activation="relu", name=f"deconv_{index}"
        )(features)
    centred = OneFilterConv2D(3, padding="same", name="conv_out")(features)
    reconstructions = keras.layers.Rescaling(1.0, offset=0.5, name="uncentre")(centred)
    return keras.Model(quantized, reconstructions, name="decoder")


# ---------------------------------------------------------------------------------------------
# VQ-VAE
# ---------------------------------------------------------------------------------------------


def _check_data_variance(data_variance: float) -> float:
    data_variance = float(data_variance)
    if not 0.0 < data_variance <= MAX_UNIT_INTERVAL_VARIANCE:
        raise ValueError(
            f"data_variance must be in (0, {MAX_UNIT_INTERVAL_VARIANCE}]: the pixel variance of "
            f"the training images on the [0, 1] scale the model sees; got {data_variance} "
            "(a value above 0.25 was computed on 0-255 pixels, see the `modules` docstring)"
        )
    return data_variance


class Autoencoder(TrainingStepModel):
    """What the `VQVAE` and the `GaussianVAE` (`brain_vqvae.model.vae`) share: the encoder and
    decoder built from the same `Hyperparameters`, the reconstruction loss, and the training
    step (`step_loss` and `record`, run by `steps.TrainingStepModel` on TensorFlow or JAX) that
    weights each replica's means by its share of the global batch.

    `Autoencoder(hyperparameters, data_variance, metric_names)` takes the plain dict of
    `Hyperparameters.to_dict()` and the pixel variance of the training images on the [0, 1]
    scale (used by the "mse" reconstruction loss). A subclass builds its latent part in
    `_build_latent`, called between the encoder and the decoder, so that the model's variables
    keep the order encoder, latent part, decoder (a saved optimizer's state is matched to the
    variables by that order), and defines `_forward(images, training)` -> a dict with
    "reconstructions" (raw, unclipped), `_loss_terms(images, outputs, step)` -> a dict with
    "loss" and the other weighted means it reports (`outputs` then also hold "ssim", the [N]
    SSIM of the clipped reconstructions, for `reconstruction_loss`), and, optionally,
    `_global_values(outputs)` -> values already global over the replicas.
    """

    def __init__(self, hyperparameters: dict, data_variance: float, metric_names, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = Hyperparameters.from_dict(hyperparameters)
        self.data_variance = _check_data_variance(data_variance)
        self.encoder = build_encoder(self.hyperparameters)
        self._build_latent()
        self.decoder = build_decoder(self.hyperparameters)
        self.trackers = [
            QuantileTracker(SSIM_QUANTILES[name], name=name)
            if name in SSIM_QUANTILES
            else keras.metrics.Mean(name=name)
            for name in metric_names
        ]

    def _build_latent(self) -> None:
        """Make the layers between the encoder and the decoder (none here)."""

    @property
    def metrics(self) -> list:
        return self.trackers

    def reconstruction_loss(self, images, reconstructions, step=None, ssim=None):
        """The configured L_rec (scalar) of raw reconstructions; see the `VQVAE` docstring.

        Given `step`, the optimizer's step count t, "ssim_l1" is blended with "mse" over the
        first T = `mse_warmup_steps` steps: (1 - w) mse + w ssim_l1 with w = min(t / T, 1).
        `ssim`, the [N] SSIM of the clipped reconstructions when the caller has it already,
        spares computing it again.
        """
        mse = ops.mean(ops.square(images - reconstructions)) / self.data_variance
        if self.hyperparameters.reconstruction_loss == "mse":
            return mse
        if ssim is None:
            ssim = structural_similarity(images, ops.clip(reconstructions, 0.0, 1.0))
        l1 = ops.mean(ops.abs(images - reconstructions))
        ssim_l1 = SSIM_LOSS_WEIGHT * (1.0 - ops.mean(ssim)) + (1.0 - SSIM_LOSS_WEIGHT) * l1
        warmup_steps = self.hyperparameters.mse_warmup_steps
        if step is None or warmup_steps == 0:
            return ssim_l1
        weight = ops.minimum(ops.cast(step, "float32") / warmup_steps, 1.0)
        return (1.0 - weight) * mse + weight * ssim_l1

    def _global_values(self, outputs: dict) -> dict:
        """Reported values that are global over the replicas already (none here)."""
        return {}

    def step_loss(self, data, training: bool):
        """The loss of a batch of images and the values `record` reports (`steps`). Training
        reconstructs with the optimizer's step count (`reconstruction_loss`'s warm-up);
        validation with the configured loss alone."""
        images = keras.utils.unpack_x_y_sample_weight(data)[0]
        share = batch_share(images)
        outputs = self._forward(images, training=training)
        # The slices' SSIM, computed once for the loss and the reported values.
        outputs["ssim"] = structural_similarity(
            images, ops.clip(outputs["reconstructions"], 0.0, 1.0)
        )
        losses = self._loss_terms(
            images, outputs, step=self.optimizer.iterations if training else None
        )
        # The optimizer sums the replicas' gradients (Keras' TF backend all-reduces them with
        # SUM), so each replica differentiates its share of the global-batch mean.
        loss = weighted_by_share(losses["loss"], share)
        return loss, {"images": images, "outputs": outputs, "losses": losses, "share": share}

    def record(self, report: dict) -> dict:
        """Track the step's values over the global batch: each replica's means (the losses,
        and the SSIM and PSNR of the clipped reconstructions, and the share of slices whose
        SSIM reaches `ssim_target`) weighted by its share and summed over the replicas, the
        histogram of the slices' SSIM summed over the replicas (for the `SSIM_QUANTILES`), and the
        `_global_values` as they are."""
        images, outputs = report["images"], report["outputs"]
        clipped = ops.clip(outputs["reconstructions"], 0.0, 1.0)
        ssim = outputs["ssim"]
        above_target = ops.cast(ssim >= self.hyperparameters.ssim_target, "float32")
        means = {
            **report["losses"],
            "ssim": ops.mean(ssim),
            "psnr": ops.mean(peak_signal_noise_ratio(images, clipped)),
            "above_target": ops.mean(above_target),
        }
        share = report["share"]
        histogram = replica_sum(histogram_counts(ssim, SSIM_BINS, *SSIM_RANGE))
        values = {
            **{name: replica_sum(weighted_by_share(mean, share)) for name, mean in means.items()},
            **{name: histogram for name in SSIM_QUANTILES},
            **self._global_values(outputs),
        }
        for tracker in self.trackers:
            tracker.update_state(values[tracker.name])
        return step_logs({tracker.name: tracker.result() for tracker in self.trackers})

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters.to_dict(),
            "data_variance": self.data_variance,
        }


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class VQVAE(Autoencoder):
    """Encoder -> `VectorQuantizer` -> decoder, trained by its own training step.

    `VQVAE(hyperparameters, data_variance)` takes the plain dict of `Hyperparameters.to_dict()`
    and the pixel variance of the training images on the [0, 1] scale (used by the "mse"
    reconstruction loss); both are the whole config, so `keras.saving.load_model` rebuilds it.

    `model(images)` maps [N, S, S, 1] in [0, 1] to reconstructions of the same shape, clipped
    to [0, 1]. Loss: reconstruction ("mse": mean (x - x_hat)^2 / data_variance; "ssim_l1":
    0.84 (1 - SSIM(x, clip(x_hat, 0, 1))) + 0.16 mean |x - x_hat|, SSIM with an 11x11 Gaussian
    window of sigma 1.5) plus the quantizer's loss. SSIM scores the clipped output, as the
    metric does: on the unclipped one, the black background (x = 0) is a sharp well at
    x_hat = 0 (the luminance term C1 / (mu^2 + C1) halves at mu = 0.01), so outputs slightly
    below 0, which the metric counts as perfect, were pulled back and training swung from
    epoch to epoch; clipped, every x_hat <= 0 scores as 0 does, and on real scans the
    validation SSIM rose and stopped swinging (BENCHMARKS.md). L1 keeps a gradient on every
    pixel. `fit` and `evaluate` report the epoch means of loss, reconstruction_loss, vq_loss,
    perplexity, codes_used, and ssim and psnr (`brain_vqvae.metrics`, data range 1) of the
    clipped reconstructions, with the spread of the slices' SSIM: above_target, the share at or
    above `ssim_target`, and ssim_p05, its 5th percentile (`trackers.QuantileTracker`).

    Under a `tf.distribute` strategy (build and compile the model in `strategy.scope()`) the
    global batch of N images is split over the replicas, n_r each. Replica r differentiates
    (n_r / N) L_r, its mean loss L_r weighted by its share, and the optimizer sums the gradients
    over the replicas, giving the gradient of the global-batch mean (1/N) sum over all images;
    the reported values are global-batch means too, so training matches one device with batch
    N up to rounding.

    A caution on "ssim_l1" from scratch: in a window where the target is flat (the black
    background of a slice, the inside of a uniform region) SSIM's contrast-structure term
    C2 / (var(x_hat) + C2) punishes any variation of the output, so the first steps mostly flatten
    the decoder's random output; the card spends its first steps on that plateau before SSIM
    climbs (BENCHMARKS.md), a larger model such as the hifi preset longer, and a very small
    decoder can lose every ReLU there and stall for good. So training starts on the
    "mse" loss, whose gradient is strong on a flat output, and hands over to "ssim_l1" over the
    first `mse_warmup_steps` steps (`reconstruction_loss`); validation always uses the configured
    loss alone, so the best checkpoint is chosen on it.
    """

    def __init__(self, hyperparameters: dict, data_variance: float, **kwargs):
        super().__init__(hyperparameters, data_variance, VQVAE_METRICS, **kwargs)
        self.built = True  # every weight exists once the parts are made

    def _build_latent(self) -> None:
        settings = self.hyperparameters
        self.quantizer = VectorQuantizer(
            settings.num_embeddings,
            settings.latent_dim,
            beta=settings.beta,
            ema=settings.ema,
            ema_decay=settings.ema_decay,
            ema_epsilon=settings.ema_epsilon,
            dead_code_restart=settings.dead_code_restart,
            dead_code_threshold=settings.dead_code_threshold,
            kmeans_init=settings.kmeans_init,
            l2_normalize=settings.l2_normalize,
            seed=settings.seed,
            name="vector_quantizer",
        )
        self.quantizer.build(self.encoder.output.shape)

    def call(self, images, training=False):
        return ops.clip(self._forward(images, training)["reconstructions"], 0.0, 1.0)

    def encode(self, images):
        """Pre-quantization vectors z_e: [N, S, S, 1] in [0, 1] -> [N, h, h, latent_dim]."""
        return self.encoder(images)

    def code_indices(self, images):
        """Code maps: [N, S, S, 1] in [0, 1] -> [N, h, h] int32 in [0, num_embeddings)."""
        return self.quantizer.code_indices(self.encoder(images))

    def decode_indices(self, code_maps):
        """Images from code maps: [N, h, h] int -> [N, S, S, 1] clipped to [0, 1]."""
        return ops.clip(self.decoder(self.quantizer.lookup(code_maps)), 0.0, 1.0)

    def _forward(self, images, training: bool) -> dict:
        latents = apply_to_rows(self.encoder, images, training=training)
        quantizer_outputs = self.quantizer(latents, training=training)
        quantized = quantizer_outputs["quantized"]
        reconstructions = apply_to_rows(self.decoder, quantized, training=training)
        return {**quantizer_outputs, "reconstructions": reconstructions}

    def _loss_terms(self, images, outputs: dict, step=None) -> dict:
        reconstruction_loss = self.reconstruction_loss(
            images, outputs["reconstructions"], step, outputs["ssim"]
        )
        return {
            "loss": reconstruction_loss + outputs["loss"],
            "reconstruction_loss": reconstruction_loss,
            "vq_loss": outputs["loss"],
        }

    def _global_values(self, outputs: dict) -> dict:
        """The quantizer's perplexity and codes_used, computed over the global batch."""
        return {"perplexity": outputs["perplexity"], "codes_used": outputs["codes_used"]}


def build_vqvae(hyperparameters: Hyperparameters, data_variance: float) -> VQVAE:
    """A `VQVAE` for `hyperparameters`, its weights built by a call on a dummy batch.

    `data_variance` is the pixel variance of the training images on the [0, 1] scale, e.g.
    `np.var(train.float_images())`.
    """
    model = VQVAE(hyperparameters.to_dict(), data_variance, name="vqvae")
    size = hyperparameters.image_size
    model(np.zeros((1, size, size, 1), dtype="float32"))
    return model
