"""Training speed of the hifi PixelCNN with one-hot against embedded codes.

    python -m bench.prior [--codes 1024 4096] [--embedding-dim 64] [--repeats 5] [--quick]
        [--json PATH]

For each codebook size K, two priors over the hifi preset's 32x32 code maps,
`modules.build_pixelcnn(preset("hifi").replace(num_embeddings=K, pixelcnn_embedding_dim=E))`:
  one-hot   E = 0: the codes enter as K-channel one-hot vectors, so the 7x7 mask-A convolution
            reads K channels at each of its 24 visible taps;
  embedded  E = `--embedding-dim`: learned E-dimensional embeddings instead.
Each is compiled with Adam and fitted on random code maps, batch 4; the first epoch (tracing) is
not timed. Then `--repeats` rounds fit each for one epoch of 16 maps, alternately, the order
swapped every round; the table gives the median milliseconds per code map and the speed-up of
each over one-hot at the same K (median over the rounds).
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
from hyperparameters import preset

MAPS = 16  # code maps per timed epoch
BATCH = 4


def fitted_prior(codes: int, embedding_dim: int, maps: np.ndarray):
    """A compiled, traced prior and a function that fits it for one timed epoch on `maps`."""
    import keras

    hyperparameters = preset("hifi").replace(
        num_embeddings=codes,
        dead_code_threshold=0.25 / codes,
        pixelcnn_embedding_dim=embedding_dim,
    )
    prior = modules.build_pixelcnn(hyperparameters)
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    prior.fit(maps, batch_size=BATCH, epochs=1, verbose=0)

    def epoch(_round: int) -> None:
        prior.fit(maps, batch_size=BATCH, epochs=1, verbose=0)

    return epoch


def compare(codes: int, embedding_dim: int, repeats: int, seed: int) -> list[dict]:
    size = preset("hifi").code_map_size
    maps = np.random.default_rng(seed).integers(0, codes, (MAPS, size, size)).astype("int32")
    epochs = {
        "one-hot": fitted_prior(codes, 0, maps),
        f"embedded ({embedding_dim})": fitted_prior(codes, embedding_dim, maps),
    }
    rounds = interleaved_rounds(epochs, repeats)
    return [
        {
            "codes": codes,
            "prior": name,
            "ms_per_map": 1000 * median(seconds) / MAPS,
            "speedup": median_speedup(rounds["one-hot"], seconds),
            "seconds": seconds,
        }
        for name, seconds in rounds.items()
    ]


COLUMNS = (
    ("codes", "K", ""),
    ("prior", "codes enter as", "<"),
    ("ms_per_map", "ms per map", ".0f"),
    ("speedup", "x one-hot", ".1f"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, nargs="+", default=[1024, 4096], help="K")
    parser.add_argument("--embedding-dim", type=int, default=64, help="E of the embedded prior")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per K")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random code maps")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import keras

    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.codes, arguments.repeats = [64], 2
    machine = announce_machine()
    keras.utils.set_random_seed(arguments.seed)
    rows = []
    for codes in arguments.codes:
        rows += compare(codes, arguments.embedding_dim, arguments.repeats, arguments.seed)
    print(f"\ntraining the hifi PixelCNN (batch {BATCH}), median of {arguments.repeats} rounds")
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
