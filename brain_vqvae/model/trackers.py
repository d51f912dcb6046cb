"""A quantile of per-slice scores tracked over an epoch in the training step itself, so that
`fit`'s own validation pass reports the spread of the validation SSIM (`val_ssim_p05`) and no
second pass over the validation slices is needed.

A quantile cannot be averaged batch by batch as a mean can, but a histogram can be summed: each
step adds the counts of its scores in fixed bins (summed over the replicas like any global
value), and the quantile is read from the cumulative counts. With bins of width w the value is
within w of the quantile of the scores themselves; `SSIM_BINS` bins over SSIM's range [-1, 1]
give w = 0.005.
"""

from __future__ import annotations

import keras
from keras import ops

from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE

SSIM_RANGE = (-1.0, 1.0)
SSIM_BINS = 400


def histogram_counts(scores, bins: int, low: float, high: float):
    """Counts of `scores` ([N]) in `bins` equal bins over [low, high]; scores outside fall in
    the first or last bin. [bins] float32."""
    width = (high - low) / bins
    index = ops.cast(ops.floor((ops.cast(scores, "float32") - low) / width), "int32")
    one_hot = ops.one_hot(ops.clip(index, 0, bins - 1), bins, dtype="float32")
    return ops.sum(one_hot, axis=0)


@keras.saving.register_keras_serializable(SERIALIZATION_PACKAGE)
class QuantileTracker(keras.metrics.Metric):
    """The `quantile` q of every score counted since the last reset, from their histogram.

    `update_state(counts)` adds a [bins] histogram of new scores (`histogram_counts` with this
    tracker's `bins`, `low` and `high`). `result()`: with C_k the cumulative counts and n = C_K
    their total, the value x = low + (k + (q n - C_{k-1}) / c_k) w, k the first bin with
    C_k >= q n and c_k > 0, i.e. linear within the bin where the q-th fraction of the scores is
    reached; 0 before any score is counted (as an empty `keras.metrics.Mean` reads 0).
    """

    def __init__(
        self,
        quantile: float = 0.05,
        bins: int = SSIM_BINS,
        low: float = SSIM_RANGE[0],
        high: float = SSIM_RANGE[1],
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        self.quantile, self.bins, self.low, self.high = quantile, bins, low, high
        self.counts = self.add_variable(shape=(bins,), initializer="zeros", name="counts")

    def update_state(self, counts):
        self.counts.assign_add(ops.cast(counts, self.counts.dtype))

    def result(self):
        counts = ops.convert_to_tensor(self.counts)
        cumulative = ops.cumsum(counts)
        rank = self.quantile * cumulative[-1]
        k = ops.argmax(ops.cast((cumulative >= rank) & (counts > 0), "int32"))
        in_bin = ops.take(counts, k)
        below = ops.take(cumulative, k) - in_bin
        fraction = ops.clip((rank - below) / ops.maximum(in_bin, 1.0), 0.0, 1.0)
        width = (self.high - self.low) / self.bins
        value = self.low + (ops.cast(k, "float32") + fraction) * width
        return ops.where(cumulative[-1] > 0, value, 0.0)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "quantile": self.quantile,
            "bins": self.bins,
            "low": self.low,
            "high": self.high,
        }
