"""Speed of a `VectorQuantizer` training step against the textbook one-hot formulation.

    python -m bench.quantizer [--codes 16 1024 4096] [--repeats 30] [--quick] [--json PATH]

For each codebook size K, M vectors of `latent_dim` 32 (four 32x32 code maps of the hifi
encoder, M = 4096, two of its batches; a card batch of 32 8x8 maps with 16-dimensional
latents for K = 16) go through
  ours      `modules.VectorQuantizer(K, ema=True, dead_code_restart=True)` called with
            `training=True`: nearest codes by argmax_k (v.e_k - ||e_k||^2 / 2), code counts
            and EMA cluster sums by segment sums, misfits from the chosen codes, then the EMA
            and restart updates of its variables;
  textbook  the same statistics as most VQ-VAE code computes them (the Keras example, Sonnet's
            `VectorQuantizerEMA`): the full [M, K] squared-distance matrix, its argmin, one-hot
            assignments r [M, K], counts sum_m r_mk, cluster sums r^T z (an [K, M] x [M, D]
            matmul) and misfits as the row minima of the distances. It updates no variables,
            so the speed-up of ours, which does, is a lower bound.
Both are one compiled `tf.function`; both must pick the same codes. The first call (tracing) is
not timed; then `--repeats` rounds call the two alternately, the order swapped every round, and
the table gives the median milliseconds per call and the speed-up (median over the rounds of
textbook time / ours time in the same round).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import modules
from bench.common import (
    add_common_arguments,
    announce_machine,
    interleaved_rounds,
    median,
    median_speedup,
    print_table,
    write_json,
)

HIFI_SHAPE = (4, 32, 32, 32)  # four 32x32 code maps of the hifi encoder, latent_dim 32
CARD_SHAPE = (32, 8, 8, 16)  # batch 32 of 8x8 code maps, latent_dim 16


def textbook_statistics(codebook):
    """latents [M, D] -> (indices, counts, cluster sums, misfits) the one-hot way."""
    from keras import ops

    def statistics(latents):
        distances = (
            ops.sum(ops.square(latents), axis=1, keepdims=True)
            - 2.0 * ops.matmul(latents, ops.transpose(codebook))
            + ops.sum(ops.square(codebook), axis=1)[None, :]
        )
        indices = ops.argmin(distances, axis=1)
        one_hot = ops.one_hot(indices, ops.shape(codebook)[0])
        counts = ops.sum(one_hot, axis=0)
        sums = ops.matmul(ops.transpose(one_hot), latents)
        return ops.cast(indices, "int32"), counts, sums, ops.min(distances, axis=1)

    return statistics


def contestants(codes: int, seed: int) -> tuple[dict, np.ndarray]:
    """The two compiled calls for a K-code quantizer, and the latents [M, D] they take."""
    import tensorflow as tf

    shape = CARD_SHAPE if codes <= 16 else HIFI_SHAPE
    random = np.random.default_rng(seed)
    latents = random.normal(size=shape).astype("float32")
    quantizer = modules.VectorQuantizer(
        num_embeddings=codes,
        latent_dim=shape[-1],
        ema=True,
        dead_code_restart=True,
        dead_code_threshold=0.25 / codes,
    )
    quantizer(latents)  # build
    # Codes on the latents' scale: with the initial +-1/K codes the textbook's ||v||^2 term
    # swamps the differences between codes in float32 and its argmin picks by rounding.
    quantizer.codebook.assign(random.normal(size=(codes, shape[-1])).astype("float32"))
    flat = latents.reshape(-1, shape[-1])
    # Each returns all it computes (a compiled function drops work whose result is unused),
    # the codes first.

    @tf.function
    def ours():
        outputs = quantizer(latents, training=True)
        return outputs["code_indices"], outputs

    textbook = tf.function(lambda: textbook_statistics(quantizer.codebook)(flat))
    return {"ours": ours, "textbook": textbook}, flat


def compare(codes: int, repeats: int, seed: int) -> list[dict]:
    """Rows for one codebook size: `repeats` interleaved rounds after an untimed first call."""
    calls, flat = contestants(codes, seed)
    # The textbook first: ours updates the codebook after choosing its codes.
    textbook_codes = np.asarray(calls["textbook"]()[0]).reshape(-1)
    if not np.array_equal(np.asarray(calls["ours"]()[0]).reshape(-1), textbook_codes):
        raise RuntimeError(f"K={codes}: ours and the textbook picked different codes")
    rounds = interleaved_rounds(
        {name: (lambda _round, call=call: call()) for name, call in calls.items()}, repeats
    )
    return [
        {
            "codes": codes,
            "vectors": flat.shape[0],
            "contestant": name,
            "median_ms": 1000 * median(seconds),
            "range": f"{1000 * min(seconds):.1f}-{1000 * max(seconds):.1f}",
            "speedup": median_speedup(rounds["textbook"], seconds),
            "seconds": seconds,
        }
        for name, seconds in rounds.items()
    ]


COLUMNS = (
    ("codes", "K", ""),
    ("vectors", "M", ""),
    ("contestant", "contestant", "<"),
    ("median_ms", "median ms", ".1f"),
    ("range", "range", ""),
    ("speedup", "x textbook", ".2f"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, nargs="+", default=[16, 1024, 4096], help="K")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds per K")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random latents")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.codes, arguments.repeats = [16, 256], 3
    machine = announce_machine()
    rows = []
    for codes in arguments.codes:
        rows += compare(codes, arguments.repeats, arguments.seed)
    print(f"\none quantizer training step, median of {arguments.repeats} interleaved calls")
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
