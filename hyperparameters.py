"""Every default of the pipeline, in one frozen dataclass.

The defaults are the design the user gave ("the card"): 128x128 slices; an encoder of 3x3 ReLU
convolutions with 32, 32, 64, 64 filters at stride 2 and 128 at stride 1, so a 128x128 slice
becomes an 8x8 map of 16-dimensional vectors; a codebook of 16 embeddings with commitment
beta 0.25; a decoder that mirrors the encoder with transposed convolutions, trained to maximise
SSIM (see `reconstruction_loss`) with a cosine learning-rate decay; a masked-convolution
PixelCNN prior, by default the gated PixelCNN of 6 layers of 128 filters whose vertical and
horizontal stacks see every earlier code (`pixelcnn_architecture` "masked" gives the plain
stack: a 7x7 mask-A convolution, 4 residual blocks with a 1x1 mask-B convolution between each
pair) and a 1x1 output to 16 logits; 30 epochs per stage; a copy of the decoder fine-tuned
against a discriminator for 12 epochs to decode sampled code maps (`epochs_adversarial`); an
SSIM target of 0.6. `model` "vae" trains the Gaussian VAE baseline instead of the VQ-VAE and
its prior.

A `Hyperparameters` value is validated when made (a `ValueError` names the field), is saved as
JSON beside every trained model, and every script builds it the same way from the command line:

    parser = argparse.ArgumentParser()
    add_hyperparameter_arguments(parser)        # --preset and one --flag per field
    hyperparameters = hyperparameters_from_arguments(parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np

RECONSTRUCTION_LOSSES = ("mse", "ssim_l1")
PIXELCNN_ARCHITECTURES = ("masked", "gated")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
MODELS = ("vqvae", "vae")
# What a conditional PixelCNN prior can be told about the map it draws: the slice's relative
# level in its volume (0 = lowest, 1 = highest), the subject's age, sex and CDR (an OASIS
# table), and the code map of the slice just below it (to draw volumes slice by slice).
PRIOR_CONDITIONS = ("slice_position", "age", "sex", "cdr", "previous_slice")
# The conditions that are one value per map (all but the slice below): asked by value, guided.
SCALAR_CONDITIONS = tuple(name for name in PRIOR_CONDITIONS if name != "previous_slice")
# A two-level prior's coarse map has one code per COARSE_FACTOR x COARSE_FACTOR block of codes.
COARSE_FACTOR = 4


# ---------------------------------------------------------------------------------------------
# Validation rules, one definition each: `Hyperparameters` and the layers and functions that
# take the same values directly (`VectorQuantizer`, `MaskedConv2D`, the sampler) call these, so
# a direct user gets the same `ValueError` naming the argument.
# ---------------------------------------------------------------------------------------------


def check_at_least(name: str, value, minimum: int) -> None:
    """`value` >= `minimum`, else a `ValueError` naming `name`."""
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_odd_kernel(name: str, size) -> None:
    """A masked convolution's kernel side must be odd, so that the centre is a tap and output
    (i, j) lines up with input (i, j); `size` is an int or a tuple of them."""
    sizes = size if isinstance(size, tuple | list) else (size,)
    if any(side % 2 == 0 for side in sizes):
        raise ValueError(
            f"{name} must be odd (a masked convolution needs an odd kernel), got {size}"
        )


def check_quantizer_settings(
    num_embeddings: int,
    latent_dim: int,
    beta: float,
    ema_decay: float,
    ema_epsilon: float,
    dead_code_threshold: float,
) -> None:
    """The vector quantizer's own rules (`VectorQuantizer`): at least two codes of at least one
    dimension, beta >= 0, a decay in (0, 1), a positive epsilon, a threshold in [0, 1)."""
    check_at_least("num_embeddings", num_embeddings, 2)
    check_at_least("latent_dim", latent_dim, 1)
    if beta < 0:
        raise ValueError(f"beta must be 0 or more, got {beta}")
    if not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in range (0, 1), got {ema_decay}")
    if ema_epsilon <= 0:
        raise ValueError(f"ema_epsilon must be positive, got {ema_epsilon}")
    if not 0.0 <= dead_code_threshold < 1.0:
        raise ValueError(f"dead_code_threshold must be in range [0, 1), got {dead_code_threshold}")


def check_sample_count(count) -> None:
    """The number of code maps to draw: a positive integer (not a bool)."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


def check_temperature(temperature) -> None:
    """The sampling temperature T, which divides the logits: positive (NaN is refused)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def check_guidance(guidance) -> None:
    """The classifier-free guidance of conditional sampling: one weight w for every asked
    condition, or {condition: w} for some of the `SCALAR_CONDITIONS` (the slice below is never
    guided); each w finite and >= 0."""
    weights = guidance.items() if isinstance(guidance, dict) else [("guidance", guidance)]
    for name, weight in weights:
        if name != "guidance" and name not in SCALAR_CONDITIONS:
            guided = ", ".join(SCALAR_CONDITIONS)
            raise ValueError(f"guidance for {name!r}: only {guided} can be guided")
        what = "guidance" if name == "guidance" else f"guidance for {name}"
        if isinstance(weight, bool) or not isinstance(weight, int | float | np.number):
            raise ValueError(f"{what} must be a number, got {weight!r}")
        if not (weight >= 0 and np.isfinite(weight)):
            raise ValueError(
                f"{what} must be a finite number >= 0 (1 = plain conditional), got {weight}"
            )


def check_top_k(top_k, num_embeddings: int) -> None:
    """Top-k sampling keeps the k most likely codes: None (off) or an integer in [1, K]."""
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise ValueError(f"top_k must be None or an integer, got {top_k!r}")
    if not 1 <= top_k <= num_embeddings:
        raise ValueError(f"top_k must be in [1, {num_embeddings}] (the codes), got {top_k}")


def check_top_p(top_p, name: str = "top_p") -> None:
    """Nucleus sampling keeps the smallest set of most likely codes whose probability reaches
    p: None (off) or p in (0, 1] (NaN is refused); `name` is the argument's in the error."""
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{name} must be None or in range (0, 1], got {top_p}")


def parse_prior_conditions(text: str) -> tuple[str, ...] | None:
    """`prior_conditions` as names in the order of `PRIOR_CONDITIONS`: None for "auto", () for
    "none", else the comma-separated names, each known and given once."""
    if text == "auto":
        return None
    if text == "none":
        return ()
    names = [name.strip() for name in str(text).split(",")]
    if any(name not in PRIOR_CONDITIONS for name in names) or len(set(names)) != len(names):
        raise ValueError(
            f'prior_conditions must be "auto", "none" or distinct comma-separated names of '
            f"{', '.join(PRIOR_CONDITIONS)}; got {text!r}"
        )
    return tuple(name for name in PRIOR_CONDITIONS if name in names)


def gated_dilation_cycle(code_map_size: int, kernel_size: int) -> int:
    """Layers in one cycle of the gated PixelCNN's dilations 1, 2, 4, ..., 2**(c - 1): the least
    c >= 1 whose reach (kernel_size // 2) * (2**c - 1) is at least code_map_size - 1, so that one
    cycle lets the last position of a map see the first (`Hyperparameters.pixelcnn_dilations`)."""
    reach_per_dilation = kernel_size // 2
    cycle = 1
    while reach_per_dilation * (2**cycle - 1) < code_map_size - 1:
        cycle += 1
    return cycle


# The fields that shape each stage's weights: a saved model must agree with its run on these.
VQVAE_ARCHITECTURE_FIELDS = (
    "model",
    "image_size",
    "encoder_filters",
    "downsample_stages",
    "residual_blocks",
    "num_embeddings",
    "latent_dim",
)
# The Gaussian VAE baseline has the VQ-VAE's encoder and decoder and its own latent vector.
VAE_ARCHITECTURE_FIELDS = (*VQVAE_ARCHITECTURE_FIELDS, "vae_latent_dim")
PRIOR_ARCHITECTURE_FIELDS = (
    "image_size",
    "downsample_stages",
    "num_embeddings",
    "pixelcnn_filters",
    "pixelcnn_first_kernel",
    "pixelcnn_residual_blocks",
    "pixelcnn_embedding_dim",
    "pixelcnn_embed_previous_slice",
    "pixelcnn_architecture",
    "pixelcnn_gated_layers",
    "pixelcnn_gated_kernel",
    "pixelcnn_coarse_codes",
    "pixelcnn_position_features",
    "prior_conditions",
)
ARCHITECTURE_FIELDS = tuple(
    dict.fromkeys(VAE_ARCHITECTURE_FIELDS + VQVAE_ARCHITECTURE_FIELDS + PRIOR_ARCHITECTURE_FIELDS)
)
# The fields of the prior stage alone: retraining a run's prior (`train.py --stage pixelcnn`)
# may change these and keep its VQ-VAE.
PRIOR_FIELDS = (
    *(name for name in PRIOR_ARCHITECTURE_FIELDS if name.startswith("pixelcnn_")),
    "prior_conditions",
    "condition_dropout",
    "previous_slice_dropout",
    "previous_slice_noise",
    "fine_previous_slice_noise",
    "prior_input_noise",
    "prior_mirror_images",
    "sampling_top_p",
    "sampling_coarse_top_p",
    "learning_rate_pixelcnn",
    "epochs_pixelcnn",
)
# The fields of the adversarial stage alone: retraining a run's adversarial decoder
# (`train.py --stage adversarial`) may change these and keep the rest of the run.
ADVERSARIAL_FIELDS = (
    "epochs_adversarial",
    "learning_rate_adversarial",
    "adversarial_weight",
    "spectral_weight",
)


@dataclass(frozen=True)
class Hyperparameters:
    """The whole configuration of one run; see the module docstring for the design."""

    # Data.
    image_size: int = 128
    slices_per_volume: int = 32

    # Encoder and decoder. The first `downsample_stages` encoder convolutions have stride 2,
    # the rest stride 1, so the code map is image_size / 2**downsample_stages on a side.
    encoder_filters: tuple[int, ...] = (32, 32, 64, 64, 128)
    downsample_stages: int = 4
    residual_blocks: int = 0

    # Vector quantizer (van den Oord et al., 2017).
    num_embeddings: int = 16
    latent_dim: int = 16
    beta: float = 0.25
    ema: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_restart: bool = False
    # A code whose share of the assignments (an EMA) falls below this is restarted; it must be
    # below 1 / num_embeddings, the share of every code when all are used equally.
    dead_code_threshold: float = 1e-3
    # Replace the initial codebook by k-means centroids of the first training batch's encoder
    # outputs (see `brain_vqvae.model.VectorQuantizer`).
    kmeans_init: bool = False
    # Compare, quantize and decode unit vectors: cosine-similarity codes (VectorQuantizer).
    l2_normalize: bool = False

    # Reconstruction loss: "ssim_l1", 0.84 (1 - SSIM) + 0.16 L1 (Zhao et al., 2017), or "mse"
    # divided by the data variance (the keras-io example). The metric's own loss is the default:
    # trained on "mse" the decoder leaves a faint haze on the black background, which the MSE
    # barely counts and SSIM punishes hard, so the validation SSIM peaks and then falls while
    # the MSE still improves; "ssim_l1" keeps rising past that peak (BENCHMARKS.md).
    reconstruction_loss: str = "ssim_l1"
    # With "ssim_l1", training blends from "mse" to it over this many first steps (0: none):
    # SSIM's gradient is weak on the flat output of an untrained decoder.
    mse_warmup_steps: int = 100

    # PixelCNN prior (van den Oord et al., 2016) over the code maps. "masked": the masked
    # convolutions of "Pixel Recurrent Neural Networks" (`pixelcnn_first_kernel`,
    # `pixelcnn_residual_blocks`); "gated": the gated vertical and horizontal stacks of
    # "Conditional Image Generation with PixelCNN Decoders", without the masked stack's blind
    # spot (`pixelcnn_gated_layers`, `pixelcnn_gated_kernel`, dilated as `pixelcnn_dilations`
    # says). `pixelcnn_filters` is the width of either. A saved configuration without this key
    # predates it and was masked (`from_dict`).
    pixelcnn_architecture: str = "gated"
    pixelcnn_filters: int = 128
    pixelcnn_first_kernel: int = 7
    pixelcnn_residual_blocks: int = 4
    # 0: codes enter the PixelCNN as one-hot vectors (K channels); E > 0: as learned
    # E-dimensional embeddings, so its first layer reads E, not K, channels per tap: for many
    # codes much faster to train, for few codes one-hot is the cheaper (BENCHMARKS.md).
    pixelcnn_embedding_dim: int = 0
    # With `pixelcnn_embedding_dim` E > 0, the conditional prior's encoder of the slice below
    # reads that map's codes as E-dimensional learned embeddings too, not as K one-hot
    # channels: for 4096 codes its first 3x3 convolution over one-hot maps cost as much as the
    # whole rest of the hifi prior (BENCHMARKS.md). A saved configuration without this key
    # predates it and reads one-hot vectors (`from_dict`).
    pixelcnn_embed_previous_slice: bool = True
    # Gated layers; each one's vertical kernel is (k // 2 + 1) x k and horizontal 1 x (k // 2 + 1)
    # for k = `pixelcnn_gated_kernel`. There must be at least one cycle of dilations.
    pixelcnn_gated_layers: int = 6
    pixelcnn_gated_kernel: int = 3
    # 0: one prior over the whole code map. C > 0: a two-level prior (gated only), coarse to
    # fine as in VQ-VAE-2 (Razavi et al. 2019): each COARSE_FACTOR x COARSE_FACTOR block of the
    # map is summarised by one of C coarse codes (k-means of the block's mean code vector), a
    # prior over those coarse maps (`coarse_prior_hyperparameters`) draws the layout first,
    # and the fine prior draws the codes given the whole coarse map (`brain_vqvae.model.coarse`).
    pixelcnn_coarse_codes: int = 0
    # Whether the gated prior is told where in the map each code is: the code's row and column
    # enter the conditions' MLP beside the scalar conditions, so that their features vary over
    # the map (`conditions.ConditionEncoder`) and the level can say where the brain ends. A
    # masked convolution otherwise learns a position only from the zero padding in its reach.
    # On the demo, over two trainings, the card's priors so told drew fewer implausible samples,
    # were told from reconstructions less often, and followed the asked level at least as well;
    # with `prior_mirror_images` too, better by most measures (BENCHMARKS.md, "The prior told
    # where each code is, and trained on mirror images too"). A saved configuration without
    # this key predates it and has none (`from_dict`).
    pixelcnn_position_features: bool = True
    # Conditions of the (gated) prior, comma-separated names of `PRIOR_CONDITIONS`; "auto":
    # every one the training data provides (resolved when the prior is trained, and saved so),
    # "none": an unconditional prior. A saved configuration without this key predates it and
    # is unconditional (`from_dict`). In training a map's conditions are all hidden from the
    # prior with probability `condition_dropout` (a learned "unknown"), and otherwise each one
    # with that probability, so that any subset of them, none included, can be given when
    # sampling.
    prior_conditions: str = "auto"
    condition_dropout: float = 0.25
    # ... except the slice below, which (when the map's conditions are not all hidden) is hidden
    # on its own with this probability: the prior then often learns the level without the slice
    # below, as a slice asked for at a level is drawn. At 0.5 rather than 0.25 the card's
    # slices asked for a level follow it more closely, and its samples with nothing asked are a
    # little less varied (BENCHMARKS.md, "Slices asked for a level: the prior taught the level
    # without the slice below"). A saved configuration without this key hid it as the others
    # (`condition_dropout`; `from_dict`).
    previous_slice_dropout: float = 0.5
    # In training each code of the previous slice's map is replaced by a random code with this
    # probability, so that the prior does not learn to copy the slice below.
    previous_slice_noise: float = 0.25
    # A two-level prior's fine level reads the slice below blurred with this probability
    # instead, in training and when a volume is drawn (its coarse level keeps
    # `previous_slice_noise`); by default both levels alike, and clean (0) in the hifi preset:
    # on the demo, trained so for 8 epochs and drawn from the nucleus of 0.9, neighbouring
    # slices of its volumes were 0.77 alike against 0.73 (real 0.78), its single slices as
    # real (BENCHMARKS.md, "hifi: the fine level trained on the slice below clean for 8
    # epochs from the start"). A saved configuration without this key predates it and blurs
    # both levels alike (`from_dict`).
    fine_previous_slice_noise: float = 0.25
    # In training each code of the prior's own map that it reads (never one it predicts) is
    # replaced by a random code with this probability, so that it learns to draw on past a
    # stray code, as when it draws a map code by code from its own earlier draws (exposure
    # bias). Off (0, the map read clean, as every run saved before this key was trained): on
    # the demo the card's prior so trained predicted held-out maps better and obeyed the age
    # better, but its samples sat further from real slices by the Fréchet distance and its
    # volumes were no more coherent (BENCHMARKS.md, "The card's prior trained reading its own
    # maps with stray codes").
    prior_input_noise: float = 0.0
    # The nucleus (top-p, Holtzman et al. 2019) the run's codes are drawn from when
    # `predict.py` or `similarity.py` is not given --top-p: only the most likely codes of this
    # total probability at each position (1: all of them). On the demo the hifi prior's
    # samples at 0.9 were more real, obeyed the asked level better and made more coherent
    # volumes than at 1 (BENCHMARKS.md, "hifi: drawn from the nucleus").
    sampling_top_p: float = 1.0
    # The nucleus a two-level prior's coarse level, the brain's layout, is drawn from
    # (`pixelcnn_coarse_codes`; its fine level keeps `sampling_top_p`), when `predict.py` or
    # `similarity.py` is not given --coarse-top-p. Cut to 0.9, the hifi prior's coarse level
    # drew brains 10-15 % smaller than real ones, and its samples were told from
    # reconstructions more often than drawn from all 64 coarse codes (BENCHMARKS.md, "hifi:
    # the layout drawn from every coarse code"). A saved configuration without this key
    # predates it and draws both levels from `sampling_top_p` (`from_dict`).
    sampling_coarse_top_p: float = 1.0

    # Training. `augment` adds random flips, small rotations and scalings and intensity jitter.
    # "cosine" decays each stage's learning rate to 5 % of its start over the stage's epochs.
    batch_size: int = 32
    augment: bool = False
    # Whether the prior also trains on the code maps of the training slices' mirror images
    # (flipped left to right: the same people at the same levels), twice the maps to learn
    # from: without them the card's prior learned its training maps by heart within 10-13
    # epochs. On the demo, over two trainings, the card's prior so trained gave held-out maps
    # 7 % fewer bits, and its samples, slices asked for an age or a level, and volumes were
    # more real or more obedient by most measures and worse by none beyond the noise but the
    # volumes' neighbours, a little too alike (BENCHMARKS.md, "The prior told where each code
    # is, and trained on mirror images too"). It doubles the prior's time per epoch.
    # Turn it off for images whose left and right differ in ways a model must keep. A saved
    # configuration without this key trained its prior without them (`from_dict`).
    prior_mirror_images: bool = True
    learning_rate_vqvae: float = 1e-3
    learning_rate_pixelcnn: float = 1e-3
    learning_rate_schedule: str = "cosine"
    epochs_vqvae: int = 30
    epochs_pixelcnn: int = 30
    early_stopping_patience: int = 10
    # The adversarial stage (`brain_vqvae.model.adversarial`): after the VQ-VAE, a copy of its
    # decoder is fine-tuned for `epochs_adversarial` epochs (0: no such stage) against a
    # discriminator, its codes frozen, with Adam (beta_1 0.5) at a constant
    # `learning_rate_adversarial`; `adversarial_weight` weighs the discriminator's judgement
    # against the reconstruction loss. Sampled code maps are then decoded by it, and everything
    # else (reconstructions, their scores) by the VQ-VAE. On the demo, over three trainings,
    # the card's samples so decoded were more varied (pairwise MS-SSIM 0.016-0.025 lower, within
    # 0.03 of real slices' in one training and 0.031-0.032 above in the others), showed
    # sulcus-like texture where they were smooth blobs, and were as real or more by the
    # Fréchet distance;
    # the volumes' cuts moved away from real ones (within 3x the floor), and a weight of 0.1
    # made speckled edges (BENCHMARKS.md, "A decoder fine-tuned against a discriminator"). A
    # saved configuration without these keys has no such stage (`from_dict`).
    # `spectral_weight` weighs a term that forbids each decoded slice more power than the real
    # slice it encodes at any spatial frequency (`metrics.log_spectral_excess`): without it the
    # discriminator taught the decoder a checkerboard along the brain's edge. On the demo, over
    # two trainings, 0.1 removed the visible checkerboard at the same Fréchet distance, the
    # samples 0.002-0.004 less varied by MS-SSIM; a term matching the whole spectrum instead
    # drew dots along the image's edge (BENCHMARKS.md, "The adversarial decoder's
    # checkerboard"). A configuration saved before it has 0.
    epochs_adversarial: int = 12
    learning_rate_adversarial: float = 1e-4
    adversarial_weight: float = 0.03
    spectral_weight: float = 0.1

    # Model. "vqvae": the VQ-VAE and its PixelCNN prior, in two stages. "vae": the classical
    # baseline, a Gaussian VAE with the same encoder and decoder and one latent vector of
    # `vae_latent_dim` elements per image between them (dense layers), sampled from N(0, I)
    # (`brain_vqvae.model.GaussianVAE`); it is one stage, trained with `epochs_vqvae` and
    # `learning_rate_vqvae`. `vae_kl_weight` weighs its KL term, the KL divergence averaged over
    # the vector's elements, against the reconstruction loss: larger, blurrier reconstructions
    # and samples closer to the data. 0.1 is the largest of the weights tried on the demo whose
    # posterior-mean reconstructions still work; larger ones gave more brain-like samples but
    # a decoder that expects the prior's noise in the latent (BENCHMARKS.md, "Generation").
    model: str = "vqvae"
    vae_latent_dim: int = 128
    vae_kl_weight: float = 0.1

    # Evaluation and reproducibility. `inference_batch_size` is the batch size of encoding,
    # decoding, evaluation and prediction: no gradients are kept there, so it can be larger
    # than the training `batch_size` (2 for the hifi preset). It does not shape any weights.
    ssim_target: float = 0.6
    seed: int = 0
    inference_batch_size: int = 64

    def __post_init__(self) -> None:
        positive_ints = (
            "image_size",
            "slices_per_volume",
            "pixelcnn_filters",
            "pixelcnn_first_kernel",
            "batch_size",
            "epochs_vqvae",
            "epochs_pixelcnn",
            "early_stopping_patience",
            "inference_batch_size",
            "pixelcnn_gated_layers",
            "vae_latent_dim",
        )
        for name in positive_ints:
            check_at_least(name, getattr(self, name), 1)
        for name in (
            "residual_blocks",
            "pixelcnn_residual_blocks",
            "pixelcnn_embedding_dim",
            "pixelcnn_coarse_codes",
            "mse_warmup_steps",
            "epochs_adversarial",
            "spectral_weight",
            "seed",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not self.encoder_filters or min(self.encoder_filters) < 1:
            raise ValueError(f"encoder_filters must be positive counts, got {self.encoder_filters}")
        if not 1 <= self.downsample_stages <= len(self.encoder_filters):
            raise ValueError(
                f"downsample_stages must be in [1, {len(self.encoder_filters)}] "
                f"(one per encoder convolution at most), got {self.downsample_stages}"
            )
        if self.image_size % 2**self.downsample_stages:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by "
                f"2**downsample_stages = {2**self.downsample_stages}"
            )
        check_odd_kernel("pixelcnn_first_kernel", self.pixelcnn_first_kernel)
        if self.pixelcnn_architecture not in PIXELCNN_ARCHITECTURES:
            raise ValueError(
                f"pixelcnn_architecture must be one of {PIXELCNN_ARCHITECTURES}, "
                f"got {self.pixelcnn_architecture!r}"
            )
        check_at_least("pixelcnn_gated_kernel", self.pixelcnn_gated_kernel, 3)
        check_odd_kernel("pixelcnn_gated_kernel", self.pixelcnn_gated_kernel)
        cycle = gated_dilation_cycle(self.code_map_size, self.pixelcnn_gated_kernel)
        if self.pixelcnn_architecture == "gated" and self.pixelcnn_gated_layers < cycle:
            raise ValueError(
                f"pixelcnn_gated_layers must be at least {cycle} for {self.code_map_size}x"
                f"{self.code_map_size} code maps with pixelcnn_gated_kernel "
                f"{self.pixelcnn_gated_kernel} (one cycle of dilations, so that every position "
                f"sees every earlier one), got {self.pixelcnn_gated_layers}"
            )
        if self.pixelcnn_coarse_codes:
            self._check_coarse_prior()
        parse_prior_conditions(self.prior_conditions)
        if self.prior_conditions not in ("auto", "none") and self.pixelcnn_architecture != "gated":
            raise ValueError(
                f"prior_conditions {self.prior_conditions!r} need pixelcnn_architecture 'gated' "
                f"(the masked PixelCNN takes no conditions), got {self.pixelcnn_architecture!r}"
            )
        for name in (
            "condition_dropout",
            "previous_slice_dropout",
            "previous_slice_noise",
            "fine_previous_slice_noise",
            "prior_input_noise",
        ):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("sampling_top_p", "sampling_coarse_top_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        check_quantizer_settings(
            num_embeddings=self.num_embeddings,
            latent_dim=self.latent_dim,
            beta=self.beta,
            ema_decay=self.ema_decay,
            ema_epsilon=self.ema_epsilon,
            dead_code_threshold=self.dead_code_threshold,
        )
        if self.dead_code_restart and self.dead_code_threshold >= 1.0 / self.num_embeddings:
            raise ValueError(
                f"dead_code_threshold {self.dead_code_threshold} is not below 1/num_embeddings = "
                f"{1.0 / self.num_embeddings:.3g}, the share of a code in uniform use: every code "
                "would count as dead and be restarted; lower it (a quarter of 1/num_embeddings "
                "works)"
            )
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, "
                f"got {self.reconstruction_loss!r}"
            )
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ValueError(
                f"learning_rate_schedule must be one of {LEARNING_RATE_SCHEDULES}, "
                f"got {self.learning_rate_schedule!r}"
            )
        for name in (
            "learning_rate_vqvae",
            "learning_rate_pixelcnn",
            "learning_rate_adversarial",
            "adversarial_weight",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if not self.vae_kl_weight > 0:
            raise ValueError(f"vae_kl_weight must be positive, got {self.vae_kl_weight}")
        if not 0.0 < self.ssim_target <= 1.0:
            raise ValueError(f"ssim_target must be in range (0, 1], got {self.ssim_target}")

    def _check_coarse_prior(self) -> None:
        """The rules of a two-level prior (`pixelcnn_coarse_codes` > 0)."""
        check_at_least("pixelcnn_coarse_codes", self.pixelcnn_coarse_codes, 2)
        if self.pixelcnn_architecture != "gated":
            raise ValueError(
                "pixelcnn_coarse_codes needs pixelcnn_architecture 'gated' (the coarse map "
                f"enters as a condition), got {self.pixelcnn_architecture!r}"
            )
        size = self.code_map_size
        if size % COARSE_FACTOR or size < 2 * COARSE_FACTOR:
            raise ValueError(
                f"pixelcnn_coarse_codes needs code maps whose side is a multiple of "
                f"{2 * COARSE_FACTOR} (blocks of {COARSE_FACTOR}x{COARSE_FACTOR} codes, at least "
                f"2x2 of them), got {size}x{size}"
            )

    @property
    def prior_told_positions(self) -> bool:
        """Whether the prior is told where each code is: `pixelcnn_position_features` of a gated
        prior (the masked PixelCNN takes no conditions)."""
        return self.pixelcnn_position_features and self.pixelcnn_architecture == "gated"

    @property
    def condition_names(self) -> tuple[str, ...]:
        """The prior's conditions in the order of `PRIOR_CONDITIONS` (() for "none"). "auto" is
        resolved from the data when the prior is trained (`brain_vqvae.training`): asking a
        configuration that still says "auto" raises `ValueError`."""
        names = parse_prior_conditions(self.prior_conditions)
        if names is None:
            raise ValueError(
                'prior_conditions is still "auto": it is resolved from the training data when '
                "the prior is trained"
            )
        return names

    @property
    def code_map_size(self) -> int:
        """Side of the square code map: image_size / 2**downsample_stages (8 for the card)."""
        return self.image_size // 2**self.downsample_stages

    @property
    def pixelcnn_dilations(self) -> tuple[int, ...]:
        """The dilation of each gated layer: 1, 2, ..., 2**(c - 1) repeated, with c the
        `gated_dilation_cycle` of the code map (1, 2, 4, 1, 2, 4 for the card). With p =
        pixelcnn_gated_kernel // 2 a layer of dilation d reaches back 0, d, ..., p d rows (and
        columns), so a cycle reaches every offset up to p (2**c - 1) >= h - 1 without holes."""
        cycle = gated_dilation_cycle(self.code_map_size, self.pixelcnn_gated_kernel)
        return tuple(2 ** (index % cycle) for index in range(self.pixelcnn_gated_layers))

    def replace(self, **changes: Any) -> Hyperparameters:
        """A validated copy with `changes` applied; unknown names raise `ValueError`."""
        return Hyperparameters.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Hyperparameters:
        """Inverse of `to_dict`; an unknown key is an error, a missing one takes its default,
        except `pixelcnn_architecture`, which is "masked" when missing, `prior_conditions`,
        "none", `pixelcnn_embed_previous_slice`, `pixelcnn_position_features` and
        `prior_mirror_images`, False, `epochs_adversarial` and `spectral_weight`, 0, and
        `fine_previous_slice_noise`, the configuration's `previous_slice_noise`, and
        `sampling_coarse_top_p`, its `sampling_top_p`: every configuration saved before those
        fields existed (a run's hyperparameters.json, a `.keras` PixelCNN's config) describes
        an unconditional masked PixelCNN, or a conditional one reading the slice below as
        one-hot codes, blurred alike for both levels and drawn from one nucleus, and no
        adversarial stage or one without a spectral term, and must keep loading as one."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s): {', '.join(unknown)}")
        values = {
            "pixelcnn_architecture": "masked",
            "prior_conditions": "none",
            "pixelcnn_embed_previous_slice": False,
            "pixelcnn_position_features": False,
            "prior_mirror_images": False,
            "epochs_adversarial": 0,
            "spectral_weight": 0.0,
            "fine_previous_slice_noise": values.get(
                "previous_slice_noise", cls.previous_slice_noise
            ),
            "previous_slice_dropout": values.get("condition_dropout", cls.condition_dropout),
            "sampling_coarse_top_p": values.get("sampling_top_p", cls.sampling_top_p),
            **values,
        }
        return cls(
            **{
                name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items()
            }
        )

    def save(self, path: str | Path) -> None:
        """Write as indented JSON (beside a trained model, as `hyperparameters.json`)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Hyperparameters:
        """Read a file written by `save`; a bad file raises `ValueError` naming it."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such hyperparameters file") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of hyperparameters")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The user's design: 8x8 code maps over a 16-embedding codebook, trained on SSIM + L1.
    "card": {},
    # 32x32 code maps over a 4096-embedding EMA codebook with dead-code restart, seeded by
    # k-means, from a light encoder: 32 and 64 filters, both at stride 2, then two residual
    # blocks; batches of 2; a prior over embedded codes. On real scans more codes and more
    # (smaller) updates raised the held-out SSIM, where more width, depth or a larger learning
    # rate did not; SSIM + L1 beat MSE; and without k-means the codebook left most of its codes
    # unused (BENCHMARKS.md). The gated prior is one cycle of dilations (1 ... 16) deep, so the
    # last code of a 32x32 map sees the first, and 64 filters wide, so that drawing 64 maps
    # and a volume stays within the sampling budget on a CPU (128 filters drew samples a little
    # more real, and volumes too slowly: BENCHMARKS.md, "hifi: what tells its samples from
    # reconstructions"). It is a two-level prior over 64 coarse codes:
    # trained for fewer epochs, its samples took the brain's layout, which the flat prior's did
    # not (BENCHMARKS.md, "The hifi prior in two levels"). Its fine level reads the slice below
    # clean (`fine_previous_slice_noise`), and its codes are drawn from the nucleus of
    # probability 0.9 (`sampling_top_p`; BENCHMARKS.md, "hifi: drawn from the nucleus"), its
    # coarse level's from every code (`sampling_coarse_top_p` 1, the default). Its
    # prior trains on the mirror images too (`prior_mirror_images`), as the card's does: twice
    # the maps, twice the prior's time, and brains drawn at their real size, with fewer
    # implausible layouts (BENCHMARKS.md, "hifi: its prior trained on mirror images too"). It
    # hides the slice below as the other conditions (`previous_slice_dropout` 0.25), as it was
    # measured; the card's 0.5 has not been measured on it, nor the adversarial stage, which it
    # goes without. Told the positions (`pixelcnn_position_features`), its prior coded held-out
    # maps no better and drew samples no more real (BENCHMARKS.md, "hifi: its prior told where
    # each code is").
    "hifi": {
        "encoder_filters": (32, 64),
        "downsample_stages": 2,
        "num_embeddings": 4096,
        "latent_dim": 32,
        "ema": True,
        "dead_code_restart": True,
        "dead_code_threshold": 6e-5,
        "kmeans_init": True,
        "residual_blocks": 2,
        "batch_size": 2,
        "pixelcnn_embedding_dim": 64,
        "pixelcnn_filters": 64,
        "pixelcnn_gated_layers": 5,
        "pixelcnn_coarse_codes": 64,
        "fine_previous_slice_noise": 0.0,
        "previous_slice_dropout": 0.25,
        "pixelcnn_position_features": False,
        "sampling_top_p": 0.9,
        "epochs_adversarial": 0,
    },
}


# The device a preset's batch is chosen for. The presets' own batches are the CPU's: on a 2-core
# CPU the time per image does not depend on the batch (the hifi model's epochs took 10 s at
# batches of 8, 4 and 2), so small batches give more updates for the same time, and on real
# scans more, smaller updates raised the hifi preset's held-out SSIM (BENCHMARKS.md, "hifi:
# 1024 codes, batches of 4" and "hifi: 4096 codes, batches of 2"). A GPU sits idle between small
# steps, but larger batches over the same epochs give fewer updates, and on the demo every larger
# batch measured ended with a lower test SSIM, with learning rates scaled by the square-root
# rule for Adam (`scaled_to_batch`) or not, and the card's codebook collapsed at the 256 chosen
# by that rule (BENCHMARKS.md, "The GPU's batch, judged on the demo"). So a GPU takes the
# presets' own batches until `bench/gpu.py --epochs` shows on one that a larger batch reaches
# the same SSIM in less time.
DEVICES = ("cpu", "gpu")
GPU_BATCH_SIZES = {"card": 32, "hifi": 2}


def coarse_prior_hyperparameters(hyperparameters: Hyperparameters) -> Hyperparameters:
    """The configuration of a two-level prior's coarse prior: the card's gated PixelCNN (its
    defaults: 128 filters, 6 layers, one-hot codes) over maps COARSE_FACTOR times smaller (an
    8x8 map for the hifi preset's 32x32, the size whose layout the card's prior learns) of
    `pixelcnn_coarse_codes` codes, with the same conditions and training settings. The smaller
    map is written as a smaller `image_size`: a prior reads no other field of the image."""
    defaults = Hyperparameters()
    return hyperparameters.replace(
        image_size=hyperparameters.image_size // COARSE_FACTOR,
        num_embeddings=hyperparameters.pixelcnn_coarse_codes,
        pixelcnn_coarse_codes=0,
        pixelcnn_embedding_dim=0,
        dead_code_restart=False,  # a VQ-VAE setting, checked against num_embeddings
        **{
            name: getattr(defaults, name)
            for name in ("pixelcnn_filters", "pixelcnn_gated_layers", "pixelcnn_gated_kernel")
        },
    )


def scaled_to_batch(hyperparameters: Hyperparameters, batch_size: int) -> Hyperparameters:
    """`hyperparameters` at batch B = `batch_size` instead of b = their `batch_size`, every
    stage's learning rate scaled by the square-root rule for adaptive optimizers, lr_B = lr_b
    sqrt(B / b) (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
    Algorithms", https://arxiv.org/abs/2205.10287), over the same epochs."""
    check_at_least("batch_size", batch_size, 1)
    factor = math.sqrt(batch_size / hyperparameters.batch_size)
    return hyperparameters.replace(
        batch_size=batch_size,
        **{
            name: getattr(hyperparameters, name) * factor
            for name in (
                "learning_rate_vqvae",
                "learning_rate_adversarial",
                "learning_rate_pixelcnn",
            )
        },
    )


def preset(name: str, device: str = "cpu") -> Hyperparameters:
    """The named preset ("card" is the default design, "hifi" the high-fidelity one), with the
    batch and learning rates for `device` ("cpu": the preset's own; "gpu": `GPU_BATCH_SIZES`,
    `scaled_to_batch`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    hyperparameters = Hyperparameters(**PRESETS[name])
    if device == "gpu":
        return scaled_to_batch(hyperparameters, GPU_BATCH_SIZES[name])
    return hyperparameters


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _argument_type(resolved: Any):
    if resolved is bool:
        return _parse_bool
    if get_origin(resolved) is tuple and get_args(resolved)[0] is int:
        return _parse_int_tuple
    return resolved


def add_hyperparameter_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--preset` and one `--field-name VALUE` flag per hyperparameter to `parser`."""
    group = parser.add_argument_group(
        "hyperparameters", "start from --preset, then override single fields"
    )
    group.add_argument(
        "--preset", choices=sorted(PRESETS), default="card", help="starting configuration"
    )
    defaults = Hyperparameters()
    types = get_type_hints(Hyperparameters)
    for field in fields(Hyperparameters):
        default = getattr(defaults, field.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_argument_type(types[field.name]),
            default=None,
            metavar=field.name.upper(),
            help=f"(card default: {shown})",
        )


def hyperparameters_from_arguments(
    arguments: argparse.Namespace, device: str = "cpu"
) -> Hyperparameters:
    """The preset named in `arguments`, for `device`, with every field given on the command
    line applied (a --batch-size given keeps the learning rates given, or the preset's)."""
    overrides = {
        field.name: getattr(arguments, field.name)
        for field in fields(Hyperparameters)
        if getattr(arguments, field.name, None) is not None
    }
    return preset(arguments.preset, device).replace(**overrides)
