"""The two-stage model: a VQ-VAE that turns a brain slice into a small map of codes, and a
PixelCNN prior that learns (and samples) the distribution of those code maps.

Stage 1, the VQ-VAE (van den Oord, Vinyals and Kavukcuoglu 2017, "Neural Discrete
Representation Learning"). For the default design ("the card") a slice x of shape
[128, 128, 1] on the [0, 1] scale goes through

    encoder      z_e = E(x - 1/2)                  [8, 8, 16]   3x3 ReLU convs, 4 of stride 2
    quantizer    k(i, j) = argmin_k ||z_e(i, j) - e_k||^2        [8, 8] indices into the
                 z_q(i, j) = e_k(i, j)             [8, 8, 16]   codebook e of shape [16, 16]
    decoder      x_hat = D(z_q) + 1/2              [128, 128, 1] mirrored transposed convs

and is trained on (eq. 3 of the paper, with sg the stop-gradient)

    L = L_rec(x, x_hat) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2
                          (codebook term)     (commitment term)

where the gradient of L_rec reaches the encoder through the straight-through estimator
z_q = z_e + sg[e - z_e]. L_rec is either ||x - x_hat||^2 / var(x) ("mse", the scaling of
DeepMind's VQ-VAE notebook) or 0.84 (1 - SSIM(x, x_hat)) + 0.16 |x - x_hat| ("ssim_l1", Zhao
et al. 2017, "Loss Functions for Image Restoration with Neural Networks"). With the EMA
codebook option the codebook term is replaced by exponential moving averages of the encoder
outputs assigned to each code (`VectorQuantizer`).

The decoder output is linear, on centred data: the encoder sees x - 1/2, the decoder predicts
x_hat - 1/2. A sigmoid would saturate exactly where brain slices live: about half of every
slice is background at exactly 0, which a sigmoid only reaches as its input goes to minus
infinity, where its gradient vanishes. The linear output reaches 0 exactly and keeps its
gradient, which is how DeepMind's notebook and the keras-io example train. The model's public
contract is still [0, 1] in and [0, 1] out: `VQVAE.__call__`, `decode_indices` and
`decode_code_maps` clip to [0, 1]; only the losses see the raw linear output.

Why var(x) must be computed on the [0, 1] scale the model sees. Dividing by the variance makes
L_rec about 1 for a model that predicts the mean image, so it is commensurate with the
quantizer terms. A variance computed on 0-255 pixels while the model sees [0, 1] images is
255^2 = 65,025 times too large, so L_rec shrinks by that factor. This does not switch the
commitment term off; it makes it dominate: the encoder's gradient is then about 65,000 parts
beta ||z_e - sg[e]||^2 to one part reconstruction, so the encoder learns to sit on codebook
vectors instead of carrying the image, codes collapse (perplexity near 1) and reconstructions
become a blurry mean slice, while the decoder, whose only signal is L_rec, still trains (Adam
rescales its tiny gradients), so the loss curve looks healthy. It is the opposite mistake, a
variance from [0, 1] values with the model fed 0-255 pixels, that makes L_rec 65,025 times too
large and so effectively switches the commitment term off, letting the encoder outputs drift
away from the codebook. `VQVAE` therefore refuses a variance above 0.25, the largest variance
any values in [0, 1] can have.

Stage 2, the prior (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"; "Conditional
Image Generation with PixelCNN Decoders"). The code maps of the training images are modelled
autoregressively in raster order,

    p(k) = prod_{(i, j)} p(k(i, j) | k(i', j') for (i', j') before (i, j)),

by a PixelCNN: one-hot codes [8, 8, 16] (learned embeddings of them for a large codebook) ->
7x7 mask-A convolution -> residual blocks of masked 3x3 mask-B convolutions -> 1x1 convolution
to 16 logits per position [8, 8, 16]. Mask A hides the current position and everything after
it, mask B only what comes after it, so the logits at (i, j) depend on earlier codes only.
`sample_code_maps` draws new maps position by position in one compiled loop that computes each
position's features once and caches them (`_RasterScan`); `decode_code_maps` turns them into
slices.

Public API: `VectorQuantizer`, `VQVAE`, `build_vqvae`, `MaskedConv2D`, `PixelCNN`,
`build_pixelcnn`, `encode_code_maps`, `decode_code_maps`, `sample_code_maps`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On Linux, TensorFlow turns its oneDNN CPU kernels on by default only for CPUs with VNNI,
# AVX512_BF16 or AMX (tensorflow/core/util/port.cc); on plain AVX2 CPUs (most AMD and older Intel
# ones) they still halve a VQ-VAE training step (bench/throughput.py, BENCHMARKS.md). Read once,
# when TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import random
import weakref
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hyperparameters import Hyperparameters

SERIALIZATION_PACKAGE = "brain_vqvae"
VQVAE_METRICS = (
    "loss",
    "reconstruction_loss",
    "vq_loss",
    "perplexity",
    "codes_used",
    "ssim",
    "psnr",
)
PIXELCNN_METRICS = ("loss", "accuracy")
SSIM_LOSS_WEIGHT = 0.84  # Zhao et al. 2017: alpha in alpha (1 - SSIM) + (1 - alpha) L1
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
MAX_UNIT_INTERVAL_VARIANCE = 0.25  # no values in [0, 1] have a larger variance


# ---------------------------------------------------------------------------------------------
# Image similarity
# ---------------------------------------------------------------------------------------------


def _gaussian_band(size: int) -> np.ndarray:
    """The [size - w + 1, size] matrix G whose rows are the normalised 1-D Gaussian window
    (w = SSIM_FILTER_SIZE taps, sigma = SSIM_FILTER_SIGMA) at every 'valid' offset, so that
    G @ X @ G^T is X filtered by the separable 2-D Gaussian without padding."""
    taps = np.arange(SSIM_FILTER_SIZE) - (SSIM_FILTER_SIZE - 1) / 2
    window = np.exp(-(taps**2) / (2 * SSIM_FILTER_SIGMA**2))
    window /= window.sum()
    band = np.zeros((size - SSIM_FILTER_SIZE + 1, size), dtype="float32")
    for row in range(len(band)):
        band[row, row : row + SSIM_FILTER_SIZE] = window
    return band


def structural_similarity(images, others):
    """SSIM of each pair of [0, 1] images: [N, H, W, 1] x 2 -> [N] (Wang et al. 2004).

    With mu, sigma^2 and sigma_xy the Gaussian-weighted local means, variances and covariance
    (11 taps, sigma 1.5, no padding, as `tf.image.ssim` and skimage's `gaussian_weights=True`),

        SSIM = mean over positions of (2 mu_x mu_y + C1)(2 sigma_xy + C2)
                                      / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

    C1 = 0.01^2, C2 = 0.03^2 for data range 1. The separable filter is applied as two matrix
    products with banded matrices, which on a CPU is about 18x faster than the 11x11 depthwise
    convolution of `tf.image.ssim` and agrees with it to 1e-6. Differentiable.
    """
    images = ops.cast(images, "float32")[..., 0]
    others = ops.cast(others, "float32")[..., 0]
    rows = ops.convert_to_tensor(_gaussian_band(images.shape[1]))
    columns = ops.convert_to_tensor(_gaussian_band(images.shape[2]))
    moments = ops.concatenate(
        [images, others, images * images, others * others, images * others], axis=0
    )
    filtered = ops.matmul(ops.matmul(rows, moments), ops.transpose(columns))
    mean_x, mean_y, square_x, square_y, product = ops.split(filtered, 5, axis=0)
    variance_x = square_x - mean_x * mean_x
    variance_y = square_y - mean_y * mean_y
    covariance = product - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x * mean_x + mean_y * mean_y + c1) * (variance_x + variance_y + c2)
    )
    return ops.mean(ssim_map, axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Vector quantizer
# ---------------------------------------------------------------------------------------------


def nearest_codes(vectors, codebook):
    """Index of each vector's nearest code: [M, D], [K, D] -> [M] int32. As
    ||v - e_k||^2 = ||v||^2 - 2 (v.e_k - ||e_k||^2 / 2) and ||v||^2 is the same for every k, the
    nearest code is argmax_k (v.e_k - ||e_k||^2 / 2): one [M, K] matmul and one pass over it."""
    scores = ops.matmul(vectors, ops.transpose(codebook)) - 0.5 * ops.sum(
        ops.square(codebook), axis=1
    )
    return ops.cast(ops.argmax(scores, axis=1), "int32")


def assignment_counts(assignments, count: int):
    """n_k = sum_m [a_m = k] for k < `count`: how many of the integer assignments [M] name each
    code -> [count] float32. A segment sum costs O(M), where summing one-hot rows costs O(M K);
    the cluster sums sum_m [a_m = k] v_m are likewise `ops.segment_sum(v, a, count)`."""
    return ops.segment_sum(
        ops.ones_like(assignments, dtype="float32"), assignments, num_segments=count
    )


def usage_statistics(counts):
    """Perplexity and fraction of codes used, from the number of vectors assigned to each code
    (counts [K], summing to M).

    With p_k = counts_k / M the share of the M vectors assigned to code k, the perplexity is
    exp(-sum_k p_k log p_k): 1 when every vector uses one code, K when all K codes are used
    equally often. The fraction of codes used is #{k : p_k > 0} / K.
    """
    average_usage = counts / ops.sum(counts)
    entropy = -ops.sum(average_usage * ops.log(average_usage + 1e-10))
    return ops.exp(entropy), ops.mean(ops.cast(average_usage > 0, "float32"))


KMEANS_ITERATIONS = 10  # Lloyd iterations after the k-means++ seeding


def padded_pool(vectors):
    """Vectors [M, D] to draw from, as (pool [M + 1, D], anywhere [M + 1]): the vectors with a
    zero row appended, and weights uniform over the M vectors, or all on the zero row if M = 0
    (an empty replica batch), so that a draw always has something to pick."""
    rows = ops.shape(vectors)[0]
    pool = ops.concatenate([vectors, ops.zeros((1, ops.shape(vectors)[1]), vectors.dtype)])
    no_rows = ops.cast(ops.reshape(rows == 0, (1,)), "float32")
    return pool, ops.concatenate([ops.ones((rows,)), no_rows])


def kmeans_plus_plus_seeds(vectors, count: int, seed_generator):
    """`count` seeds [count, D] for k-means drawn from vectors [M, D] by k-means++ (Arthur and
    Vassilvitskii 2007): the first uniformly, each next one with probability proportional to
    its squared distance D(x)^2 to the nearest seed so far. Copies of a chosen vector (the
    black background's identical encoder outputs) have D(x) = 0 and are never chosen again
    while any other vector is left. With no vectors (an empty replica batch) the seeds are 0."""
    rows = ops.shape(vectors)[0]
    pool, anywhere = padded_pool(vectors)

    def add_seed(index, state):
        seeds, nearest = state
        weights = ops.where(ops.sum(nearest) > 0, nearest, anywhere)  # all 0: copies of one
        chosen = keras.random.categorical(
            ops.log(weights)[None], 1, dtype="int32", seed=seed_generator
        )[0, 0]
        seed = ops.take(pool, chosen, axis=0)
        seeds = ops.where(ops.arange(count)[:, None] == index, seed[None], seeds)
        distances = ops.sum(ops.square(pool - seed[None]), axis=1)
        return seeds, ops.minimum(nearest, ops.where(ops.arange(rows + 1) < rows, distances, 0))

    seeds = ops.zeros((count, ops.shape(vectors)[1]), vectors.dtype)
    return ops.fori_loop(0, count, add_seed, (seeds, anywhere))[0]


def kmeans(vectors, count: int, seed_generator, iterations: int = KMEANS_ITERATIONS):
    """Centroids [count, D] of vectors [M, D]: k-means++ seeds, then `iterations` of Lloyd's
    algorithm (assign each vector to its nearest centroid, move each centroid to the mean of
    its vectors; a centroid with no vectors stays where it is)."""
    centroids = kmeans_plus_plus_seeds(vectors, count, seed_generator)
    for _ in range(iterations):
        nearest = nearest_codes(vectors, centroids)
        sizes = assignment_counts(nearest, count)[:, None]
        sums = ops.segment_sum(vectors, nearest, num_segments=count)
        centroids = ops.where(sizes > 0, sums / ops.maximum(sizes, 1.0), centroids)
    return centroids


def replica_sum(value):
    """`value` summed over the replicas of a `tf.distribute` strategy (an all-reduce inside
    `strategy.run`, i.e. in a compiled `train_step`, `test_step` or `predict_step`); `value`
    itself without a strategy, with one replica, or outside a replica context."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def batch_share(batch):
    """n / N: the share of the global batch this replica holds, with n its rows (the first axis
    of `batch`) and N = sum of n over the replicas; 1 without a strategy. Scalar float32."""
    count = ops.cast(ops.shape(batch)[0], "float32")
    return count / replica_sum(count)


def weighted_by_share(mean, share):
    """A replica's mean over its rows times its `batch_share`, 0 for a replica with an empty
    batch (whose mean is NaN). Summed over the replicas this is the mean over the global batch,
    sum_r (n_r / N) mean_r, however unevenly the batch was split."""
    return ops.where(share > 0, mean, 0.0) * share


def apply_to_rows(network, inputs, **options):
    """`network(inputs, **options)` for a batch of any size, 0 included: an empty batch is run
    as one row of zeros and the output cut back to no rows. With oneDNN (on by default here)
    TensorFlow's CPU convolutions give an empty batch a wrongly shaped output, and a replica gets
    an empty batch when the last batch of an epoch has fewer rows than there are replicas."""
    rows = ops.shape(inputs)[0]
    padding = ops.zeros((ops.maximum(1 - rows, 0), *ops.shape(inputs)[1:]), dtype=inputs.dtype)
    return network(ops.concatenate([inputs, padding]), **options)[:rows]


def step_logs(logs: dict) -> dict:
    """The scalars a `train_step` or `test_step` returns, in a shape Keras 3 can reduce over
    the replicas. On several workers of a `MultiWorkerMirroredStrategy` Keras averages them with
    `strategy.reduce(MEAN, value, axis=0)`, which fails on scalars (tensorflow/tensorflow#72388),
    so there each becomes a [1] vector and the average is a scalar again; elsewhere `logs` is
    returned as it is. The test is Keras' own (`_collective_all_reduce_multi_worker`)."""
    strategy = tf.distribute.get_strategy()
    if not (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return logs
    return {name: ops.reshape(value, (1,)) for name, value in logs.items()}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class VectorQuantizer(keras.layers.Layer):
    """Vector quantization layer of van den Oord et al. 2017, "Neural Discrete Representation
    Learning" (https://arxiv.org/abs/1711.00937), with optional EMA codebook and dead-code
    restart.

    The input may have any shape whose last dimension is `latent_dim`; all other dimensions
    are flattened, each vector is replaced by its nearest codebook vector, and the result is
    reshaped back. For example, an input of shape [32, 8, 8, 16] is reshaped into [2048, 16],
    compared with the [num_embeddings, 16] codebook, and quantized back to [32, 8, 8, 16];
    the code indices come out as [32, 8, 8].

    Losses, named by eq. 3 of the paper (sg = stop-gradient, z_e the input, e its code):
      - codebook term ||sg[z_e] - e||^2, which moves the codes toward the encoder outputs;
      - commitment term beta ||z_e - sg[e]||^2, which keeps the encoder near its codes.
    Both are means over all elements. With `ema=True` the codebook term is dropped and the
    codebook follows exponential moving averages instead (appendix A.1 of the paper; Sonnet's
    `VectorQuantizerEMA`): with one-hot assignments r [M, K] and decay gamma,
        N_k <- gamma N_k + (1 - gamma) sum_m r_mk              (cluster size)
        m_k <- gamma m_k + (1 - gamma) sum_m r_mk z_m          (cluster sum)
        e_k =  m_k / N~_k,  N~_k = (N_k + eps) / (n + K eps) n,  n = sum_k N_k
    (Laplace smoothing keeps N~_k > 0). N_k starts at 1 and m_k at the initial e_k, so the
    initial codebook counts as one pseudo-vector per code and an unused code keeps its place
    instead of collapsing to zero as with Sonnet's zero-debiased averages.

    With `kmeans_init=True` the first training call replaces the codebook by the k-means
    centroids of that batch's encoder outputs (`kmeans`: k-means++ seeds, then Lloyd; with
    EMA, N_k <- 1 and m_k <- e_k), so every code starts where there are encoder outputs. The
    default initial codebook instead puts most of them on one code: on real brains the card's
    VQ-VAE then ran its first 280 steps with a single code in use.

    With `l2_normalize=True` encoder outputs and codes are projected onto the unit sphere before
    they are compared, quantized and used in the losses (Yu et al. 2022, "Vector-quantized Image
    Modeling with Improved VQGAN", https://arxiv.org/abs/2110.04627): the nearest code is then
    the one of highest cosine similarity, and a growing scale of the encoder outputs, which
    otherwise leaves all but the nearest code behind, does not matter.

    With `dead_code_restart=True` each code's share of the assignments is tracked as an
    exponential moving average u_k <- gamma u_k + (1 - gamma) sum_m r_mk / M; a code with
    u_k < `dead_code_threshold` = t is re-seeded with an encoder output z of the current batch
    drawn with probability proportional to ||z - e(z)||^2, its squared distance to its code (and,
    with EMA, N_k <- 1 and m_k <- the new vector): restarts go where the codebook fits the data
    worst, and not onto copies of the black background's encoder output, which are most of a
    batch and already have their code. u_k starts, and restarts,
    at 2t, so a code that draws no vectors is restarted after ln 2 / (1 - gamma) steps (69 for
    gamma = 0.99) whatever K is. This works with and without EMA.

    State changes (EMA, restarts) happen only when called with `training=True`, as assignments
    to non-trainable variables, so they run inside a compiled `train_step`.

    Under a `tf.distribute` strategy each replica quantizes its part of the global batch, and
    the statistics are summed over the replicas (`replica_sum`) before they are used: the
    counts sum_m r_mk (for N_k, u_k, the perplexity and codes_used) and the sums
    sum_m r_mk z_m (for m_k), with m running over the M vectors of the global batch. The EMA
    state is then the same as on one device with the whole batch. The codebook and the state are
    "only_first_replica" variables: a restarted code takes the first replica's choice of an
    encoder output, and every replica keeps the same codebook.

    `call` returns a dict: "quantized" (input shape; straight-through gradient), "loss" (the
    terms above, scalar), "perplexity" and "codes_used" (scalars, see `usage_statistics`) and
    "code_indices" (input shape without its last axis, int32).
    """

    def __init__(
        self,
        num_embeddings: int,
        latent_dim: int,
        beta: float = 0.25,
        ema: bool = False,
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 1e-3,
        kmeans_init: bool = False,
        l2_normalize: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_embeddings < 2:
            raise ValueError(f"num_embeddings must be at least 2, got {num_embeddings}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {latent_dim}")
        if beta < 0:
            raise ValueError(f"beta must be 0 or more, got {beta}")
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in range (0, 1), got {ema_decay}")
        if ema_epsilon <= 0:
            raise ValueError(f"ema_epsilon must be positive, got {ema_epsilon}")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(
                f"dead_code_threshold must be in range [0, 1), got {dead_code_threshold}"
            )
        self.num_embeddings = num_embeddings
        self.latent_dim = latent_dim
        self.beta = beta
        self.ema = ema
        self.ema_decay = ema_decay
        self.ema_epsilon = ema_epsilon
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_init = kmeans_init
        self.l2_normalize = l2_normalize
        self.seed = seed
        self.restart_seed_generator = (
            keras.random.SeedGenerator(seed) if dead_code_restart else None
        )
        self.kmeans_seed_generator = keras.random.SeedGenerator(seed) if kmeans_init else None

    def build(self, input_shape) -> None:
        if input_shape[-1] != self.latent_dim:
            raise ValueError(
                f"VectorQuantizer expects inputs whose last axis is latent_dim="
                f"{self.latent_dim}, got shape {tuple(input_shape)}"
            )
        codebook_shape = (self.num_embeddings, self.latent_dim)
        # Small codes (uniform in +-1/K) next to the initial encoder outputs (norm ~0.05 for
        # the card) make the first assignments go by direction, spread over the codebook.
        # Sonnet's +-sqrt(3/latent_dim) codes are ~20x larger: every vector starts on one code.
        limit = 1.0 / self.num_embeddings
        self.codebook = self.add_weight(
            shape=codebook_shape,
            initializer=keras.initializers.RandomUniform(-limit, limit),
            trainable=not self.ema,
            aggregation="only_first_replica",
            name="codebook",
        )
        if self.ema:
            self.ema_cluster_size = self._state_variable("ema_cluster_size", (self.num_embeddings,))
            self.ema_cluster_sum = self._state_variable("ema_cluster_sum", codebook_shape)
            self.ema_cluster_size.assign(ops.ones((self.num_embeddings,)))
            self.ema_cluster_sum.assign(self.codebook)
        if self.dead_code_restart:
            self.usage_share = self._state_variable("usage_share", (self.num_embeddings,))
            self.usage_share.assign(ops.full((self.num_embeddings,), self._fresh_share))
        if self.kmeans_init:
            self.initialized = self._state_variable("initialized", ())  # 1 once k-means ran

    @property
    def _fresh_share(self) -> float:
        """u_k of a new or restarted code: twice the dead-code threshold."""
        return 2.0 * self.dead_code_threshold

    def _state_variable(self, name: str, shape: tuple[int, ...]):
        return self.add_weight(
            shape=shape,
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name=name,
        )

    def call(self, latents, training=False):
        latents = self._onto_sphere(latents)
        flat_latents = ops.reshape(latents, (-1, self.latent_dim))
        if training and self.kmeans_init:
            self._initialize_codebook_once(ops.stop_gradient(flat_latents))
        flat_indices = nearest_codes(flat_latents, self._codes())
        flat_codes = self.lookup(flat_indices)
        codes = ops.reshape(flat_codes, ops.shape(latents))
        commitment_loss = ops.mean(ops.square(latents - ops.stop_gradient(codes)))
        loss = self.beta * commitment_loss
        if not self.ema:
            loss = loss + ops.mean(ops.square(ops.stop_gradient(latents) - codes))
        counts = replica_sum(assignment_counts(flat_indices, self.num_embeddings))
        perplexity, codes_used = usage_statistics(counts)
        if training:
            self._update_state(flat_latents, flat_indices, counts, flat_codes)
        # Straight-through estimator: forward pass outputs the codes, backward pass copies the
        # gradient with respect to them unchanged to the encoder outputs.
        quantized = latents + ops.stop_gradient(codes - latents)
        return {
            "quantized": quantized,
            "loss": loss,
            "perplexity": perplexity,
            "codes_used": codes_used,
            "code_indices": ops.reshape(flat_indices, ops.shape(latents)[:-1]),
        }

    def code_indices(self, latents):
        """Index of the nearest code for every vector: [..., latent_dim] -> [...] int32."""
        flat_latents = ops.reshape(self._onto_sphere(latents), (-1, self.latent_dim))
        return ops.reshape(nearest_codes(flat_latents, self._codes()), ops.shape(latents)[:-1])

    def lookup(self, code_indices):
        """Codebook vectors for integer indices: [...] -> [..., latent_dim]."""
        return ops.take(self._codes(), ops.cast(code_indices, "int32"), axis=0)

    def _onto_sphere(self, vectors):
        """vectors / ||vectors|| along the last axis with `l2_normalize`, else unchanged."""
        return ops.normalize(vectors, axis=-1) if self.l2_normalize else vectors

    def _codes(self):
        """The codebook as used: each code projected onto the unit sphere with `l2_normalize`
        (the stored vectors, EMA means of unit vectors, are not)."""
        return self._onto_sphere(self.codebook)

    def _initialize_codebook_once(self, flat_latents) -> None:
        """On the first training call only: codebook <- k-means centroids of `flat_latents`.
        Under a strategy each replica clusters its own vectors and the first one's are kept."""

        def initialize():
            centroids = kmeans(flat_latents, self.num_embeddings, self.kmeans_seed_generator)
            self.codebook.assign(centroids)
            if self.ema:
                self.ema_cluster_size.assign(ops.ones((self.num_embeddings,)))
                self.ema_cluster_sum.assign(centroids)
            self.initialized.assign(1.0)
            return ops.zeros(())

        tf.cond(self.initialized > 0, lambda: ops.zeros(()), initialize)

    def _update_state(self, flat_latents, flat_indices, counts, flat_codes) -> None:
        """EMA and restarts from this batch's vectors [M, D], their code indices [M], the
        vectors per code [K] and their codes [M, D]."""
        flat_latents = ops.stop_gradient(flat_latents)
        if self.ema:
            self._update_ema_codebook(flat_latents, flat_indices, counts)
        if self.dead_code_restart:
            misfits = ops.sum(ops.square(flat_latents - ops.stop_gradient(flat_codes)), axis=1)
            self._restart_dead_codes(flat_latents, counts, misfits)

    def _update_ema_codebook(self, flat_latents, flat_indices, counts) -> None:
        decay = self.ema_decay
        cluster_size = decay * self.ema_cluster_size + (1.0 - decay) * counts
        cluster_sum = decay * self.ema_cluster_sum + (1.0 - decay) * replica_sum(
            ops.segment_sum(flat_latents, flat_indices, num_segments=self.num_embeddings)
        )
        total = ops.sum(cluster_size)
        smoothed_size = (
            (cluster_size + self.ema_epsilon)
            / (total + self.num_embeddings * self.ema_epsilon)
            * total
        )
        self.ema_cluster_size.assign(cluster_size)
        self.ema_cluster_sum.assign(cluster_sum)
        self.codebook.assign(cluster_sum / smoothed_size[:, None])

    def _restart_dead_codes(self, flat_latents, counts, misfits) -> None:
        share = self.ema_decay * self.usage_share + (1.0 - self.ema_decay) * (
            counts / ops.sum(counts)
        )
        dead = share < self.dead_code_threshold
        dead_rows = dead[:, None]
        # Replacements come from this replica's vectors, drawn with probability proportional
        # to their squared distance to their code (as k-means++ seeds), so that they go where
        # the codebook fits worst, not onto the black background's many identical vectors.
        # A replica can get an empty batch (the last batch of an epoch split over more
        # replicas than it has images); it draws the zero row of `padded_pool`, and its choice is
        # discarded (only_first_replica).
        pool, anywhere = padded_pool(flat_latents)
        weights = ops.concatenate([misfits, ops.zeros((1,))])
        weights = ops.where(ops.sum(weights) > 0, weights, anywhere)  # a perfect fit: uniform
        chosen = keras.random.categorical(
            ops.log(weights)[None],
            self.num_embeddings,
            dtype="int32",
            seed=self.restart_seed_generator,
        )[0]
        replacements = ops.take(pool, chosen, axis=0)
        self.codebook.assign(ops.where(dead_rows, replacements, self.codebook))
        self.usage_share.assign(ops.where(dead, self._fresh_share, share))
        if self.ema:
            self.ema_cluster_size.assign(ops.where(dead, 1.0, self.ema_cluster_size))
            self.ema_cluster_sum.assign(ops.where(dead_rows, replacements, self.ema_cluster_sum))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_embeddings": self.num_embeddings,
            "latent_dim": self.latent_dim,
            "beta": self.beta,
            "ema": self.ema,
            "ema_decay": self.ema_decay,
            "ema_epsilon": self.ema_epsilon,
            "dead_code_restart": self.dead_code_restart,
            "dead_code_threshold": self.dead_code_threshold,
            "kmeans_init": self.kmeans_init,
            "l2_normalize": self.l2_normalize,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------


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
    2 where the encoder had stride 2), and a linear 3x3 convolution to one channel; 1/2 is added
    back to undo the encoder's centring. The output is not clipped (see the module docstring).
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
    centred = keras.layers.Conv2D(1, 3, padding="same", name="conv_out")(features)
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
            "(a value above 0.25 was computed on 0-255 pixels, see the modules docstring)"
        )
    return data_variance


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class VQVAE(keras.Model):
    """Encoder -> `VectorQuantizer` -> decoder, trained by its own `train_step`.

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
    epoch to epoch; clipped, every x_hat <= 0 scores as 0 does (on real scans: validation SSIM
    0.52 instead of 0.17 at epoch 12, BENCHMARKS.md). L1 keeps a gradient on every pixel.
    `fit` and `evaluate` report the epoch means of loss, reconstruction_loss, vq_loss,
    perplexity, codes_used, and ssim and psnr (max_val 1) of the clipped reconstructions.

    Under a `tf.distribute` strategy (build and compile the model in `strategy.scope()`) the
    global batch of N images is split over the replicas, n_r each. Replica r differentiates
    (n_r / N) L_r, its mean loss L_r weighted by its share, and the optimizer sums the gradients
    over the replicas, giving the gradient of the global-batch mean (1/N) sum over all images;
    the reported values are global-batch means too, so training matches one device with batch
    N up to rounding.

    A caution on "ssim_l1" from scratch: in a window where the target is flat (the black
    background of a slice, the inside of a uniform region) SSIM's contrast-structure term
    C2 / (var(x_hat) + C2) punishes any variation of the output, so the first steps mostly flatten
    the decoder's random output; the card on brain slices spends ~40 steps on that plateau before
    SSIM climbs, and a very small decoder can lose every ReLU there and stall for good; on 300
    real slices the hifi preset was still on it after 44 steps. So training starts on the
    "mse" loss, whose gradient is strong on a flat output, and hands over to "ssim_l1" over the
    first `mse_warmup_steps` steps (`reconstruction_loss`); validation always uses the configured
    loss alone, so the best checkpoint is chosen on it.
    """

    def __init__(self, hyperparameters: dict, data_variance: float, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = Hyperparameters.from_dict(hyperparameters)
        self.data_variance = _check_data_variance(data_variance)
        settings = self.hyperparameters
        self.encoder = build_encoder(settings)
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
        self.decoder = build_decoder(settings)
        self.trackers = [keras.metrics.Mean(name=name) for name in VQVAE_METRICS]
        self.built = True  # every weight exists once the parts above are made

    @property
    def metrics(self) -> list:
        return self.trackers

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

    def reconstruction_loss(self, images, reconstructions, step=None):
        """The configured L_rec (scalar) of raw reconstructions; see the class docstring.

        Given `step`, the optimizer's step count t, "ssim_l1" is blended with "mse" over the
        first T = `mse_warmup_steps` steps: (1 - w) mse + w ssim_l1 with w = min(t / T, 1).
        """
        mse = ops.mean(ops.square(images - reconstructions)) / self.data_variance
        if self.hyperparameters.reconstruction_loss == "mse":
            return mse
        ssim = structural_similarity(images, ops.clip(reconstructions, 0.0, 1.0))
        l1 = ops.mean(ops.abs(images - reconstructions))
        ssim_l1 = SSIM_LOSS_WEIGHT * (1.0 - ops.mean(ssim)) + (1.0 - SSIM_LOSS_WEIGHT) * l1
        warmup_steps = self.hyperparameters.mse_warmup_steps
        if step is None or warmup_steps == 0:
            return ssim_l1
        weight = ops.minimum(ops.cast(step, "float32") / warmup_steps, 1.0)
        return (1.0 - weight) * mse + weight * ssim_l1

    def _loss_terms(self, images, outputs: dict, step=None) -> dict:
        reconstruction_loss = self.reconstruction_loss(images, outputs["reconstructions"], step)
        return {
            "loss": reconstruction_loss + outputs["loss"],
            "reconstruction_loss": reconstruction_loss,
            "vq_loss": outputs["loss"],
        }

    def _record(self, images, outputs: dict, losses: dict, share) -> dict:
        """Track the step's values over the global batch: each replica's means weighted by its
        `share` and summed over the replicas; perplexity and codes_used are global already."""
        clipped = ops.clip(outputs["reconstructions"], 0.0, 1.0)
        means = {
            **losses,
            "ssim": ops.mean(structural_similarity(images, clipped)),
            "psnr": ops.mean(tf.image.psnr(images, clipped, max_val=1.0)),
        }
        values = {
            **{name: replica_sum(weighted_by_share(mean, share)) for name, mean in means.items()},
            "perplexity": outputs["perplexity"],
            "codes_used": outputs["codes_used"],
        }
        for tracker in self.trackers:
            tracker.update_state(values[tracker.name])
        return step_logs({tracker.name: tracker.result() for tracker in self.trackers})

    def train_step(self, data):
        images = keras.utils.unpack_x_y_sample_weight(data)[0]
        share = batch_share(images)
        with tf.GradientTape() as tape:
            outputs = self._forward(images, training=True)
            losses = self._loss_terms(images, outputs, step=self.optimizer.iterations)
            # The optimizer sums the replicas' gradients (Keras' TF backend all-reduces them
            # with SUM), so each replica differentiates its share of the global-batch mean.
            replica_loss = weighted_by_share(losses["loss"], share)
        gradients = tape.gradient(replica_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        return self._record(images, outputs, losses, share)

    def test_step(self, data):
        images = keras.utils.unpack_x_y_sample_weight(data)[0]
        outputs = self._forward(images, training=False)
        losses = self._loss_terms(images, outputs)
        return self._record(images, outputs, losses, batch_share(images))

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters.to_dict(),
            "data_variance": self.data_variance,
        }


def build_vqvae(hyperparameters: Hyperparameters, data_variance: float) -> VQVAE:
    """A `VQVAE` for `hyperparameters`, its weights built by a call on a dummy batch.

    `data_variance` is the pixel variance of the training images on the [0, 1] scale, e.g.
    `np.var(train.float_images())`.
    """
    model = VQVAE(hyperparameters.to_dict(), data_variance, name="vqvae")
    size = hyperparameters.image_size
    model(np.zeros((1, size, size, 1), dtype="float32"))
    return model


# ---------------------------------------------------------------------------------------------
# PixelCNN prior
# ---------------------------------------------------------------------------------------------


def causal_mask(
    kernel_size: tuple[int, int], in_channels: int, out_channels: int, mask_type: str
) -> np.ndarray:
    """The [kh, kw, in, out] 0/1 mask of a masked convolution, for raster order.

    Ones on every row above the centre and left of the centre on its row; the centre itself is
    1 for type "B" and 0 for type "A". All channels at one position belong to the same code, so
    the mask is the same for every (in, out) pair. For a 3x3 kernel, type A is
    [[1, 1, 1], [1, 0, 0], [0, 0, 0]] and type B [[1, 1, 1], [1, 1, 0], [0, 0, 0]].
    """
    rows, columns = kernel_size
    centre_row, centre_column = rows // 2, columns // 2
    mask = np.zeros((rows, columns, in_channels, out_channels), dtype="float32")
    mask[:centre_row] = 1.0
    mask[centre_row, :centre_column] = 1.0
    if mask_type == "B":
        mask[centre_row, centre_column] = 1.0
    return mask


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MaskedConv2D(keras.layers.Conv2D):
    """A 'same'-padded, stride-1 `Conv2D` whose kernel is multiplied by `causal_mask` in every
    call (the stored kernel itself is never masked), so the output at (i, j) sees only inputs
    before (i, j) in raster order (type "A") or at and before it (type "B").
    """

    def __init__(self, mask_type: str, filters: int, kernel_size, **kwargs):
        if mask_type not in ("A", "B"):
            raise ValueError(f'mask_type must be "A" or "B", got {mask_type!r}')
        super().__init__(filters, kernel_size, **{"padding": "same", **kwargs})
        if (
            self.padding != "same"
            or self.strides != (1, 1)
            or self.dilation_rate != (1, 1)
            or self.groups != 1
            or self.data_format != "channels_last"
        ):
            raise ValueError(
                "MaskedConv2D needs padding='same', strides 1, dilation 1, groups 1 and "
                "channels_last data, so that output (i, j) is aligned with input (i, j)"
            )
        if any(size % 2 == 0 for size in self.kernel_size):
            raise ValueError(f"MaskedConv2D needs an odd kernel size, got {self.kernel_size}")
        self.mask_type = mask_type

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.mask = causal_mask(self.kernel_size, input_shape[-1], self.filters, self.mask_type)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * self.mask)

    def get_config(self) -> dict:
        return {**super().get_config(), "mask_type": self.mask_type}


def pixelcnn_residual_block(features, name: str):
    """van den Oord et al. 2016 (fig. 5): x + relu(1x1(relu(3x3 mask B(relu(1x1(x)))))), with
    the hidden width half of x's."""
    filters = features.shape[-1]
    hidden = keras.layers.Conv2D(filters // 2, 1, activation="relu", name=f"{name}_reduce")(
        features
    )
    hidden = MaskedConv2D("B", filters // 2, 3, activation="relu", name=f"{name}_masked")(hidden)
    hidden = keras.layers.Conv2D(filters, 1, activation="relu", name=f"{name}_expand")(hidden)
    return keras.layers.Add(name=f"{name}_add")([features, hidden])


def build_pixelcnn_network(hyperparameters: Hyperparameters) -> keras.Model:
    """Code maps as features [N, h, h, C] -> logits [N, h, h, K], where C = K for one-hot codes
    and C = `pixelcnn_embedding_dim` for embedded ones (`PixelCNN.code_features`).

    7x7 mask-A convolution (ReLU), `pixelcnn_residual_blocks` residual blocks with a 1x1
    mask-B convolution (ReLU) between each pair (R, B, R, B, R, B, R for 4 blocks), ReLU, and a
    1x1 convolution to K logits.
    """
    codes, filters = hyperparameters.num_embeddings, hyperparameters.pixelcnn_filters
    code_features = keras.Input(
        (None, None, hyperparameters.pixelcnn_embedding_dim or codes), name="code_features"
    )
    features = MaskedConv2D(
        "A", filters, hyperparameters.pixelcnn_first_kernel, activation="relu", name="mask_a"
    )(code_features)
    for index in range(hyperparameters.pixelcnn_residual_blocks):
        if index > 0:
            features = MaskedConv2D("B", filters, 1, activation="relu", name=f"mask_b_{index}")(
                features
            )
        features = pixelcnn_residual_block(features, name=f"residual_{index}")
    features = keras.layers.ReLU(name="relu")(features)
    logits = keras.layers.Conv2D(codes, 1, name="logits")(features)
    return keras.Model(code_features, logits, name="pixelcnn_network")


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class PixelCNN(keras.Model):
    """Autoregressive prior over code maps: int code maps [N, h, h] -> logits [N, h, h, K].

    `PixelCNN(hyperparameters)` takes the plain dict of `Hyperparameters.to_dict()` (the whole
    config). The masks make the logits at (i, j) depend only on the codes before (i, j) in
    raster order.

    It is trained by its own `train_step`: compile it with an optimizer and `fit` it on batches
    of code maps, which are also the targets (a y given is ignored). The loss is the mean over
    every position of every map of the cross-entropy -log softmax(logits(i, j))[k(i, j)] (nats
    per code); "accuracy" is the share of positions whose most likely code is k(i, j). Under a
    `tf.distribute` strategy both are weighted by each replica's share of the global batch, as
    in `VQVAE`. (A batch of maps alone, not (maps, maps), is also what Keras 3 can hand to
    several workers of a `MultiWorkerMirroredStrategy`: it fails to reduce (x, y) batches.)
    """

    def __init__(self, hyperparameters: dict, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = Hyperparameters.from_dict(hyperparameters)
        self.network = build_pixelcnn_network(self.hyperparameters)
        embedding_dim = self.hyperparameters.pixelcnn_embedding_dim
        self.code_embedding = None
        if embedding_dim:
            self.code_embedding = keras.layers.Embedding(
                self.num_embeddings, embedding_dim, name="code_embedding"
            )
            self.code_embedding.build()
        self.trackers = [keras.metrics.Mean(name=name) for name in PIXELCNN_METRICS]
        self.built = True  # every weight exists once the network is made

    @property
    def metrics(self) -> list:
        return self.trackers

    @property
    def code_map_size(self) -> int:
        return self.hyperparameters.code_map_size

    @property
    def num_embeddings(self) -> int:
        return self.hyperparameters.num_embeddings

    def code_features(self, codes):
        """Integer codes [...] -> the network's input features [..., C]: one-hot vectors
        (C = K) or, with `pixelcnn_embedding_dim` E, learned embeddings (C = E)."""
        codes = ops.cast(codes, "int32")
        if self.code_embedding is None:
            return ops.one_hot(codes, self.num_embeddings)
        return self.code_embedding(codes)

    def call(self, code_maps):
        return apply_to_rows(self.network, self.code_features(code_maps))

    def _loss_and_accuracy(self, code_maps, training: bool) -> dict:
        code_maps = ops.cast(code_maps, "int32")
        logits = self(code_maps, training=training)
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            code_maps, logits, from_logits=True
        )
        hits = ops.cast(ops.argmax(logits, axis=-1) == code_maps, "float32")
        return {"loss": ops.mean(cross_entropy), "accuracy": ops.mean(hits)}

    def _record(self, values: dict, share) -> dict:
        for tracker in self.trackers:
            tracker.update_state(replica_sum(weighted_by_share(values[tracker.name], share)))
        return step_logs({tracker.name: tracker.result() for tracker in self.trackers})

    def train_step(self, data):
        code_maps = keras.utils.unpack_x_y_sample_weight(data)[0]
        share = batch_share(code_maps)
        with tf.GradientTape() as tape:
            values = self._loss_and_accuracy(code_maps, training=True)
            replica_loss = weighted_by_share(values["loss"], share)  # see VQVAE.train_step
        gradients = tape.gradient(replica_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        return self._record(values, share)

    def test_step(self, data):
        code_maps = keras.utils.unpack_x_y_sample_weight(data)[0]
        return self._record(
            self._loss_and_accuracy(code_maps, training=False), batch_share(code_maps)
        )

    def get_config(self) -> dict:
        return {"name": self.name, "hyperparameters": self.hyperparameters.to_dict()}


def build_pixelcnn(hyperparameters: Hyperparameters) -> PixelCNN:
    """A `PixelCNN` for `hyperparameters`, its weights built by a call on a dummy batch."""
    model = PixelCNN(hyperparameters.to_dict(), name="pixelcnn")
    size = hyperparameters.code_map_size
    model(np.zeros((1, size, size), dtype="int32"))
    return model


# ---------------------------------------------------------------------------------------------
# Sampling, encoding and decoding code maps
# ---------------------------------------------------------------------------------------------


def _taps(layer) -> np.ndarray:
    """Flat indices dy * kw + dx of the kernel taps a convolution sees: the unmasked ones of a
    `MaskedConv2D`, every tap of a plain one."""
    rows, columns = layer.kernel_size
    if isinstance(layer, MaskedConv2D):
        visible = causal_mask(layer.kernel_size, 1, 1, layer.mask_type)[..., 0, 0]
    else:
        visible = np.ones((rows, columns), dtype="float32")
    return np.flatnonzero(visible.ravel())


def _tap_kernel(layer):
    """The kernel rows of a convolution's visible taps (`_taps`, in that order), stacked as one
    matrix [V * C_in, C_out]."""
    kernel = ops.reshape(layer.kernel, (-1, *layer.kernel.shape[2:]))  # [kh * kw, C_in, C_out]
    return ops.reshape(ops.take(kernel, _taps(layer), axis=0), (-1, layer.filters))


def _convolution_at(layer, tap_kernel, inputs):
    """The output [N, C_out] of a stride-1 convolution `layer` at one position, from the inputs
    [N, V, C_in] under its V visible taps and their `_tap_kernel`:
    activation(sum_v inputs[:, v] @ kernel[tap v] + bias)."""
    outputs = ops.matmul(ops.reshape(inputs, (ops.shape(inputs)[0], -1)), tap_kernel)
    if layer.use_bias:
        outputs = outputs + layer.bias
    return layer.activation(outputs)


BLOCK_PARTS = ("reduce", "masked", "expand")  # the layers of `pixelcnn_residual_block`, in order


class _RasterScan:
    """The PixelCNN run position by position in raster order, each position's features computed
    once and cached (the fast generation of Ramachandran et al. 2017, "Fast Generation for
    Convolutional Autoregressive Models", https://arxiv.org/abs/1704.06001).

    At position t = (i, j) every layer is evaluated at t alone: a 1x1 convolution is a matmul
    of the [N, C] features at t, and a masked convolution with a larger kernel (the 7x7 mask A
    over the code features, each residual block's 3x3 mask B) gathers its V visible taps
    (i + dy, j + dx) from a cache of its inputs, a `tf.TensorArray` of h*h + 1 entries [N, C]
    whose last entry is the zeros of 'same' padding. Every visible tap is at or before t in
    raster order, so it is already in the cache. A step costs one position's worth of
    compute, about 1/h^2 of a whole-map call: drawing a map costs about one forward pass.
    The layers are those `build_pixelcnn_network` makes, looked up by name.
    """

    def __init__(self, pixelcnn: PixelCNN):
        network = pixelcnn.network
        self.size = pixelcnn.code_map_size
        self.code_features = pixelcnn.code_features
        self.first = network.get_layer("mask_a")
        blocks = pixelcnn.hyperparameters.pixelcnn_residual_blocks
        self.joins = [network.get_layer(f"mask_b_{index}") for index in range(1, blocks)]
        self.blocks = [
            [network.get_layer(f"residual_{index}_{part}") for part in BLOCK_PARTS]
            for index in range(blocks)
        ]
        self.final_activation = network.get_layer("relu")
        self.head = network.get_layer("logits")
        self.cached_layers = [self.first] + [masked for _, masked, _ in self.blocks]
        self.layers = [self.first, *self.joins, *(part for block in self.blocks for part in block)]
        self.layers.append(self.head)

    def tap_positions(self, layer, position):
        """Cache indices [V] of `layer`'s visible taps around `position` (h*h where a tap falls
        outside the map, the zero entry)."""
        rows, columns = layer.kernel_size
        taps = _taps(layer)
        tap_rows = position // self.size + taps // columns - rows // 2
        tap_columns = position % self.size + taps % columns - columns // 2
        inside = (tap_rows >= 0) & (tap_columns >= 0) & (tap_columns < self.size)
        return tf.where(inside, tap_rows * self.size + tap_columns, self.size * self.size)

    def __call__(self, count, choose_codes):
        """Run the scan over [count] maps; `choose_codes(position, logits [count, K])` returns
        the int32 codes [count] at `position`. Returns the codes [count, h, h]."""
        positions = self.size * self.size

        def empty_cache(layer):
            channels = layer.kernel.shape[2]
            cache = tf.TensorArray(tf.float32, size=positions + 1, element_shape=(None, channels))
            return cache.write(positions, tf.zeros(tf.stack([count, channels])))

        def gather(cache, layer, position):
            return tf.transpose(cache.gather(self.tap_positions(layer, position)), (1, 0, 2))

        # Gathered once, outside the loop: every step multiplies by the same tap kernels.
        tap_kernels = {layer.name: _tap_kernel(layer) for layer in self.layers}

        def at(layer, inputs):
            return _convolution_at(layer, tap_kernels[layer.name], inputs)

        def step(position, caches, codes):
            features = at(self.first, gather(caches[0], self.first, position))
            caches = list(caches)
            for index, (reduce, masked, expand) in enumerate(self.blocks):
                if index > 0:
                    features = at(self.joins[index - 1], features[:, None])
                hidden = at(reduce, features[:, None])
                caches[index + 1] = caches[index + 1].write(position, hidden)
                hidden = at(masked, gather(caches[index + 1], masked, position))
                features = features + at(expand, hidden[:, None])
            logits = at(self.head, self.final_activation(features)[:, None])
            drawn = choose_codes(position, logits)
            caches[0] = caches[0].write(position, self.code_features(drawn))
            return position + 1, caches, codes.write(position, drawn)

        _, _, codes = tf.while_loop(
            lambda position, *_: position < positions,
            step,
            (
                tf.constant(0),
                [empty_cache(layer) for layer in self.cached_layers],
                tf.TensorArray(tf.int32, size=positions, element_shape=(None,)),
            ),
        )
        return tf.reshape(tf.transpose(codes.stack()), tf.stack([count, self.size, self.size]))


class _CodeMapSampler:
    """Raster-order ancestral sampling from one PixelCNN, compiled once.

    One `tf.function` runs `_RasterScan` over the h*h positions: at position (i, j) it draws
    k(i, j) ~ Categorical(softmax(logits(i, j) / T)) for every map, from the codes drawn so far.
    The draws come from a `keras.random.SeedGenerator` reset to the caller's seed at the start
    of each call.
    """

    def __init__(self, pixelcnn: PixelCNN):
        self._pixelcnn = weakref.ref(pixelcnn)  # the cache is keyed by the model: no cycle
        self._seed_generator = keras.random.SeedGenerator(0)
        self.sample = tf.function(
            self._sample,
            input_signature=(
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((), tf.int32),
            ),
        )

    def _sample(self, count, temperature, seed):
        state = self._seed_generator.state
        state.assign(tf.cast(tf.stack([seed, 0]), state.dtype))

        def draw(position, logits):
            return keras.random.categorical(
                logits / temperature, 1, dtype="int32", seed=self._seed_generator
            )[:, 0]

        return _RasterScan(self._pixelcnn())(count, draw)


_SAMPLERS: weakref.WeakKeyDictionary[PixelCNN, _CodeMapSampler] = weakref.WeakKeyDictionary()


def sample_code_maps(
    pixelcnn: PixelCNN, count: int, temperature: float = 1.0, seed: int | None = None
) -> np.ndarray:
    """Draw `count` code maps [count, h, h] int32 from the prior, in raster order.

    `temperature` T > 0 divides the logits (T < 1 sharper, T > 1 flatter). The same `seed`
    gives the same maps; `seed=None` draws one from Python's `random` (seeded by
    `keras.utils.set_random_seed`). The compiled sampler is cached per model.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if seed is None:
        seed = random.randrange(2**31)
    if pixelcnn not in _SAMPLERS:
        _SAMPLERS[pixelcnn] = _CodeMapSampler(pixelcnn)
    code_maps = _SAMPLERS[pixelcnn].sample(
        tf.constant(int(count), tf.int32),
        tf.constant(float(temperature), tf.float32),
        tf.constant(int(seed) % 2**31, tf.int32),
    )
    return code_maps.numpy()


def _in_batches(function: Callable, inputs: np.ndarray, batch_size: int, empty_shape) -> np.ndarray:
    """Apply `function` to consecutive slices of `batch_size` rows and concatenate."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    outputs = [
        np.asarray(function(inputs[start : start + batch_size]))
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros(empty_shape, dtype="float32")


def _checked_images(vqvae: VQVAE, images) -> np.ndarray:
    size = vqvae.hyperparameters.image_size
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[1:] != (size, size, 1):
        raise ValueError(f"images must have shape (N, {size}, {size}, 1), got {images.shape}")
    if images.size and not (
        np.isfinite(images).all() and 0.0 <= images.min() <= images.max() <= 1.0
    ):
        raise ValueError(
            f"images must be finite and on the [0, 1] scale, got values in "
            f"[{images.min()}, {images.max()}] (divide 0-255 pixels by 255)"
        )
    return images


def _checked_code_maps(vqvae: VQVAE, code_maps) -> np.ndarray:
    size = vqvae.hyperparameters.code_map_size
    codes = vqvae.hyperparameters.num_embeddings
    code_maps = np.asarray(code_maps)
    if code_maps.ndim != 3 or code_maps.shape[1:] != (size, size):
        raise ValueError(f"code_maps must have shape (N, {size}, {size}), got {code_maps.shape}")
    if code_maps.size and not np.issubdtype(code_maps.dtype, np.integer):
        raise ValueError(f"code_maps must hold integers, got dtype {code_maps.dtype}")
    if code_maps.size and not 0 <= code_maps.min() <= code_maps.max() < codes:
        raise ValueError(
            f"code_maps values must be in [0, {codes}), got [{code_maps.min()}, {code_maps.max()}]"
        )
    return code_maps.astype("int32")


def encode_code_maps(vqvae: VQVAE, images, batch_size: int = 64) -> np.ndarray:
    """Images [N, S, S, 1] float in [0, 1] -> code maps [N, h, h] int32, `batch_size` at a time."""
    images = _checked_images(vqvae, images)
    size = vqvae.hyperparameters.code_map_size
    code_maps = _in_batches(vqvae.code_indices, images, batch_size, (0, size, size))
    return code_maps.astype("int32")


def decode_code_maps(vqvae: VQVAE, code_maps, batch_size: int = 64) -> np.ndarray:
    """Code maps [N, h, h] int -> images [N, S, S, 1] float32 clipped to [0, 1], batched."""
    code_maps = _checked_code_maps(vqvae, code_maps)
    size = vqvae.hyperparameters.image_size
    images = _in_batches(vqvae.decode_indices, code_maps, batch_size, (0, size, size, 1))
    return images.astype("float32")
