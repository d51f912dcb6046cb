"""How long one whole conditional brain takes to draw: 32 axial slices of one subject, bottom to
top, each slice's code map drawn from the prior given its level, the subject's age, sex and CDR
and the code map below it, then all 32 decoded.

    python -m bench.volumes [--presets card hifi] [--repeats 3] [--guidance W [NAME=W ...]]
                            [--quick] [--json PATH]

For each preset, an untrained VQ-VAE and an untrained gated PixelCNN conditioned on every
condition (`prior_conditions` slice_position,age,sex,cdr,previous_slice; the weights do not
change the cost) are put in a `Run`, and `generation.sample_volumes(run, 1, 32, {"age": 70,
"sex": "F", "cdr": 0.5})` is timed as `predict.py --volume` runs it, with its default guidance
or `--guidance` (each distinct weight one more pass of the prior): the first call (which
traces and compiles the sampler) on its own, then the median of `--repeats` calls with new
seeds. The targets (issue "conditional slices and whole volumes"): card under 2 s, hifi under
30 s per volume on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_common_arguments, announce_machine, median, print_table, write_json
from brain_vqvae.generation import add_guidance_argument
from hyperparameters import preset

TARGET_SECONDS = {"card": 2.0, "hifi": 30.0}
SUBJECT = {"age": 70.0, "sex": "F", "cdr": 0.5}
RANGES = {"slice_position": [0.0, 1.0], "age": [18.0, 96.0], "sex": ["F", "M"], "cdr": [0.0, 2.0]}


def untrained_run(name: str, folder: Path):
    """A `Run` of the preset `name` with untrained models and a prior on every condition."""
    from brain_vqvae.model import build_pixelcnn, build_vqvae
    from brain_vqvae.runs import Run, RunFolder

    hyperparameters = preset(name).replace(
        prior_conditions="slice_position,age,sex,cdr,previous_slice"
    )
    return Run(
        RunFolder(folder / name),
        hyperparameters,
        build_vqvae(hyperparameters, data_variance=0.05),
        build_pixelcnn(hyperparameters, RANGES),
    )


def time_volumes(run, repeats: int, guidance) -> dict:
    from brain_vqvae.generation import VOLUME_DEPTH, sample_volumes

    def one(seed: int) -> float:
        start = time.perf_counter()
        _, slices = sample_volumes(run, 1, VOLUME_DEPTH, SUBJECT, seed=seed, guidance=guidance)
        seconds = time.perf_counter() - start
        size = run.hyperparameters.image_size
        if slices.shape != (1, VOLUME_DEPTH, size, size):
            raise RuntimeError(f"sample_volumes gave shape {slices.shape}")
        return seconds

    first = one(0)
    seconds = [one(seed) for seed in range(1, repeats + 1)]
    return {"first_s": first, "median_s": median(seconds), "seconds": seconds}


COLUMNS = (
    ("preset", "preset", "<"),
    ("maps", "code maps", ""),
    ("first_s", "first call s", ".2f"),
    ("median_s", "median s", ".2f"),
    ("target_s", "target s", ".0f"),
    ("met", "met", ""),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["card", "hifi"], choices=TARGET_SECONDS)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    add_guidance_argument(parser, "guidance of the volumes drawn")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import keras

    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.presets, arguments.repeats = ["card"], 1
    machine = announce_machine()
    keras.utils.set_random_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in arguments.presets:
            run = untrained_run(name, Path(folder))
            size = run.hyperparameters.code_map_size
            row = {"preset": name, "maps": f"32 x {size}x{size}"}
            row |= time_volumes(run, arguments.repeats, arguments.guidance)
            row["target_s"] = TARGET_SECONDS[name]
            row["met"] = "yes" if row["median_s"] < row["target_s"] else "NO"
            rows.append(row)
    print("\none conditional 32-slice volume, drawn and decoded (untrained models)")
    print_table(rows, COLUMNS)
    write_json(arguments.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
