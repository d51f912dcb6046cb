"""New brain slices from a trained run's PixelCNN prior, and how well its VQ-VAE reconstructs.

    python predict.py --run DIR [--num 16] [--temperature 1.0] [--top-k K] [--top-p P]
                      [--coarse-top-p P] [--seed 0] [--out DIR]
                      [--slice-position 0.4] [--age 80] [--sex F] [--cdr 1] [--volume]
                      [--guidance 2 [age=3 ...]]
    python predict.py --run DIR --reconstruct [--data PATH] [--split test] [--num 8]
    python predict.py --run DIR --input FILE [--num 8]

Sampling draws `num` code maps from the PixelCNN in raster order and decodes each with the
run's adversarially fine-tuned decoder when it has one (the card's adversarial stage), else
the VQ-VAE's (brain_vqvae/generation.py); reconstructions are always the VQ-VAE's. At each
position the logits are divided by `temperature` (below 1 sharper, above 1 more varied), then
only the `top-k` most likely codes, or the smallest set of most likely codes whose probability
reaches `top-p` (nucleus sampling), are kept; a two-level prior (the hifi preset's) draws its
coarse level, the brain's layout, from a nucleus of its own, `--coarse-top-p` (default: the
run's, every code for the hifi preset). The same `--seed` draws the same slices. The output
folder (default RUN/samples) holds

    sample_000.png ...    each slice as an 8-bit greyscale PNG, S x S
    samples.png           all of them in one grid
    samples.nii.gz        all of them as one NIfTI volume (S, S, num), uint8, 1 mm voxels,
                          slice n on the third (axial) axis, oriented for viewers (RAS+)

A run whose prior was trained with conditions (by default every one its data provides) draws
the slices asked for: `--slice-position` (0 = the lowest slice of a volume, 1 = the highest),
`--age` (years), `--sex` (F or M), `--cdr` (clinical dementia rating 0, 0.5, 1, 2); what is not
given is left to the prior. A condition the run was not trained with, or a value outside what
its data held, is refused with a message. `--guidance` W follows the asked values more
closely (classifier-free guidance: each code's log-probability given them, minus that without
them, times W; 1 = plain conditional sampling); NAME=W after it gives one condition a weight
of its own (each condition's pull then taken given those weighted less:
brain_vqvae/model/sampler.py, `guided_logits`). By default the level and sex are guided by 2,
the age by 3 and the CDR by 1 (`--guidance 2 age=3 cdr=1`). `--volume` draws `num` whole brains
instead (default 1) of 32 axial slices each, bottom to top, every slice conditioned on its
level and on the slice drawn below it, written as volume_NNN.nii.gz ((S, S, 32), RAS+,
`--spacing` pixel and slice spacing in mm) and volume_NNN.png (the slices, and a coronal and a
sagittal cut).

`--reconstruct` takes `num` slices spread evenly over a split of the data the run was trained
on (or `--data`), `--input` the user's own PNG/JPEG slice or NIfTI volume (`num` axial slices
over the brain's extent); both write reconstructions.png (default RUN/reconstructions or
RUN/input_<file name>): per slice the original, its reconstruction with the SSIM between them,
its code map and the absolute error. An output folder that already holds files is only written
into with `--overwrite`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brain_vqvae.data import SPLITS, DataError
from brain_vqvae.generation import (
    DEFAULT_VOLUME_SPACING_MM,
    add_guidance_argument,
    add_sampling_arguments,
    input_slices,
    split_slices,
    write_reconstructions,
    write_samples,
    write_volumes,
)
from brain_vqvae.model.conditions import SCALAR_CONDITIONS, SEXES
from brain_vqvae.runs import RunError, load_run, load_run_data, prepare_output_folder

DEFAULT_SAMPLES = 16
DEFAULT_RECONSTRUCTIONS = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder made by train.py")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--reconstruct", action="store_true", help="reconstruct slices of a dataset split"
    )
    mode.add_argument("--input", metavar="FILE", help="reconstruct your own PNG/JPEG or NIfTI")
    parser.add_argument(
        "--num",
        type=int,
        help=f"slices to generate ({DEFAULT_SAMPLES}) or reconstruct ({DEFAULT_RECONSTRUCTIONS})",
    )
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    wanted = parser.add_argument_group("the brain you want (a run trained with conditions)")
    wanted.add_argument(
        "--slice-position", type=float, help="level in the volume, 0 = lowest, 1 = highest"
    )
    wanted.add_argument("--age", type=float, help="the subject's age in years")
    wanted.add_argument("--sex", choices=SEXES, type=str.upper, help="the subject's sex")
    wanted.add_argument("--cdr", type=float, help="clinical dementia rating: 0, 0.5, 1 or 2")
    wanted.add_argument(
        "--volume", action="store_true", help="draw whole brains of 32 slices, bottom to top"
    )
    add_guidance_argument(
        wanted,
        "how strongly to follow the conditions (higher = closer to what was asked, less varied)",
    )
    wanted.add_argument(
        "--spacing",
        type=float,
        nargs=2,
        metavar=("PIXEL_MM", "SLICE_MM"),
        default=DEFAULT_VOLUME_SPACING_MM,
        help="with --volume: the NIfTI's pixel and slice spacing in mm "
        f"(default {DEFAULT_VOLUME_SPACING_MM[0]:g} {DEFAULT_VOLUME_SPACING_MM[1]:g}, the demo's)",
    )
    parser.add_argument("--data", help="with --reconstruct: dataset (default: the run's)")
    parser.add_argument("--split", choices=SPLITS, help="with --reconstruct: split (test)")
    parser.add_argument("--out", help="output folder (default inside the run folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def default_output_folder(arguments: argparse.Namespace) -> Path:
    """RUN/samples, RUN/reconstructions or RUN/input_<file name, "." as "_">."""
    if arguments.out:
        return Path(arguments.out)
    run = Path(arguments.run)
    if arguments.reconstruct:
        return run / "reconstructions"
    if arguments.input:
        return run / f"input_{Path(arguments.input).name.replace('.', '_')}"
    return run / ("volumes" if arguments.volume else "samples")


def requested_conditions(arguments: argparse.Namespace) -> dict:
    """The conditions given on the command line, {name: value}."""
    return {
        name: getattr(arguments, name)
        for name in SCALAR_CONDITIONS
        if getattr(arguments, name) is not None
    }


def run_prediction(arguments: argparse.Namespace) -> list[Path]:
    """Everything `python predict.py` does; returns the files written."""
    generating = not (arguments.reconstruct or arguments.input)
    num = arguments.num
    if num is None:
        num = DEFAULT_SAMPLES if generating else DEFAULT_RECONSTRUCTIONS
        num = 1 if arguments.volume else num
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    run = load_run(arguments.run, prior="required" if generating else "skip")
    out = prepare_output_folder(default_output_folder(arguments), arguments.overwrite)
    conditions = requested_conditions(arguments)
    if arguments.volume:
        return write_volumes(
            run,
            out,
            num,
            conditions,
            arguments.temperature,
            arguments.seed,
            arguments.top_k,
            arguments.top_p,
            spacing_mm=tuple(arguments.spacing),
            guidance=arguments.guidance,
            coarse_top_p=arguments.coarse_top_p,
        )
    if generating:
        return write_samples(
            run,
            out,
            num,
            arguments.temperature,
            arguments.seed,
            arguments.top_k,
            arguments.top_p,
            conditions,
            arguments.guidance,
            arguments.coarse_top_p,
        )
    if arguments.reconstruct:
        slices = load_run_data(run, arguments.data)
        split = arguments.split or "test"
        images, labels = split_slices(slices, split, num)
        title = f"{run.name} on the {split} split of {Path(slices.source).name}"
    else:
        images, labels = input_slices(Path(arguments.input), run.hyperparameters.image_size, num)
        title = f"{run.name} on {Path(arguments.input).name}"
    return write_reconstructions(run, images, labels, out, title)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if (arguments.data or arguments.split) and not arguments.reconstruct:
        parser.error("--data and --split only apply with --reconstruct")
    generating = not (arguments.reconstruct or arguments.input)
    if not generating and (requested_conditions(arguments) or arguments.volume):
        parser.error("conditions and --volume apply to generation, not to reconstruction")
    if arguments.volume and arguments.slice_position is not None:
        parser.error("--volume draws every slice position itself; drop --slice-position")
    try:
        written = run_prediction(arguments)
    except (RunError, DataError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
