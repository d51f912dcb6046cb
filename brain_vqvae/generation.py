"""New slices from a run's prior, and slices passed through its VQ-VAE (or its VAE).

Sampling draws code maps z ~ p(z) = prod_i p(z_i | z_<i) from the PixelCNN in raster order
(a conditional prior: p(z | c) for the conditions c asked for) and decodes each with the run's
generator (`Run.generator`: the adversarial stage's decoder, or the VQ-VAE's) into a slice
x = D(e_z); a volume is drawn slice by slice from the bottom up, each slice conditioned on its
level and on the code map below it (`sample_volumes`); a VAE run (the Gaussian baseline) draws
latent vectors z ~ N(0, T^2 I) and decodes them, x = D(z).
Reconstruction encodes slices to code maps (a VAE: to their posterior means) and decodes them
again. Slices follow the project's convention (README, "Data"): anterior at the top and the
subject's left on the image's left, so a stack of them is written as a NIfTI volume whose voxel
axes run to the subject's right, anterior and superior (RAS+).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
from keras.random import SeedGenerator
from PIL import Image

from brain_vqvae import plotting
from brain_vqvae.data import BrainSlices, DataError, load_file_slices
from brain_vqvae.metrics import ssim_per_slice
from brain_vqvae.model import (
    decode_code_maps,
    decode_latents,
    encode_code_maps,
    sample_code_maps,
)
from brain_vqvae.model.conditions import SCALAR_CONDITIONS
from brain_vqvae.model.prior import randomize_codes
from brain_vqvae.runs import Run

SAMPLE_PATTERN = "sample_{:03d}.png"
VOLUME_PATTERN = "volume_{:03d}"
VOLUME_DEPTH = 32  # slices per generated volume, as in the OASIS PNG slices
# (pixel, slice) spacing in mm of a generated volume when the user gives none: the demo's
# 128x128 slices, 0.85 mm pixels at 256x256 and 32 slices over 115 mm (`data.demo`).
DEFAULT_VOLUME_SPACING_MM = (1.7, 3.7)
# Classifier-free guidance weights of conditional draws (`sampler.guided_logits`; 1 is plain
# conditional sampling). On the demo w = 2 raised the slice-position obedience from r 0.85 to
# 0.93 (BENCHMARKS.md, "Conditional slices and whole volumes"); the age, guided by 3 on top of
# the level, is followed more closely, the level and the volumes as at 2 ("hifi: the age guided
# harder than the level"); the CDR is drawn plainly conditional, for guided by 2 the slices
# asked for dementia read twice as much older than their age as demented people do ("Obedience
# to the diagnosis"). Never mutated.
DEFAULT_GUIDANCE = {"slice_position": 2.0, "age": 3.0, "sex": 2.0, "cdr": 1.0}
LEVEL_STREAM = 7  # the random stream (beside the seed) of the levels `with_drawn_levels` draws


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) or (N, S, S) floats in [0, 1] -> (N, S, S) uint8, round(255 clip(x, 0, 1))."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        images = images[..., 0]
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


# Sampling -----------------------------------------------------------------------------------


def add_sampling_arguments(parser) -> None:
    """The command-line flags of how codes are drawn (`sample_code_maps`), the one definition
    that `predict.py` and `similarity.py` share: --temperature, --top-k, --top-p,
    --coarse-top-p."""
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, help="draw only among the K most likely codes")
    parser.add_argument(
        "--top-p",
        type=float,
        help="draw only among the most likely codes of probability P (default: the run's "
        "sampling_top_p, 0.9 for the hifi preset; 1: all codes)",
    )
    parser.add_argument(
        "--coarse-top-p",
        type=float,
        help="a two-level prior's coarse level (the brain's layout) drawn only among its most "
        "likely codes of probability P (default: the run's sampling_coarse_top_p, 1 for the "
        "hifi preset: all codes)",
    )


def add_guidance_argument(parser, help_text: str) -> None:
    """The --guidance flag `predict.py` and `similarity.py` share: one weight for every asked
    condition, then any number of NAME=W for a condition of its own (`parse_guidance`), e.g.
    `--guidance 2 age=3`."""
    parser.add_argument(
        "--guidance",
        nargs="+",
        action=_GuidanceAction,
        default=DEFAULT_GUIDANCE,
        metavar=("W", "NAME=W"),
        help=f"{help_text} (default {describe_guidance(DEFAULT_GUIDANCE)}; 1 = plain "
        "conditional sampling); NAME=W guides one condition (slice_position, age, sex, cdr) by "
        "its own weight, the others keeping W or their default",
    )


class _GuidanceAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_guidance(values))
        except ValueError as error:
            parser.error(f"{option_string}: {error}")


def parse_guidance(terms: list[str]) -> float | dict[str, float]:
    """The guidance of `sample_code_maps` from command-line terms: "W" sets the weight of every
    asked condition, "NAME=W" that of one scalar condition (a dash may stand for the
    underscore); a condition given neither keeps its `DEFAULT_GUIDANCE`. One weight for all
    gives a float, else {condition: w} for every scalar condition. `ValueError` names a term
    that is not a number or a condition. (Values are checked where they are drawn with,
    `check_guidance`.)"""
    default, own = None, {}
    for term in terms:
        name, _, weight = str(term).rpartition("=")
        try:
            number = float(weight)
        except ValueError:
            raise ValueError(f"{term!r} is neither a weight W nor NAME=W") from None
        if not name:
            if default is not None:
                raise ValueError(f"two weights for every condition: {default:g} and {number:g}")
            default = number
            continue
        name = name.strip().replace("-", "_")
        if name not in SCALAR_CONDITIONS:
            raise ValueError(f"{name!r} is not a condition: {', '.join(SCALAR_CONDITIONS)}")
        own[name] = number
    weights = {
        name: own.get(name, DEFAULT_GUIDANCE[name] if default is None else default)
        for name in SCALAR_CONDITIONS
    }
    return weights[SCALAR_CONDITIONS[0]] if len(set(weights.values())) == 1 else weights


def describe_guidance(guidance: float | dict[str, float]) -> str:
    """ "2" for one weight; "2, age 3" for {condition: w}, the weight most conditions have first
    (1 for a condition the dict leaves out, as `sample_code_maps` takes it)."""
    if not isinstance(guidance, dict):
        return f"{guidance:g}"
    weights = {name: guidance.get(name, 1.0) for name in SCALAR_CONDITIONS}
    common = Counter(weights.values()).most_common(1)[0][0]
    own = "".join(f", {name} {w:g}" for name, w in weights.items() if w != common)
    return f"{common:g}{own}"


def check_prior_options(
    run: Run,
    top_k: int | None = None,
    top_p: float | None = None,
    coarse_top_p: float | None = None,
    conditions: dict | None = None,
) -> None:
    """Refuse with `ValueError` what only a PixelCNN prior can do (cut its codes to `top_k`,
    `top_p` or `coarse_top_p`, draw from p(z | `conditions`)) when it is asked of a VAE run,
    which samples N(0, T^2 I)."""
    if run.kind == "vae" and (
        top_k is not None or top_p is not None or coarse_top_p is not None or conditions
    ):
        raise ValueError(
            "top_k, top_p, coarse_top_p and conditions belong to a PixelCNN prior; a VAE run "
            "samples N(0, T^2 I)"
        )


def effective_nuclei(
    run: Run, top_p: float | None = None, coarse_top_p: float | None = None
) -> dict[str, float | None]:
    """The nuclei `run`'s codes are drawn from, as keyword arguments of `sample_code_maps`:
    {"top_p": `top_p` when given, else the run's own `sampling_top_p` (1 = every code),
    "coarse_top_p": for a two-level prior, `coarse_top_p` when given, else the run's own
    `sampling_coarse_top_p`; None for a flat prior}. A flat prior given `coarse_top_p` raises
    `ValueError`. A VAE run has no codes: both are returned as given (`check_prior_options`
    refuses them)."""
    if run.kind == "vae":
        return {"top_p": top_p, "coarse_top_p": coarse_top_p}
    hyperparameters = run.hyperparameters
    if not hyperparameters.pixelcnn_coarse_codes:
        if coarse_top_p is not None:
            raise ValueError(
                f"coarse_top_p is the nucleus of a two-level prior's coarse level; {run.name}'s "
                "prior is flat (pixelcnn_coarse_codes 0)"
            )
    elif coarse_top_p is None:
        coarse_top_p = hyperparameters.sampling_coarse_top_p
    return {
        "top_p": hyperparameters.sampling_top_p if top_p is None else top_p,
        "coarse_top_p": coarse_top_p,
    }


def with_drawn_levels(pixelcnn, count: int, conditions: dict | None, seed: int | None) -> dict:
    """`conditions` for `count` maps, and when the prior takes slice_position and none is asked,
    a level for each map drawn uniformly over the levels it was trained on (from `seed`).

    Asked for nothing else, and drawn without guidance, this draws from p(z) = E_level
    p(z | level), the data's spread of levels, rather than from the prior's learned "unknown",
    whose samples on the demo were more alike than real slices (BENCHMARKS.md, "Nothing asked:
    levels drawn"). The slice level is
    independent of a person's age, sex and CDR, so it is drawn whatever else is asked."""
    conditions = dict(conditions or {})
    if "slice_position" not in pixelcnn.condition_names or (
        conditions.get("slice_position") is not None
    ):
        return conditions
    low, high = pixelcnn.condition_ranges.get("slice_position", (0.0, 1.0))
    rng = np.random.default_rng(None if seed is None else [seed, LEVEL_STREAM])
    return {**conditions, "slice_position": rng.uniform(low, high, count)}


def sample_slices(
    run: Run,
    count: int,
    temperature: float = 1.0,
    seed: int | None = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    conditions: dict | None = None,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    coarse_top_p: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` latents from the run's prior and decode them: the latents and (count, S, S)
    uint8 slices. A VQ-VAE run draws (count, h, w) int32 code maps from its PixelCNN, its logits
    divided by `temperature` and cut to the `top_k` most likely codes or the nucleus of
    probability `top_p` (`sample_code_maps`, which checks them); a VAE run draws
    (count, vae_latent_dim) float32 vectors from N(0, T^2 I), `temperature` T scaling the prior's
    standard deviation (`GaussianVAE.prior_latents`), and has no codes to cut. A conditional
    prior draws from p(z | `conditions`), e.g. {"slice_position": 0.4, "age": 80}, steered
    towards them by `guidance` (`sample_code_maps`); a level not asked is drawn
    (`with_drawn_levels`), and with nothing asked the draw is not guided (guidance towards
    drawn levels made the demo's samples less real: BENCHMARKS.md, "Nothing asked: levels
    drawn"). A two-level prior draws its coarse level from the nucleus `coarse_top_p`. Either
    nucleus None is the run's own (`effective_nuclei`). The same `seed` gives the same
    slices."""
    batch_size = run.hyperparameters.inference_batch_size
    check_prior_options(run, top_k, top_p, coarse_top_p, conditions)
    if run.kind == "vae":
        latents = run.autoencoder.prior_latents(count, temperature, seed)
        return latents, to_uint8(decode_latents(run.autoencoder, latents, batch_size))
    code_maps = sample_code_maps(
        run.pixelcnn,
        count,
        temperature=temperature,
        seed=seed,
        top_k=top_k,
        conditions=with_drawn_levels(run.pixelcnn, count, conditions, seed),
        guidance=guidance if conditions else 1.0,
        **effective_nuclei(run, top_p, coarse_top_p),
    )
    decoded = decode_code_maps(run.generator, code_maps, batch_size=batch_size)
    return code_maps, to_uint8(decoded)


def sample_volumes(
    run: Run,
    count: int,
    depth: int = VOLUME_DEPTH,
    conditions: dict | None = None,
    temperature: float = 1.0,
    seed: int | None = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    coherent: bool = True,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    coarse_top_p: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` whole brains of `depth` axial slices each, bottom to top: code maps
    (count, depth, h, w) int32 and slices (count, depth, S, S) uint8.

    Slice d of every volume is drawn at slice_position d / (depth - 1), with the subject's
    `conditions` (age, sex, cdr; the same for all slices), and, when `coherent`, conditioned on
    the code map just drawn below it (previous_slice), so that the volume fits together:

        z_d ~ p(z | slice_position = d / (depth - 1), demographics, previous_slice = b(z_(d-1)))

    where b blurs the slice below as training did: each code replaced by a random one with
    probability `previous_slice_noise` (`prior.randomize_codes`). Given it clean, the prior
    copied it too faithfully and volumes lingered at one level (BENCHMARKS.md). A two-level
    prior draws the slice's coarse map on the coarse map of b(z_(d-1)), then z_d on both
    (`sample_code_maps`), its fine level reading z_(d-1) blurred with
    `fine_previous_slice_noise` instead, as it was trained. (`coherent=False` draws each slice
    on its own, for comparison.) `top_p` and `coarse_top_p` None draw from the run's own
    nuclei (`effective_nuclei`).
    `guidance` steers each slice towards its level and the demographics, not towards the slice
    below. The prior must have been trained with slice_position (and previous_slice to be
    coherent); `ValueError` says which is missing. Slice d uses seed + d, so the same `seed`
    gives the same volumes."""
    if run.kind == "vae":
        raise ValueError("a VAE run has no conditional prior to draw volumes from")
    needed = ("slice_position", "previous_slice") if coherent else ("slice_position",)
    missing = [name for name in needed if name not in run.pixelcnn.condition_names]
    if missing:
        raise ValueError(
            f"drawing volumes needs a prior trained with {', '.join(missing)}; this run's "
            f"conditions: {', '.join(run.pixelcnn.condition_names) or 'none'} (retrain the "
            "prior with `train.py --stage pixelcnn --prior-conditions auto` on volume data)"
        )
    if depth < 2:
        raise ValueError(f"a volume needs at least 2 slices, got depth {depth}")
    nuclei = effective_nuclei(run, top_p, coarse_top_p)
    conditions = dict(conditions or {})
    if {"slice_position", "previous_slice"} & set(conditions):
        raise ValueError("a volume sets slice_position and previous_slice itself")
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - depth))
    size, codes = run.hyperparameters.code_map_size, run.hyperparameters.num_embeddings
    noise = run.hyperparameters.previous_slice_noise
    fine_noise = run.hyperparameters.fine_previous_slice_noise
    levels_apart = run.pixelcnn.coarse_prior is not None and fine_noise != noise
    code_maps = np.zeros((count, depth, size, size), dtype="int32")
    for level in range(depth):
        slice_conditions = {**conditions, "slice_position": level / (depth - 1)}
        coarse_slice_below = None
        if coherent and level > 0:
            below, blur = code_maps[:, level - 1], SeedGenerator(seed + level)
            slice_conditions["previous_slice"] = np.asarray(
                randomize_codes(below, noise, codes, blur)
            )
            if levels_apart:
                coarse_slice_below = slice_conditions["previous_slice"]
                slice_conditions["previous_slice"] = np.asarray(
                    randomize_codes(below, fine_noise, codes, blur)
                )
        code_maps[:, level] = sample_code_maps(
            run.pixelcnn,
            count,
            temperature=temperature,
            seed=seed + level,
            top_k=top_k,
            conditions=slice_conditions,
            guidance=guidance,
            coarse_slice_below=coarse_slice_below,
            **nuclei,
        )
    decoded = decode_code_maps(
        run.generator, code_maps.reshape(-1, size, size), run.hyperparameters.inference_batch_size
    )
    image_size = run.hyperparameters.image_size
    return code_maps, to_uint8(decoded).reshape(count, depth, image_size, image_size)


def slices_to_nifti(
    slices: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)
) -> nibabel.Nifti1Image:
    """(N, S, S) slices as they are shown (row 0 at the top, anterior; column 0 on the left, the
    subject's left) -> a (S, S, N) NIfTI volume.

    Voxel (x, y, n) = slices[n, S - 1 - y, x]: x runs from the subject's left to right along the
    image's columns, y from posterior to anterior up its rows, n from inferior to superior. The
    affine scales x and y by the pixel spacing and n by the slice spacing (`spacing_mm`, in that
    order; 1 mm each by default), axes RAS+, with the origin at the volume's centre.
    """
    slices = np.asarray(slices)
    volume = np.flip(np.transpose(slices, (2, 1, 0)), axis=1)
    pixel, gap = spacing_mm
    affine = np.diag([pixel, pixel, gap, 1.0])
    affine[:3, 3] = -(np.array(volume.shape) - 1) / 2.0 * np.array([pixel, pixel, gap])
    image = nibabel.Nifti1Image(np.ascontiguousarray(volume), affine)
    image.header.set_xyzt_units("mm")
    return image


def describe_conditions(conditions: dict | None) -> str:
    """ ", slice_position 0.4, age 80" for a title; "" without conditions."""
    return "".join(f", {name} {value}" for name, value in (conditions or {}).items())


def write_samples(
    run: Run,
    out: Path,
    count: int,
    temperature: float,
    seed: int | None,
    top_k: int | None = None,
    top_p: float | None = None,
    conditions: dict | None = None,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    coarse_top_p: float | None = None,
) -> list[Path]:
    """Sample (`sample_slices`, given `conditions` and `guidance`), then write sample_NNN.png,
    samples.png and samples.nii.gz into `out` (which must exist); returns the paths written."""
    nuclei = effective_nuclei(run, top_p, coarse_top_p)
    _, slices = sample_slices(
        run, count, temperature, seed, top_k, conditions=conditions, guidance=guidance, **nuclei
    )
    for stale in out.glob("sample_*.png"):
        stale.unlink()
    written = []
    for index, image in enumerate(slices):
        path = out / SAMPLE_PATTERN.format(index)
        Image.fromarray(image, mode="L").save(path)
        written.append(path)
    prior = "N(0, I)" if run.kind == "vae" else "PixelCNN"
    controls = "".join(
        f", {name} {value:g}"
        for name, value in (
            ("top-k", top_k),
            ("top-p", nuclei["top_p"]),
            ("coarse top-p", nuclei["coarse_top_p"]),
        )
        if value not in (None, 1.0)
    )
    guided = f", guidance {describe_guidance(guidance)}" if conditions else ""
    title = (
        f"{run.name}: {count} {prior} samples{describe_conditions(conditions)}{guided}, "
        f"temperature {temperature:g}{controls}, seed {seed}"
    )
    written.append(
        plotting.save_figure(plotting.plot_sample_grid(slices, title), out / "samples.png")
    )
    nibabel.save(slices_to_nifti(slices), out / "samples.nii.gz")
    return [*written, out / "samples.nii.gz"]


def write_volumes(
    run: Run,
    out: Path,
    count: int,
    conditions: dict | None,
    temperature: float,
    seed: int | None,
    top_k: int | None = None,
    top_p: float | None = None,
    spacing_mm: tuple[float, float] = DEFAULT_VOLUME_SPACING_MM,
    depth: int = VOLUME_DEPTH,
    guidance: float | dict[str, float] = DEFAULT_GUIDANCE,
    coarse_top_p: float | None = None,
) -> list[Path]:
    """Draw `count` coherent volumes (`sample_volumes`, with `guidance`) and write, per volume,
    volume_NNN.nii.gz ((S, S, depth) uint8, RAS+, `spacing_mm` (pixel, slice) spacing) and
    volume_NNN.png (its axial slices bottom to top, and a coronal and a sagittal cut through
    its middle, drawn at the true spacing); returns the paths written."""
    if not all(np.isfinite(spacing_mm)) or min(spacing_mm) <= 0:
        raise ValueError(f"the spacing must be positive millimetres, got {tuple(spacing_mm)}")
    _, volumes = sample_volumes(
        run,
        count,
        depth,
        conditions,
        temperature,
        seed,
        top_k,
        top_p,
        guidance=guidance,
        coarse_top_p=coarse_top_p,
    )
    for stale in out.glob("volume_*"):
        stale.unlink()
    written = []
    described = describe_conditions(conditions).lstrip(", ")
    for index, volume in enumerate(volumes):
        stem = out / VOLUME_PATTERN.format(index)
        nifti = stem.with_name(stem.name + ".nii.gz")
        nibabel.save(slices_to_nifti(volume, spacing_mm), nifti)
        title = f"{run.name}: volume {index} of {depth} slices" + (
            f" ({described})" if described else ""
        )
        figure = plotting.plot_volume(
            volume, spacing_mm, f"{title}, guidance {describe_guidance(guidance)}, seed {seed}"
        )
        written += [plotting.save_figure(figure, stem.with_name(stem.name + ".png")), nifti]
    return written


# Reconstruction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconstructions:
    """Slices passed through the run's autoencoder, all aligned on the first axis (N)."""

    originals: np.ndarray  # (N, S, S, 1) float32 in [0, 1]
    reconstructions: np.ndarray  # (N, S, S, 1) float32 in [0, 1]
    code_maps: np.ndarray | None  # (N, h, w) int32; None for a VAE run, which has no codes
    ssim: np.ndarray  # (N,) float64
    labels: list[str]  # what each slice is, e.g. "subject 441, slice 12"


def reconstruct(run: Run, images: np.ndarray, labels: list[str]) -> Reconstructions:
    """Encode (N, S, S, 1) images in [0, 1] to code maps and decode them again; a VAE run
    decodes their posterior means."""
    batch_size = run.hyperparameters.inference_batch_size
    if run.kind == "vae":
        code_maps = None
        reconstructions = run.autoencoder.predict(images, batch_size=batch_size, verbose=0)
    else:
        code_maps = encode_code_maps(run.vqvae, images, batch_size=batch_size)
        reconstructions = decode_code_maps(run.vqvae, code_maps, batch_size=batch_size)
    return Reconstructions(
        originals=images,
        reconstructions=reconstructions,
        code_maps=code_maps,
        ssim=ssim_per_slice(images, reconstructions),
        labels=list(labels),
    )


def spread_indices(count: int, num: int) -> np.ndarray:
    """`num` distinct indices into `count` items, evenly spaced from the first to the last."""
    if count < 1:
        raise ValueError("there are no slices to choose from")
    return np.unique(np.round(np.linspace(0, count - 1, min(num, count))).astype(int))


def split_slices(slices: BrainSlices, split: str, num: int) -> tuple[np.ndarray, list[str]]:
    """`num` slices spread over `split` of loaded data: (num, S, S, 1) float32 in [0, 1] and a
    label per slice."""
    chosen = slices.splits.get(split)
    if chosen is None or len(chosen) == 0:
        raise DataError(f"{slices.source}: the {split!r} split holds no slices")
    indices = spread_indices(len(chosen), num)
    labels = [
        f"subject {chosen.subject_ids[index]}, slice {chosen.slice_indices[index]}"
        for index in indices
    ]
    return chosen.float_images()[indices], labels


def input_slices(path: Path, image_size: int, num: int) -> tuple[np.ndarray, list[str]]:
    """The user's own file as (M, S, S, 1) float32 slices in [0, 1] and a label per slice: a
    PNG/JPEG slice gives one slice; a volume (.nii, .nii.gz, .mgz, Analyze .hdr + .img) gives
    `num` axial slices spread over the brain's extent, inferior to superior, read exactly as a
    folder of such files is read for training (`load_file_slices`)."""
    images = load_file_slices(path, image_size=image_size, slices_per_volume=num)
    labels = (
        [f"{path.name}: slice {index + 1} of {len(images)}" for index in range(len(images))]
        if len(images) > 1
        else [path.name]
    )
    return images[..., None] / np.float32(255.0), labels


def write_reconstructions(
    run: Run, images: np.ndarray, labels: list[str], out: Path, title: str
) -> list[Path]:
    """Reconstruct (N, S, S, 1) images and write out/reconstructions.png."""
    result = reconstruct(run, images, labels)
    figure = plotting.plot_reconstructions(
        result.originals,
        result.reconstructions,
        result.code_maps,
        result.ssim,
        result.labels,
        run.hyperparameters.num_embeddings,
        f"{title}: mean SSIM {result.ssim.mean():.3f}",
    )
    return [plotting.save_figure(figure, out / "reconstructions.png")]
