"""Drawing code maps from a trained `PixelCNN`, and turning images into code maps and back with
a trained `VQVAE`.

`sample_code_maps` draws new maps position by position in raster order, in one compiled loop
that computes each position's features once and caches them (`_RasterScan` for the masked
PixelCNN, `_GatedRasterScan` for the gated one), optionally keeping only the top-k codes or the
nucleus (top-p) of each position's distribution (`filter_logits`), and steering a conditional
draw towards the asked values (`guided_logits`); `encode_code_maps` and `decode_code_maps`
check their inputs and run the VQ-VAE in batches.

The scans are written once in `keras.ops` (`ops.fori_loop`) and run on Keras' TensorFlow or
JAX backend, as `KERAS_BACKEND` says. What differs is confined to a few helpers: the caches
(`_empty_cache`, `_cache_write`, `_cache_read`: a `tf.TensorArray` on TensorFlow, whose writes
do not copy the cache outside XLA; a preallocated array updated in place under `jax.jit` on
JAX), the draw of one position's codes from an explicit seed (`_draw_codes`), and the compiled
function (`_compiled_sampler`: `tf.function`, or `jax.jit` over the model's weights).
"""

from __future__ import annotations

import functools
import random
import weakref
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from brain_vqvae.model.conditions import condition_batch, guidance_stages
from brain_vqvae.model.distribute import TENSORFLOW
from brain_vqvae.model.gated_prior import gated_activation
from brain_vqvae.model.prior import BLOCK_PARTS, MaskedConv2D, PixelCNN, causal_mask
from brain_vqvae.model.steps import run_stateless
from brain_vqvae.model.vqvae import VQVAE
from hyperparameters import (
    check_at_least,
    check_guidance,
    check_sample_count,
    check_temperature,
    check_top_k,
    check_top_p,
)

if TENSORFLOW:
    import tensorflow as tf

    def _empty_cache(entries: int, shape: tuple, dtype: str = "float32", padding: bool = True):
        """A cache of `entries` entries of `shape`, plus one entry of zeros at index `entries`
        (the 'same' padding a tap outside the map reads) when `padding`."""
        cache = tf.TensorArray(dtype, size=entries + padding, element_shape=shape)
        return cache.write(entries, tf.zeros(shape, dtype)) if padding else cache

    def _cache_write(cache, index, value):
        """`cache` with entry `index` set to `value`."""
        return cache.write(index, value)

    def _cache_read(cache, indices):
        """The entries `indices` [V] of `cache`, stacked: [V, *shape]."""
        return cache.gather(indices)

    def _draw_codes(logits, seed):
        """One code [N] int32 per row of `logits` [N, K] from the int32 seed [2]: Keras'
        `keras.random.categorical` with that seed (a `SeedGenerator`'s int64 state, folded
        into int32 as Keras' TensorFlow backend does)."""
        seed = ops.cast(ops.mod(ops.cast(seed, "int64"), 2**31 - 2), "int32")
        return ops.cast(tf.random.stateless_categorical(logits, 1, seed=seed)[:, 0], "int32")

else:
    import jax

    def _empty_cache(entries: int, shape: tuple, dtype: str = "float32", padding: bool = True):
        """A cache of `entries` entries of `shape`, plus one entry of zeros at index `entries`
        (the 'same' padding a tap outside the map reads) when `padding`."""
        return ops.zeros((entries + padding, *shape), dtype)

    def _cache_write(cache, index, value):
        """`cache` with entry `index` set to `value` (in place under `jax.jit`)."""
        return ops.slice_update(cache, (index,) + (0,) * len(value.shape), value[None])

    def _cache_read(cache, indices):
        """The entries `indices` [V] of `cache`, stacked: [V, *shape]."""
        return ops.take(cache, indices, axis=0)

    def _draw_codes(logits, seed):
        """One code [N] int32 per row of `logits` [N, K] from the seed [2] (`jax.random`'s
        key data, uint32)."""
        seed = ops.cast(seed, "uint32")
        return keras.random.categorical(logits, 1, dtype="int32", seed=seed)[:, 0]


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


class _RasterScan:
    """The PixelCNN run position by position in raster order, each position's features computed
    once and cached (the fast generation of Ramachandran et al. 2017, "Fast Generation for
    Convolutional Autoregressive Models", https://arxiv.org/abs/1704.06001).

    At position t = (i, j) every layer is evaluated at t alone: a 1x1 convolution is a matmul
    of the [N, C] features at t, and a masked convolution with a larger kernel (the 7x7 mask A
    over the code features, each residual block's 3x3 mask B) gathers its V visible taps
    (i + dy, j + dx) from a cache of its inputs, h*h + 1 entries [N, C] (`_empty_cache`) whose
    last entry is the zeros of 'same' padding. Every visible tap is at or before t in
    raster order, so it is already in the cache. A step costs one position's worth of
    compute, about 1/h^2 of a whole-map call: drawing a map costs about one forward pass.
    The layers are those `build_masked_network` makes, looked up by name.
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
        return ops.where(inside, tap_rows * self.size + tap_columns, self.size * self.size)

    def __call__(self, count: int, choose_codes, condition_features=None):
        """Run the scan over [count] maps; `choose_codes(position, logits [count, K])` returns
        the int32 codes [count] at `position` (a masked prior takes no conditions). Returns the
        codes [count, h, h]."""
        positions = self.size * self.size

        def gather(cache, layer, position):  # [N, V, C]
            return ops.transpose(_cache_read(cache, self.tap_positions(layer, position)), (1, 0, 2))

        # Gathered once, outside the loop: every step multiplies by the same tap kernels.
        tap_kernels = {layer.name: _tap_kernel(layer) for layer in self.layers}

        def at(layer, inputs):
            return _convolution_at(layer, tap_kernels[layer.name], inputs)

        def step(position, state):
            caches, codes = list(state[0]), state[1]
            features = at(self.first, gather(caches[0], self.first, position))
            for index, (reduce, masked, expand) in enumerate(self.blocks):
                if index > 0:
                    features = at(self.joins[index - 1], features[:, None])
                hidden = at(reduce, features[:, None])
                caches[index + 1] = _cache_write(caches[index + 1], position, hidden)
                hidden = at(masked, gather(caches[index + 1], masked, position))
                features = features + at(expand, hidden[:, None])
            logits = at(self.head, self.final_activation(features)[:, None])
            drawn = choose_codes(position, logits)
            caches[0] = _cache_write(caches[0], position, self.code_features(drawn))
            return caches, _cache_write(codes, position, drawn)

        caches = [
            _empty_cache(positions, (count, layer.kernel.shape[2])) for layer in self.cached_layers
        ]
        codes = _empty_cache(positions, (count,), "int32", padding=False)
        _, codes = ops.fori_loop(0, positions, step, (caches, codes))
        codes = _cache_read(codes, ops.arange(positions))  # [h*h, N]
        return ops.reshape(ops.transpose(codes), (count, self.size, self.size))


class _GatedRasterScan:
    """The gated PixelCNN (`build_gated_network`) run in raster order, each position's features
    computed once and cached; the same interface as `_RasterScan`.

    Rows: the vertical stack at row i sees rows <= i only, and reaches the horizontal stack at
    row i + 1 only. So once row i is drawn, every layer's vertical row i is computed from the
    p d + 1 rows above it in that layer's input cache (`_empty_cache`: h + 1 rows
    [N, w, C], the last the zeros of the padding): the layer's own vertical convolution on that
    strip gives one output row. Its pre-activations through the layer's 1x1 `v_to_h` are row
    i + 1's vertical contributions [N, w, 2F] to the horizontal stack (row 0's: `v_to_h` of
    zeros, the padding of `shift_down`); its gated output joins the next layer's input cache.
    Over a map this costs one vertical pass of the network.

    Positions: at (i, j) each layer's horizontal pre-activation gathers its p + 1 taps from a
    cache of the row's horizontal inputs (w + 1 entries [N, C]), adds the vertical
    contribution at column j, and goes through the gate and the 1x1 residual; one step costs
    one position's worth of the horizontal stack and the logits.

    Conditions: the condition features c of a conditional prior do not change while a map is
    drawn, so each layer's projections C_v c and C_h c [N, h, w, 2F] are computed once, before
    the scan, and added at their row (vertical) and position (horizontal).
    """

    def __init__(self, pixelcnn: PixelCNN):
        network = pixelcnn.network
        self.size = pixelcnn.code_map_size
        self.code_features = pixelcnn.code_features
        layers = pixelcnn.hyperparameters.pixelcnn_gated_layers
        self.layers = [network.get_layer(f"gated_{index}") for index in range(layers)]
        self.final_activation = network.get_layer("relu")
        self.head = network.get_layer("logits")

    def vertical_rows(self, layer, row):
        """Cache indices [p d + 1] of the rows row - p d .. row (h, the zero row, above 0)."""
        span = layer.reach * layer.dilation
        rows = row - span + np.arange(span + 1, dtype="int32")
        return ops.where(rows >= 0, rows, self.size)

    def horizontal_taps(self, layer) -> np.ndarray:
        """Cache indices [w, p + 1] of the horizontal kernel's taps a = 0..p at each column j,
        the columns j - s - (p - a) d (w, the zero entry, left of the map); a constant table,
        so that a step looks its row up with one gather."""
        offsets = layer.shift + (layer.reach - np.arange(layer.reach + 1)) * layer.dilation
        columns = np.arange(self.size)[:, None] - offsets
        return np.where(columns >= 0, columns, self.size).astype("int32")

    def condition_terms(self, count: int, condition_features):
        """Each layer's (C_v c, C_h c), both [N, h, w, 2F]; None for an unconditional layer."""
        terms = []
        for layer in self.layers:
            shape = (count, self.size, self.size, 2 * layer.filters)
            projections = (layer.condition_to_vertical, layer.condition_to_horizontal)
            terms.append(
                tuple(ops.broadcast_to(p(condition_features), shape) for p in projections)
                if layer.conditioned
                else None
            )
        return terms

    def vertical_row(self, row, caches, condition_terms):
        """Write every layer's vertical output at `row` into the next layer's cache; return the
        caches and the next row's contributions [N, w, 2F], one per layer."""
        caches, contributions = list(caches), []
        for index, layer in enumerate(self.layers):
            strip = _cache_read(caches[index], self.vertical_rows(layer, row))  # [p d + 1, N, w, C]
            strip = ops.pad(ops.transpose(strip, (1, 0, 2, 3)), layer.vertical_padding(rows=False))
            preactivations = layer.vertical(strip)  # [N, 1, w, 2F]
            if condition_terms[index] is not None:
                preactivations += ops.take(
                    condition_terms[index][0], ops.reshape(row, (1,)), axis=1
                )
            if index + 1 < len(self.layers):
                caches[index + 1] = _cache_write(
                    caches[index + 1], row, gated_activation(preactivations[:, 0])
                )
            contributions.append(self.contribution(layer, preactivations))
        return caches, contributions

    def contribution(self, layer, preactivations):
        """`v_to_h` of the vertical pre-activations [N, 1, w, 2F] -> [N, w, 2F]."""
        return layer.vertical_to_horizontal(preactivations)[:, 0]

    def __call__(self, count: int, choose_codes, condition_features=None):
        """Run the scan over [count] maps; `choose_codes(position, logits [count, K])` returns
        the int32 codes [count] at `position`; `condition_features` c [count, 1 or h, 1 or w, F]
        of a conditional prior. Returns the codes [count, h, h]."""
        size = self.size
        condition_terms = self.condition_terms(count, condition_features)
        tap_kernels = {layer.name: _tap_kernel(layer.horizontal) for layer in self.layers}
        tap_kernels.update(
            {layer.name + "_residual": _tap_kernel(layer.residual) for layer in self.layers}
        )
        tap_kernels["logits"] = _tap_kernel(self.head)
        channels = [layer.vertical.kernel.shape[2] for layer in self.layers]
        tap_tables = [ops.convert_to_tensor(self.horizontal_taps(layer)) for layer in self.layers]

        def row_step(row, state):
            vertical_caches, contributions, codes = state
            # What the row adds to every horizontal pre-activation [N, w, 2F], per layer: the
            # vertical stack's contribution, and the conditions' C_h c at this row.
            row_terms = [
                contribution if terms is None else contribution + ops.take(terms[1], row, axis=1)
                for contribution, terms in zip(contributions, condition_terms, strict=True)
            ]

            def column_step(column, state):
                horizontal_caches, row_codes = list(state[0]), state[1]
                features = None
                for index, layer in enumerate(self.layers):
                    taps = _cache_read(
                        horizontal_caches[index], ops.take(tap_tables[index], column, axis=0)
                    )
                    preactivations = _convolution_at(
                        layer.horizontal, tap_kernels[layer.name], ops.transpose(taps, (1, 0, 2))
                    )
                    preactivations += ops.take(row_terms[index], column, axis=1)
                    update = _convolution_at(
                        layer.residual,
                        tap_kernels[layer.name + "_residual"],
                        gated_activation(preactivations)[:, None],
                    )
                    features = update if layer.first else features + update
                    if index + 1 < len(self.layers):
                        horizontal_caches[index + 1] = _cache_write(
                            horizontal_caches[index + 1], column, features
                        )
                logits = _convolution_at(
                    self.head, tap_kernels["logits"], self.final_activation(features)[:, None]
                )
                drawn = choose_codes(row * size + column, logits)
                horizontal_caches[0] = _cache_write(
                    horizontal_caches[0], column, self.code_features(drawn)
                )
                return horizontal_caches, _cache_write(row_codes, column, drawn)

            horizontal_caches, row_codes = ops.fori_loop(
                0,
                size,
                column_step,
                (
                    [_empty_cache(size, (count, width)) for width in channels],
                    _empty_cache(size, (count,), "int32", padding=False),
                ),
            )
            row_features = _cache_read(horizontal_caches[0], ops.arange(size))  # [w, N, C]
            vertical_caches = list(vertical_caches)
            vertical_caches[0] = _cache_write(
                vertical_caches[0], row, ops.transpose(row_features, (1, 0, 2))
            )
            vertical_caches, contributions = self.vertical_row(
                row, vertical_caches, condition_terms
            )
            row_codes = _cache_read(row_codes, ops.arange(size))  # [w, N]
            return vertical_caches, contributions, _cache_write(codes, row, row_codes)

        first_row = [
            self.contribution(layer, ops.zeros((count, 1, size, 2 * layer.filters)))
            for layer in self.layers
        ]
        _, _, codes = ops.fori_loop(
            0,
            size,
            row_step,
            (
                [_empty_cache(size, (count, size, width)) for width in channels],
                first_row,
                _empty_cache(size, (size, count), "int32", padding=False),
            ),
        )
        codes = _cache_read(codes, ops.arange(size))  # [h, w, N]
        return ops.transpose(codes, (2, 0, 1))


RASTER_SCANS = {"masked": _RasterScan, "gated": _GatedRasterScan}


def raster_scan(pixelcnn: PixelCNN):
    """The cached raster scan of `pixelcnn`'s architecture."""
    return RASTER_SCANS[pixelcnn.hyperparameters.pixelcnn_architecture](pixelcnn)


def guided_logits(passes, weights):
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance",
    https://arxiv.org/abs/2207.12598), applied to the next code's logits. `passes` [S + 1, N,
    K] holds the logits l_0 ... l_S given ever more of the asked conditions
    (`conditions.guidance_stages`: l_0 with every asked value hidden, l_S given them all),
    `weights` [S] the weights w_1 < ... < w_S of the steps between them:

        l = l_0 + sum_s w_s (l_s - l_{s-1})

    With one weight w for every condition (S = 1) this is l = l_ref + w (l_asked - l_ref),
    p(k) ~ p_ref(k) (p_asked(k) / p_ref(k))^w: w = 1 is plain conditional sampling; w > 1
    weights each code by how much more likely the asked values make it, so a slice follows
    what was asked more closely at some cost in variety; w = 0 ignores the asked values. With
    a weight per condition each step is weighted by its own, as in InstructPix2Pix's guidance
    by two conditions (Brooks et al. 2023, https://arxiv.org/abs/2211.09800): for level 2 and
    age 3, l = l_0 + 2 (l_level - l_0) + 3 (l_level,age - l_level), age's pull taken given the
    level. (Logits differ from log-probabilities by a constant per row, which the softmax
    removes.)"""
    steps = passes[1:] - passes[:-1]
    return passes[0] + ops.sum(ops.reshape(weights, (-1, 1, 1)) * steps, axis=0)


def filter_logits(logits, top_k, top_p):
    """Logits [N, K] with every code outside the kept set at -inf.

    Top-k (`top_k` k > 0) keeps the k most likely codes; nucleus sampling (Holtzman et al.
    2019, "The Curious Case of Neural Text Degeneration", `top_p` p < 1) then keeps the
    smallest set of most likely codes whose probability reaches p: code r in descending order
    is kept while sum_{r' < r} p_r' < p, so the most likely is always kept. Codes tied with the
    last kept one are kept too. With k = 0 and p = 1 the logits are returned unsorted (the
    sort is skipped, `ops.cond`).
    """

    def filtered():
        descending = -ops.sort(-logits, axis=-1)
        k = ops.where(top_k > 0, top_k, ops.shape(logits)[-1])
        kth = ops.take(descending, k - 1, axis=1)[:, None]
        descending = ops.where(descending >= kth, descending, -np.inf)
        probabilities = ops.softmax(descending, axis=-1)
        before = ops.pad(ops.cumsum(probabilities[:, :-1], axis=-1), ((0, 0), (1, 0)))
        nucleus = ops.min(ops.where(before < top_p, descending, np.inf), axis=-1, keepdims=True)
        return ops.where(logits >= ops.maximum(kth, nucleus), logits, -np.inf)

    return ops.cond((top_k > 0) | (top_p < 1.0), filtered, lambda: logits)


XLA_MAX_MAP_SIZE = 16  # on TensorFlow the sampler is compiled by XLA for code maps up to 16x16

# The most codes one compiled scan draws (maps x positions x passes of a guided draw): its
# caches and activations grow with them, so a larger draw runs in chunks of whole maps, 256
# hifi maps (32 x 32) or 4096 card maps (8 x 8) at a time (BENCHMARKS.md, "hifi, judged again").
MAX_CODES_PER_SCAN = 256 * 32 * 32


def _compiled_sampler(sample: Callable, pixelcnn: PixelCNN, rows: int) -> Callable:
    """`sample(temperature, seed, top_k, top_p, weights, conditions)` compiled for `rows` rows
    of conditions: on TensorFlow a `tf.function` of that signature, by XLA for maps of at most
    `XLA_MAX_MAP_SIZE` a side; on JAX a `jax.jit` of it that takes the model's weights as
    arguments (read through a `keras.StatelessScope`), so that a model trained further samples
    with its new weights without tracing again."""
    if TENSORFLOW:
        return tf.function(
            sample,
            input_signature=(
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((None,), tf.float32),
                {
                    "values": tf.TensorSpec((rows, None), tf.float32),
                    "known": tf.TensorSpec((rows, None), tf.float32),
                    "previous": tf.TensorSpec((rows, None, None), tf.int32),
                    **(
                        {"coarse": tf.TensorSpec((rows, None, None), tf.int32)}
                        if pixelcnn.coarse_map is not None
                        else {}
                    ),
                },
            ),
            jit_compile=pixelcnn.code_map_size <= XLA_MAX_MAP_SIZE,
        )
    model = weakref.ref(pixelcnn)

    @jax.jit
    def stateless(values, *arguments):
        return run_stateless(model().variables, values, lambda: sample(*arguments))[0]

    return lambda *arguments: stateless([v.value for v in model().variables], *arguments)


class _CodeMapSampler:
    """Raster-order ancestral sampling from one PixelCNN, compiled once per number of maps (and
    of passes of a guided draw).

    One compiled function runs the model's `raster_scan` over the h*h positions: at position
    t = (i, j) it draws k(i, j) ~ Categorical(softmax(filter_logits(logits(i, j) / T))) for
    every map, from the codes drawn so far. On TensorFlow, for maps of at most
    `XLA_MAX_MAP_SIZE` a side it is compiled by XLA, which fuses the many small operations of
    a step into one kernel: there they are most of a step's cost on a CPU, while a large map's
    steps are dominated by convolutions that TensorFlow's own kernels run faster
    (BENCHMARKS.md, "Sampling"); on JAX it is always a `jax.jit`. Both need static shapes, so
    the number of maps is fixed per compiled function (`sample(count, ...)` keeps one per
    count and number of passes: a guided draw runs the scan over S + 1 times the rows).
    Temperature, top-k, top-p, the guidance weights and the conditions are tensors: one
    compilation serves every setting. Position t's codes are drawn with the seed [seed, t]
    (`_draw_codes`), the t-th draw of a `keras.random.SeedGenerator` reset to [seed, 0], and a
    stateless draw on either backend.
    """

    def __init__(self, pixelcnn: PixelCNN):
        self._pixelcnn = weakref.ref(pixelcnn)  # the cache is keyed by the model: no cycle
        self._compiled: dict[tuple[int, int], Callable] = {}

    def sample(self, count: int, temperature, seed, top_k, top_p, weights, conditions):
        """[count, h, h] int32 maps; every argument but `count` a tensor (`sample_code_maps`).
        `conditions` holds `count` rows, or (S + 1) `count` when guided: the rows of each pass
        of `conditions.guidance_stages`, one after the other, and `weights` [S] the weights
        of the steps between them (`guided_logits`)."""
        passes = int(conditions["known"].shape[0]) // count
        key = (count, passes)
        if key not in self._compiled:
            self._compiled[key] = _compiled_sampler(
                functools.partial(self._sample, count, passes), self._pixelcnn(), passes * count
            )
        return self._compiled[key](temperature, seed, top_k, top_p, weights, conditions)

    def _sample(self, count, passes, temperature, seed, top_k, top_p, weights, conditions):
        pixelcnn = self._pixelcnn()
        condition_features = None
        if pixelcnn.condition_encoder is not None:
            condition_features = pixelcnn.condition_features(conditions)

        def draw(position, logits):
            if passes > 1:  # every pass's rows are drawn with the same codes
                logits = ops.reshape(logits, (passes, count, pixelcnn.num_embeddings))
                logits = guided_logits(logits, weights)
            logits = filter_logits(logits / temperature, top_k, top_p)
            drawn = _draw_codes(logits, ops.stack([seed, ops.cast(position, "int32")]))
            return ops.tile(drawn, (passes,))

        return raster_scan(pixelcnn)(passes * count, draw, condition_features)[:count]


_SAMPLERS: weakref.WeakKeyDictionary[PixelCNN, _CodeMapSampler] = weakref.WeakKeyDictionary()


def sample_code_maps(
    pixelcnn: PixelCNN,
    count: int,
    temperature: float = 1.0,
    seed: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    conditions: dict | None = None,
    guidance: float | dict[str, float] = 1.0,
    coarse_slice_below: np.ndarray | None = None,
    coarse_maps: np.ndarray | None = None,
    coarse_top_p: float | None = None,
) -> np.ndarray:
    """Draw `count` code maps [count, h, h] int32 from the prior, in raster order.

    A conditional prior draws from p(z | conditions): `conditions` maps some of its
    `condition_names` to one value or `count` values each, e.g. {"slice_position": 0.4, "age":
    80, "sex": "F", "previous_slice": maps [count, h, h]}; the others are unknown
    (`conditions.condition_batch` checks names, ranges and shapes). `guidance` w >= 0 steers
    the draw towards the asked scalar values (`guided_logits`; 1 = plain p(z | conditions)),
    one weight for all or {condition: w} (1 for a condition not named): each position's
    logits are computed given the conditions and again with the asked values hidden (the slice
    below, when given, stays known), and once more for each further distinct weight
    (`conditions.guidance_stages`), which multiplies the cost by the number of passes.

    `temperature` T > 0 divides the logits (T < 1 sharper, T > 1 flatter). `top_k` keeps only
    the k most likely codes at each position, `top_p` only the nucleus of probability p
    (`filter_logits`); None turns either off. The same `seed` gives the same maps;
    `seed=None` draws one from Python's `random` (seeded by `keras.utils.set_random_seed`).
    The compiled sampler is cached per model. More maps than one scan may draw
    (`MAX_CODES_PER_SCAN`, `maps_per_scan`) are drawn in equal chunks of at most that many,
    chunk i with the seed `chunk_seed(seed, i)`: the same seed and count give the same maps, in
    a bounded memory.

    A two-level prior (`PixelCNN.coarse_prior`) first draws the coarse maps u from its coarse
    prior with the same conditions, the slice below coarsened (`_coarse_maps`), temperature,
    guidance and seed (top-k at most its number of codes), from the nucleus `coarse_top_p`
    (None: `top_p`), then the maps from p(z | u, conditions). Its coarse level reads the slice
    below from `coarse_slice_below` (maps [count, h, h]) when given, not from
    `conditions["previous_slice"]`: a volume blurs the slice below differently for each level
    (`generation.sample_volumes`). Given
    `coarse_maps` u (ints [count, h / f, h / f] below the coarse level's number of codes, e.g.
    the coarse maps of real slices, `PixelCNN.coarse_map`), it draws only the fine level, on
    those maps: what the samples would be with a perfect coarse level.
    """
    check_sample_count(count)
    check_temperature(temperature)
    check_top_k(top_k, pixelcnn.num_embeddings)
    check_top_p(top_p)
    check_guidance(guidance)
    if coarse_top_p is not None:
        if pixelcnn.coarse_prior is None:
            raise ValueError(
                "coarse_top_p is the nucleus of a two-level prior's coarse level "
                "(pixelcnn_coarse_codes); this prior is flat"
            )
        check_top_p(coarse_top_p, "coarse_top_p")
    if coarse_slice_below is not None and (
        pixelcnn.coarse_prior is None or "previous_slice" not in (conditions or {})
    ):
        raise ValueError(
            "coarse_slice_below is what a two-level prior's coarse level reads as the slice "
            "below: it needs a two-level prior and a previous_slice condition"
        )
    if coarse_maps is not None:
        if coarse_slice_below is not None:
            raise ValueError(
                "coarse_maps are the coarse level's maps, given; coarse_slice_below is what "
                "the coarse level reads when it draws them: give one or the other"
            )
        coarse_maps = _checked_coarse_maps(pixelcnn, coarse_maps, count)
    if seed is None:
        seed = random.randrange(2**31)
    batch = condition_batch(
        pixelcnn.condition_names,
        pixelcnn.condition_ranges,
        count,
        conditions,
        pixelcnn.code_map_size,
        pixelcnn.num_embeddings,
    )
    below = batch["previous"]
    if coarse_slice_below is not None:
        below = condition_batch(
            ("previous_slice",),
            {},
            count,
            {"previous_slice": coarse_slice_below},
            pixelcnn.code_map_size,
            pixelcnn.num_embeddings,
        )["previous"]
    known_passes, weights = guidance_stages(batch["known"], pixelcnn.condition_names, guidance)
    chunk = maps_per_scan(pixelcnn, len(known_passes))
    if count > chunk:
        return np.concatenate(
            [
                sample_code_maps(
                    pixelcnn,
                    len(rows),
                    temperature,
                    chunk_seed(seed, index),
                    top_k,
                    top_p,
                    _condition_rows(conditions, rows, count),
                    guidance,
                    None if coarse_slice_below is None else below[rows],
                    None if coarse_maps is None else coarse_maps[rows],
                    coarse_top_p,
                )
                for index, rows in enumerate(np.array_split(np.arange(count), -(-count // chunk)))
            ]
        )
    if coarse_maps is not None:
        batch["coarse"] = coarse_maps
    elif pixelcnn.coarse_prior is not None:
        batch["coarse"] = _coarse_maps(
            pixelcnn,
            count,
            temperature,
            seed,
            top_k,
            top_p if coarse_top_p is None else coarse_top_p,
            conditions,
            guidance,
            below,
        )
    if weights:  # the rows of every pass, one pass after the other
        batch = {
            name: np.concatenate(known_passes if name == "known" else [value] * len(known_passes))
            for name, value in batch.items()
        }
    if pixelcnn not in _SAMPLERS:
        _SAMPLERS[pixelcnn] = _CodeMapSampler(pixelcnn)
    code_maps = _SAMPLERS[pixelcnn].sample(
        int(count),
        ops.convert_to_tensor(float(temperature), "float32"),
        ops.convert_to_tensor(int(seed) % 2**31, "int32"),
        ops.convert_to_tensor(0 if top_k is None else int(top_k), "int32"),
        ops.convert_to_tensor(1.0 if top_p is None else float(top_p), "float32"),
        ops.convert_to_tensor(np.array(weights, dtype="float32")),
        {name: ops.convert_to_tensor(value) for name, value in batch.items()},
    )
    return ops.convert_to_numpy(code_maps)


def maps_per_scan(pixelcnn: PixelCNN, passes: int = 1) -> int:
    """How many maps one compiled scan of `pixelcnn` draws at most: `MAX_CODES_PER_SCAN` codes
    over its h*h positions, and over the `passes` a guided draw runs each map
    (`conditions.guidance_stages`)."""
    return max(1, MAX_CODES_PER_SCAN // (pixelcnn.code_map_size**2 * passes))


def chunk_seed(seed: int, index: int) -> int:
    """The seed in [0, 2^31) of chunk `index` of a draw seeded `seed`: `numpy`'s `SeedSequence`
    of the pair, so that no chunk of one seed repeats a chunk of another (seed + index would
    make chunk 1 of seed 0 the first chunk of seed 1)."""
    state = np.random.SeedSequence([int(seed) % 2**31, index]).generate_state(1)[0]
    return int(state) % 2**31


def _condition_rows(conditions: dict | None, rows: np.ndarray, count: int) -> dict | None:
    """`conditions` (checked by `condition_batch` for `count` maps) for the maps `rows`: a
    sequence of `count` values, or maps [count, h, h] of the slice below, keep those rows; one
    value for every map stays as it is."""
    if conditions is None:
        return None
    chunk = {}
    for name, value in conditions.items():
        if value is None:
            chunk[name] = None
        elif name == "previous_slice":
            maps = np.asarray(value)
            chunk[name] = maps[rows] if maps.ndim == 3 else maps
        else:
            values = np.asarray(value, dtype=object).reshape(-1)
            chunk[name] = values[rows].tolist() if len(values) == count else value
    return chunk


def _coarse_maps(
    pixelcnn: PixelCNN, count, temperature, seed, top_k, top_p, conditions, guidance, below
):
    """The coarse maps [count, h / f, h / f] a two-level prior draws its maps on: drawn from its
    coarse prior with the same `conditions`, the slice below (when `conditions` give one:
    `below`, checked maps [count, h, h]) coarsened by the prior's `coarse_map`, as the coarse
    prior saw it in training (`PixelCNN.with_coarse_map`). In a volume each slice's layout thus
    follows the one below: drawn on their own, the coarse maps of neighbouring slices put the
    outline of the brain in different places, and the volume's coronal and sagittal cuts came
    out striped (BENCHMARKS.md, "hifi volumes: the coarse level on the slice below")."""
    conditions = dict(conditions or {})
    if "previous_slice" in conditions:
        conditions["previous_slice"] = ops.convert_to_numpy(pixelcnn.coarse_map(below))
    coarse = pixelcnn.coarse_prior
    return sample_code_maps(
        coarse,
        count,
        temperature,
        seed,
        None if top_k is None else min(top_k, coarse.num_embeddings),
        top_p,
        conditions,
        guidance,
    )


def _in_batches(function: Callable, inputs: np.ndarray, batch_size: int, empty_shape) -> np.ndarray:
    """Apply `function` to consecutive slices of `batch_size` rows and concatenate."""
    check_at_least("batch_size", batch_size, 1)
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
    hyperparameters = vqvae.hyperparameters
    return _checked_maps(
        "code_maps", code_maps, hyperparameters.code_map_size, hyperparameters.num_embeddings
    )


def _checked_coarse_maps(pixelcnn: PixelCNN, coarse_maps, count: int) -> np.ndarray:
    coarse = pixelcnn.coarse_prior
    if coarse is None:
        raise ValueError(
            "coarse_maps are for a two-level prior (pixelcnn_coarse_codes); this prior is flat"
        )
    maps = _checked_maps("coarse_maps", coarse_maps, coarse.code_map_size, coarse.num_embeddings)
    if len(maps) != count:
        raise ValueError(f"coarse_maps must hold one map per map drawn ({count}), got {len(maps)}")
    return maps


def _checked_maps(name: str, maps, size: int, codes: int) -> np.ndarray:
    """`maps` as int32 [N, size, size], or a ValueError naming `name` and what is wrong: the
    shape, a dtype other than integers, or codes outside [0, codes)."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1:] != (size, size):
        raise ValueError(f"{name} must have shape (N, {size}, {size}), got {maps.shape}")
    if maps.size and not np.issubdtype(maps.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {maps.dtype}")
    if maps.size and not 0 <= maps.min() <= maps.max() < codes:
        raise ValueError(f"{name} values must be in [0, {codes}), got [{maps.min()}, {maps.max()}]")
    return maps.astype("int32")


def _batch_size(vqvae: VQVAE, batch_size: int | None) -> int:
    """`batch_size`, or the model's `inference_batch_size` when it is None."""
    return vqvae.hyperparameters.inference_batch_size if batch_size is None else batch_size


def encode_code_maps(vqvae: VQVAE, images, batch_size: int | None = None) -> np.ndarray:
    """Images [N, S, S, 1] float in [0, 1] -> code maps [N, h, h] int32, `batch_size` at a time
    (default: the model's `inference_batch_size`)."""
    batch_size = _batch_size(vqvae, batch_size)
    images = _checked_images(vqvae, images)
    size = vqvae.hyperparameters.code_map_size
    code_maps = _in_batches(vqvae.code_indices, images, batch_size, (0, size, size))
    return code_maps.astype("int32")


def decode_code_maps(vqvae: VQVAE, code_maps, batch_size: int | None = None) -> np.ndarray:
    """Code maps [N, h, h] int -> images [N, S, S, 1] float32 clipped to [0, 1], `batch_size`
    at a time (default: the model's `inference_batch_size`)."""
    batch_size = _batch_size(vqvae, batch_size)
    code_maps = _checked_code_maps(vqvae, code_maps)
    size = vqvae.hyperparameters.image_size
    images = _in_batches(vqvae.decode_indices, code_maps, batch_size, (0, size, size, 1))
    return images.astype("float32")
