"""The reference the speed benchmarks measure ours against: the Keras example's VQ-VAE with the
card's layers, as a model (`build_reference`) and as the plain script a keras-io user writes.

    python -m bench.reference --data TREE [--epochs 3] [--batch-size 64]

The model follows the Keras example "Vector-Quantized Variational Autoencoders"
(keras.io/examples/generative/vq_vae): a `VectorQuantizer` layer whose codebook is a raw
`tf.Variable` and whose losses go through `add_loss`, a `VQVAETrainer` model with its own
`train_step` and three loss trackers, and images on the example's scale x / 255 - 1/2. Its layers
are the card's (`hyperparameters.preset("card")`: encoder 3x3 ReLU convolutions 32, 32, 64, 64 at
stride 2 and 128 at stride 1, a 1x1 convolution to 16 dimensions, 16 codes; the decoder mirrored
with transposed convolutions), so it has the 446,033 weights of ours; its loss is the example's
MSE / data variance + VQ loss (beta 0.25), with Adam at 1e-3. One deviation: Keras 3 does not
track a raw `tf.Variable`, so the example's codebook would never move; the trainer here
differentiates it explicitly.

The script is what a keras-io user runs on the OASIS PNG tree (`brain_vqvae.data.png_tree`): Pillow
reads every PNG of TREE/keras_png_slices_train as 8-bit grey, resized to the card's 128x128 (with
Lanczos, as the project's loader does, so both see the same pixels), into one float32 NumPy
array on the example's scale; the data variance is that array's; the trainer is compiled with
Adam and `fit` on the array with Keras' default progress bar. Nothing else: no validation, no
checkpoints, no saving. It imports TensorFlow plainly: it never imports `brain_vqvae`, which
would set TF_ENABLE_ONEDNN_OPTS=1, so oneDNN is whatever TensorFlow chooses for the machine and
the environment (`hyperparameters` imports only NumPy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from hyperparameters import preset

CARD = preset("card")
LEARNING_RATE = 1e-3  # the example's (Keras' Adam default), also the card's learning_rate_vqvae


class ExampleVectorQuantizer(keras.layers.Layer):
    """Nearest-code lookup as in the example: the codebook a raw (embedding_dim, num_embeddings)
    variable, the commitment and codebook losses added with `add_loss`, the straight-through
    estimator for the gradient."""

    def __init__(self, num_embeddings, embedding_dim, beta=0.25, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim, self.num_embeddings, self.beta = embedding_dim, num_embeddings, beta
        initial = tf.random_uniform_initializer(seed=seed)((embedding_dim, num_embeddings))
        self.embeddings = tf.Variable(initial, trainable=True, name="embeddings_vqvae")

    def call(self, latents):
        embeddings = tf.cast(self.embeddings, latents.dtype)  # for mixed precision
        flat = tf.reshape(latents, [-1, self.embedding_dim])
        distances = (
            tf.reduce_sum(flat**2, axis=1, keepdims=True)
            + tf.reduce_sum(embeddings**2, axis=0)
            - 2 * tf.matmul(flat, embeddings)
        )
        one_hot = tf.one_hot(tf.argmin(distances, axis=1), self.num_embeddings, dtype=flat.dtype)
        codes = tf.reshape(tf.matmul(one_hot, embeddings, transpose_b=True), tf.shape(latents))
        commitment = tf.reduce_mean((tf.stop_gradient(codes) - latents) ** 2)
        codebook = tf.reduce_mean((codes - tf.stop_gradient(latents)) ** 2)
        self.add_loss(self.beta * commitment + codebook)
        return latents + tf.stop_gradient(codes - latents)  # straight-through estimator


class ExampleVQVAETrainer(keras.Model):
    """The example's trainer: loss = MSE(images, reconstructions) / data variance + VQ loss,
    tracked as "loss", "reconstruction_loss" and "vq_loss"."""

    def __init__(self, data_variance: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.data_variance = data_variance
        quantizer = ExampleVectorQuantizer(
            CARD.num_embeddings, CARD.latent_dim, beta=CARD.beta, seed=seed
        )
        self.vqvae, self.quantizer = reference_network(quantizer)
        self.trackers = [
            keras.metrics.Mean(name=name) for name in ("loss", "reconstruction_loss", "vq_loss")
        ]

    @property
    def metrics(self):
        return self.trackers

    def train_step(self, images):
        # Keras 3 does not collect a raw tf.Variable: name the codebook explicitly.
        variables = [*self.vqvae.trainable_variables, self.quantizer.embeddings]
        with tf.GradientTape() as tape:
            reconstructions = tf.cast(self.vqvae(images), tf.float32)  # mixed precision
            reconstruction_loss = (
                tf.reduce_mean((images - reconstructions) ** 2) / self.data_variance
            )
            vq_loss = tf.cast(sum(self.vqvae.losses), tf.float32)
            total_loss = reconstruction_loss + vq_loss
        gradients = tape.gradient(total_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        for tracker, value in zip(
            self.trackers, (total_loss, reconstruction_loss, vq_loss), strict=True
        ):
            tracker.update_state(value)
        return {tracker.name: tracker.result() for tracker in self.trackers}


def build_reference(data_variance: float, seed: int | None = None) -> ExampleVQVAETrainer:
    """The example's VQ-VAE trainer with the card's layers, its loss scaled by `data_variance`
    (of the pixels on the [0, 1] scale, which x / 255 - 1/2 leaves unchanged); `seed` fixes the
    codebook's initial values (the layers' follow `keras.utils.set_random_seed`)."""
    return ExampleVQVAETrainer(data_variance, seed)


def reference_network(quantizer) -> tuple[keras.Model, keras.layers.Layer]:
    """The card's encoder -> `quantizer` -> mirrored decoder as one functional model from
    (N, 128, 128, 1) images on the example's centred scale to reconstructions of the same
    shape (unbounded, no final activation); returns (model, quantizer)."""
    layers = keras.layers
    convolutions = [
        (filters, 2 if index < CARD.downsample_stages else 1)
        for index, filters in enumerate(CARD.encoder_filters)
    ]
    images = keras.Input((CARD.image_size, CARD.image_size, 1))
    features = images
    for filters, stride in convolutions:
        features = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(
            features
        )
    features = quantizer(layers.Conv2D(CARD.latent_dim, 1)(features))
    features = layers.Conv2D(CARD.encoder_filters[-1], 3, padding="same", activation="relu")(
        features
    )
    for filters, stride in reversed(convolutions):
        features = layers.Conv2DTranspose(
            filters, 3, strides=stride, padding="same", activation="relu"
        )(features)
    outputs = layers.Conv2D(1, 3, padding="same")(features)
    return keras.Model(images, outputs, name="example_vqvae"), quantizer


def read_png_slices(folder: Path, size: int) -> np.ndarray:
    """(N, size, size, 1) uint8: every PNG of `folder`, in name order, read as 8-bit grey and
    resized to size x size."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no PNG files")
    slices = [
        np.asarray(Image.open(path).convert("L").resize((size, size), Image.Resampling.LANCZOS))
        for path in paths
    ]
    return np.stack(slices)[..., np.newaxis]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a keras_png_slices PNG tree")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    x_train = read_png_slices(arguments.data / "keras_png_slices_train", CARD.image_size)
    x_train_scaled = x_train.astype(np.float32) / 255.0 - 0.5
    data_variance = float(np.var(x_train_scaled))
    trainer = build_reference(data_variance)
    trainer.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    trainer.fit(x_train_scaled, epochs=arguments.epochs, batch_size=arguments.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
