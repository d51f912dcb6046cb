"""The vector quantizer of the VQ-VAE, with its k-means initialisation.

`VectorQuantizer` replaces each encoder output by its nearest codebook vector (van den Oord et
al. 2017), optionally with an EMA codebook, dead-code restarts, k-means initialisation and
cosine (unit-sphere) codes; `nearest_codes`, `assignment_counts` and `kmeans` are the pieces it
is built from.
"""

from __future__ import annotations

import keras
from keras import ops

from brain_vqvae.metrics import usage_statistics
from brain_vqvae.model.distribute import replica_sum
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.steps import run_stateless
from hyperparameters import check_quantizer_settings


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


KMEANS_ITERATIONS = 10  # Lloyd iterations after the k-means++ seeding


def padded_pool(vectors):
    """Vectors [M, D] to draw from, as (pool [M + 1, D], anywhere [M + 1]): the vectors with a
    zero row appended, and weights uniform over the M vectors, or all on the zero row if M = 0
    (an empty replica batch), so that a draw always has something to pick."""
    rows = ops.shape(vectors)[0]
    pool = ops.concatenate([vectors, ops.zeros((1, ops.shape(vectors)[1]), vectors.dtype)])
    no_rows = ops.cast(ops.reshape(rows == 0, (1,)), "float32")
    return pool, ops.concatenate([ops.ones((rows,)), no_rows])


def weighted_choice(weights, draw):
    """An index j of weights [M] (>= 0, not all 0) drawn with probability w_j / sum_k w_k by
    inverse transform sampling from `draw`, a uniform number in (0, 1]: the first j whose
    cumulative weight c_j reaches draw c_M. A j with w_j = 0 has c_j = c_(j-1), so is never the
    first. Scalar int32; O(M), with one random number per draw."""
    cumulative = ops.cumsum(weights)
    return ops.sum(ops.cast(cumulative < draw * cumulative[-1], "int32"))


def kmeans_plus_plus_seeds(vectors, count: int, seed_generator):
    """`count` seeds [count, D] for k-means drawn from vectors [M, D] by k-means++ (Arthur and
    Vassilvitskii 2007): the first uniformly, each next one with probability proportional to
    its squared distance D(x)^2 to the nearest seed so far. Copies of a chosen vector (the
    black background's identical encoder outputs) have D(x) = 0 and are never chosen again
    while any other vector is left. With no vectors (an empty replica batch) the seeds are 0.
    The `count` uniform numbers of the draws (`weighted_choice`) are drawn from
    `seed_generator` at once, before the loop, as a loop body cannot advance a generator on
    every backend."""
    rows = ops.shape(vectors)[0]
    pool, anywhere = padded_pool(vectors)
    draws = 1.0 - keras.random.uniform((count,), seed=seed_generator)  # in (0, 1]

    def add_seed(index, state):
        seeds, nearest = state
        weights = ops.where(ops.sum(nearest) > 0, nearest, anywhere)  # all 0: copies of one
        seed = ops.take(pool, weighted_choice(weights, ops.take(draws, index)), axis=0)
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
    VQ-VAE then spends its first epochs with a single code in use (BENCHMARKS.md).

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

    State changes (EMA, restarts, k-means) happen only when called with `training=True`, as
    assignments to the layer's variables, so they run inside a compiled training step on
    TensorFlow and JAX alike (`steps`).

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
        check_quantizer_settings(
            num_embeddings=num_embeddings,
            latent_dim=latent_dim,
            beta=beta,
            ema_decay=ema_decay,
            ema_epsilon=ema_epsilon,
            dead_code_threshold=dead_code_threshold,
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
        # Small codes (uniform in +-1/K), smaller than the initial encoder outputs, make the
        # first assignments go by direction, spread over the codebook. Sonnet's
        # +-sqrt(3/latent_dim) codes are much larger than those outputs, so every vector
        # starts on the one code nearest the origin.
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
            self.ema_cluster_sum.assign(ops.copy(self.codebook.value))  # its own buffer (JAX)
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
        return self._onto_sphere(self.codebook.value)

    def _initialize_codebook_once(self, flat_latents) -> None:
        """On the first training call only (`initialized` = 0): codebook <- k-means centroids
        of `flat_latents`, and with EMA N_k <- 1 and m_k <- the centroids. Under a strategy
        each replica clusters its own vectors and the first one's are kept.

        The branch is chosen by `ops.cond` and assigns nothing itself; the state is assigned
        after it, unchanged once initialised. (JAX traces both branches, and an assignment
        inside one would leak out of it.) For the same reason k-means reads the seed generator
        without advancing it: it runs once."""
        generator_state = self.kmeans_seed_generator.state

        def clustered():
            return run_stateless(
                [generator_state],
                [generator_state.value],
                lambda: kmeans(flat_latents, self.num_embeddings, self.kmeans_seed_generator),
            )[0]

        fresh = ops.equal(self.initialized.value, 0.0)
        centroids = ops.cond(fresh, clustered, lambda: self.codebook.value)
        self.codebook.assign(centroids)
        if self.ema:
            self.ema_cluster_size.assign(ops.where(fresh, 1.0, self.ema_cluster_size.value))
            self.ema_cluster_sum.assign(ops.where(fresh, centroids, self.ema_cluster_sum.value))
        self.initialized.assign(1.0)

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
        self.codebook.assign(ops.where(dead_rows, replacements, self.codebook.value))
        self.usage_share.assign(ops.where(dead, self._fresh_share, share))
        if self.ema:
            self.ema_cluster_size.assign(ops.where(dead, 1.0, self.ema_cluster_size.value))
            cluster_sum = self.ema_cluster_sum.value
            self.ema_cluster_sum.assign(ops.where(dead_rows, replacements, cluster_sum))

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
