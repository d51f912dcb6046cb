"""Sampling speed of our compiled PixelCNN sampler against the Keras example's Python loop.

    python -m bench.sampling [--preset card|hifi] [--counts 64 256] [--repeats 5] [--quick]
        [--json PATH]

The two samplers draw `count` code maps (8x8 for the card, 32x32 for hifi) from the same
untrained PixelCNN of the preset, `modules.build_pixelcnn(preset(NAME))`; its weights do not
change the cost of a draw. For hifi the example's loop runs `predict` 1024 times per call: three
calls of 64 maps took over 19 minutes here.
  ours     `modules.sample_code_maps`: one compiled function (`tf.function`, or `jax.jit` under
           KERAS_BACKEND=jax) running `keras.ops.fori_loop`s over the 64 positions, each step
           computing the layers at that position alone from cached features of the earlier
           ones (`brain_vqvae.model.sampler`: the card's gated prior runs its vertical stack
           once per row and its horizontal stack per position) and drawing the codes of all
           maps at once (the hifi preset's 32x32 maps without XLA).
  example  the loop of the Keras examples (keras.io/examples/generative/vq_vae and pixelcnn):
           for each position in raster order, `pixelcnn.predict` on the whole batch of maps
           (full 8x8 maps, predict's default batch of 32), then one code per map from
           softmax(logits at that position) with `keras.random.categorical`, written into the
           NumPy maps.
The first call of each is timed on its own (ours traces and compiles its loop there). Then
`--repeats` rounds call ours and the example alternately, the order swapped every round; the
table gives the median wall seconds per call, the range, maps per second and the speed-up
(median over the rounds of example time / ours time in the same round).
"""

from __future__ import annotations

import argparse
import sys
import time

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


def example_sampler(pixelcnn: modules.PixelCNN):
    """The Keras example's sampling loop as a function count, seed -> [count, h, h] int32."""

    import keras

    def sample(count: int, seed: int) -> np.ndarray:
        size = pixelcnn.code_map_size
        seed_generator = keras.random.SeedGenerator(seed)
        code_maps = np.zeros((count, size, size), dtype="int32")
        for row in range(size):
            for column in range(size):
                logits = pixelcnn.predict(code_maps, verbose=0)
                codes = keras.random.categorical(logits[:, row, column], 1, seed=seed_generator)
                code_maps[:, row, column] = keras.ops.convert_to_numpy(codes)[:, 0]
        return code_maps

    return sample


def our_sampler(pixelcnn: modules.PixelCNN):
    def sample(count: int, seed: int) -> np.ndarray:
        return modules.sample_code_maps(pixelcnn, count, seed=seed)

    return sample


def timed(function, *arguments) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - start, result


def compare(samplers: dict, count: int, repeats: int, codes: int) -> list[dict]:
    """Rows for one `count`: first-call time, then `repeats` interleaved rounds."""
    first = {}
    for name, sample in samplers.items():
        seconds, maps = timed(sample, count, 0)
        if maps.shape[0] != count or maps.min() < 0 or maps.max() >= codes:
            raise RuntimeError(f"{name} drew invalid code maps: shape {maps.shape}")
        first[name] = seconds
    rounds = interleaved_rounds(
        {
            name: (lambda index, sample=sample: sample(count, index + 1))
            for name, sample in samplers.items()
        },
        repeats,
    )
    return [
        {
            "count": count,
            "sampler": name,
            "first_s": first[name],
            "median_s": median(seconds),
            "range": f"{min(seconds):.3f}-{max(seconds):.3f}",
            "maps_per_s": count / median(seconds),
            "speedup": median_speedup(rounds["example"], seconds),
            "seconds": seconds,
        }
        for name, seconds in rounds.items()
    ]


COLUMNS = (
    ("count", "maps", ""),
    ("sampler", "sampler", "<"),
    ("first_s", "first call s", ".3f"),
    ("median_s", "median s", ".3f"),
    ("range", "range", ""),
    ("maps_per_s", "maps/s", ".1f"),
    ("speedup", "x example", ".1f"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("card", "hifi"), default="card")
    parser.add_argument("--counts", type=int, nargs="+", default=[64, 256], help="maps per call")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per count")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import keras

    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.counts, arguments.repeats = [16], 2
    machine = announce_machine()
    keras.utils.set_random_seed(arguments.seed)
    hyperparameters = preset(arguments.preset)
    pixelcnn = modules.build_pixelcnn(hyperparameters)
    samplers = {"ours": our_sampler(pixelcnn), "example": example_sampler(pixelcnn)}
    rows = []
    for count in arguments.counts:
        rows += compare(samplers, count, arguments.repeats, hyperparameters.num_embeddings)
    print(
        f"\nsampling {hyperparameters.code_map_size}x{hyperparameters.code_map_size} code maps "
        f"from the untrained {arguments.preset} PixelCNN, median of {arguments.repeats} "
        "interleaved calls"
    )
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
