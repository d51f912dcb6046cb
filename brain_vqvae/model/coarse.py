"""The coarse level of a two-level prior (`Hyperparameters.pixelcnn_coarse_codes`).

A flat PixelCNN over the hifi preset's 32x32 maps of 4096 codes learns textures long before it
learns where a brain's parts lie (BENCHMARKS.md, "The hifi prior, first measured"), while the
card's prior over 8x8 maps learns that layout well. So, as the top level of VQ-VAE-2 (Razavi
et al. 2019, "Generating Diverse High-Fidelity Images with VQ-VAE-2"), a two-level prior first
draws a coarse map, one code per f x f block of the fine map (f = `COARSE_FACTOR`), and then
the fine map given the whole coarse map. Unlike VQ-VAE-2's, the coarse map here is not learned
by the autoencoder: it is a fixed summary of the fine map, so that the VQ-VAE stays as it is
and any trained run can have its prior retrained as two levels.

With e_k the VQ-VAE's code vectors, the coarse code of block (I, J) of a fine map k is

    u(I, J) = mean over the f x f codes (i, j) of the block of e_k(i, j)     [D]
    coarse(I, J) = argmin_c || u(I, J) - m_c ||^2                           in 0 .. C - 1

for C centroids m_c, the k-means of the block means u of the training maps (`CoarseMap.fit`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from brain_vqvae.model.quantizer import kmeans, nearest_codes
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from hyperparameters import COARSE_FACTOR, check_at_least

MAX_KMEANS_VECTORS = 65536  # block means k-means is fitted on, drawn at random beyond this


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class CoarseMap(keras.layers.Layer):
    """Fine code maps [N, h, w] (int, codes < `num_embeddings`) -> coarse code maps
    [N, h / f, w / f] int32 (codes < `coarse_codes`), as the module docstring says. Its two
    weights are not trained by gradients: the VQ-VAE's code vectors [K, D] and the centroids
    [C, D], both set by `fit` and saved with the model."""

    def __init__(
        self,
        num_embeddings: int,
        latent_dim: int,
        coarse_codes: int,
        factor: int = COARSE_FACTOR,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_at_least("coarse_codes", coarse_codes, 2)
        check_at_least("factor", factor, 1)
        self.num_embeddings, self.latent_dim = int(num_embeddings), int(latent_dim)
        self.coarse_codes, self.factor = int(coarse_codes), int(factor)

    def build(self, input_shape=None) -> None:
        self.code_vectors = self.add_weight(
            shape=(self.num_embeddings, self.latent_dim),
            initializer="zeros",
            trainable=False,
            name="code_vectors",
        )
        self.centroids = self.add_weight(
            shape=(self.coarse_codes, self.latent_dim),
            initializer="zeros",
            trainable=False,
            name="centroids",
        )
        self.built = True

    def block_means(self, code_maps):
        """u of the module docstring: fine maps [N, h, w] -> [N, h / f, w / f, D]."""
        vectors = ops.take(self.code_vectors, ops.cast(code_maps, "int32"), axis=0)
        f = self.factor
        rows, columns = ops.shape(code_maps)[1] // f, ops.shape(code_maps)[2] // f
        blocks = ops.reshape(vectors, (-1, rows, f, columns, f, self.latent_dim))
        return ops.mean(blocks, axis=(2, 4))

    def call(self, code_maps):
        means = self.block_means(code_maps)
        shape = ops.shape(means)
        codes = nearest_codes(ops.reshape(means, (-1, self.latent_dim)), self.centroids)
        return ops.reshape(codes, shape[:3])

    def fit(self, code_maps: np.ndarray, code_vectors: np.ndarray, seed: int = 0) -> None:
        """Take the VQ-VAE's `code_vectors` [K, D] and set the centroids to the k-means of the
        block means of the training `code_maps` [N, h, w] (at most `MAX_KMEANS_VECTORS` of
        them, drawn with `seed`)."""
        code_vectors = np.asarray(code_vectors, dtype="float32")
        if code_vectors.shape != (self.num_embeddings, self.latent_dim):
            raise ValueError(
                f"code_vectors must be [{self.num_embeddings}, {self.latent_dim}] (the VQ-VAE's "
                f"codebook), got {list(code_vectors.shape)}"
            )
        self.code_vectors.assign(code_vectors)
        means = ops.convert_to_numpy(self.block_means(np.asarray(code_maps, dtype="int32")))
        means = means.reshape(-1, self.latent_dim)
        generator = np.random.default_rng(seed)
        if len(means) > MAX_KMEANS_VECTORS:
            means = means[generator.choice(len(means), MAX_KMEANS_VECTORS, replace=False)]
        seeds = keras.random.SeedGenerator(seed)
        self.centroids.assign(kmeans(ops.convert_to_tensor(means), self.coarse_codes, seeds))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_embeddings": self.num_embeddings,
            "latent_dim": self.latent_dim,
            "coarse_codes": self.coarse_codes,
            "factor": self.factor,
        }
