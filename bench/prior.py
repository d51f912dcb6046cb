"""Training speed of the hifi PixelCNN with one-hot against embedded codes.

    python -m bench.prior [--codes 1024 4096] [--embedding-dim 64] [--conditional]
        [--repeats 5] [--quick] [--json PATH]

For each codebook size K, priors over the hifi preset's 32x32 code maps,
`modules.build_pixelcnn(preset("hifi").replace(num_embeddings=K, pixelcnn_embedding_dim=E))`
with one flat level (the preset's coarse level, an 8x8 prior, is left out):
  one-hot   E = 0: the codes enter as K-channel one-hot vectors, so the first layer reads K
            channels at each of its taps;
  embedded  E = `--embedding-dim`: learned E-dimensional embeddings instead.
With `--conditional` the priors take every condition (slice level, age, sex, CDR and the code
map of the slice below, as a demo run's does), and a third arm embeds the codes but reads the
slice below as one-hot vectors (`pixelcnn_embed_previous_slice` off, as conditional priors did
before it existed); they are fitted on random maps with random conditions.
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
from brain_vqvae.model.conditions import condition_batch
from brain_vqvae.model.prior import pack_prior_inputs
from hyperparameters import preset

MAPS = 16  # code maps per timed epoch
BATCH = 4
CONDITIONS = "slice_position,age,sex,cdr,previous_slice"
CONDITION_RANGES = {"slice_position": [0.0, 1.0], "age": [18.0, 96.0], "sex": ["F", "M"]}
CONDITION_RANGES["cdr"] = [0.0, 2.0]
EMBEDDED_BUT_SLICE_BELOW = "embedded, slice below one-hot"


def conditioned_rows(maps: np.ndarray, codes: int, seed: int) -> np.ndarray:
    """`maps` with random conditions, packed as a conditional prior is fitted on them."""
    rng = np.random.default_rng(seed)
    count, size = len(maps), maps.shape[1]
    asked = {
        "slice_position": rng.uniform(0, 1, count),
        "age": rng.uniform(18, 96, count),
        "sex": rng.choice(["F", "M"], count),
        "cdr": rng.choice([0.0, 0.5, 1.0], count),
        "previous_slice": rng.integers(0, codes, (count, size, size)).astype("int32"),
    }
    names = tuple(CONDITIONS.split(","))
    conditions = condition_batch(names, CONDITION_RANGES, count, asked, size, codes)
    return pack_prior_inputs(maps, conditions)


def fitted_prior(
    codes: int,
    embedding_dim: int,
    maps: np.ndarray,
    conditional: bool = False,
    embed_previous_slice: bool = True,
):
    """A compiled, traced prior and a function that fits it for one timed epoch on `maps`
    (packed with their conditions, `conditioned_rows`, for a `conditional` prior)."""
    import keras

    hyperparameters = preset("hifi").replace(
        num_embeddings=codes,
        dead_code_threshold=0.25 / codes,
        pixelcnn_embedding_dim=embedding_dim,
        prior_conditions=CONDITIONS if conditional else "none",
        pixelcnn_embed_previous_slice=embed_previous_slice,
        pixelcnn_coarse_codes=0,  # the 32x32 level alone, whose input layer these arms change
    )
    prior = modules.build_pixelcnn(hyperparameters, CONDITION_RANGES if conditional else None)
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    prior.fit(maps, batch_size=BATCH, epochs=1, verbose=0)

    def epoch(_round: int) -> None:
        prior.fit(maps, batch_size=BATCH, epochs=1, verbose=0)

    return epoch


def compare(
    codes: int, embedding_dim: int, repeats: int, seed: int, conditional: bool = False
) -> list[dict]:
    size = preset("hifi").code_map_size
    maps = np.random.default_rng(seed).integers(0, codes, (MAPS, size, size)).astype("int32")
    if conditional:
        maps = conditioned_rows(maps, codes, seed)
    epochs = {
        "one-hot": fitted_prior(codes, 0, maps, conditional),
        f"embedded ({embedding_dim})": fitted_prior(codes, embedding_dim, maps, conditional),
    }
    if conditional:
        epochs[EMBEDDED_BUT_SLICE_BELOW] = fitted_prior(
            codes, embedding_dim, maps, conditional, embed_previous_slice=False
        )
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
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="priors conditioned on the level, age, sex, CDR and the slice below",
    )
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
        rows += compare(
            codes, arguments.embedding_dim, arguments.repeats, arguments.seed, arguments.conditional
        )
    kind = "conditional " if arguments.conditional else ""
    print(
        f"\ntraining the {kind}hifi PixelCNN (batch {BATCH}), median of {arguments.repeats} rounds"
    )
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
