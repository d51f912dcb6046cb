"""The two-stage model: the VQ-VAE (`vqvae`, with its `quantizer` and the decoder's output
`convolution`), its decoder fine-tuned against a discriminator to decode samples
(`adversarial`), the PixelCNN prior (`prior`, with the coarse level of a two-level prior in
`coarse`), sampling and coding (`sampler`), and the multi-device helpers they share
(`distribute`); and the classical baseline, a Gaussian VAE with the same encoder and decoder
(`vae`). The top-level `modules` gives the maths of both stages.

Every class here is registered with Keras under the package "brain_vqvae"
(`SERIALIZATION_PACKAGE`), so importing this package is enough for `keras.saving.load_model`.
"""

from brain_vqvae.model.adversarial import AdversarialDecoder, build_adversarial_decoder
from brain_vqvae.model.coarse import CoarseMap
from brain_vqvae.model.conditions import ConditionEncoder
from brain_vqvae.model.gated_prior import GatedLayer
from brain_vqvae.model.prior import (
    PIXELCNN_METRICS,
    MaskedConv2D,
    PixelCNN,
    build_pixelcnn,
    causal_mask,
)
from brain_vqvae.model.quantizer import VectorQuantizer, kmeans
from brain_vqvae.model.sampler import decode_code_maps, encode_code_maps, sample_code_maps
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.vae import (
    VAE_METRICS,
    GaussianVAE,
    build_vae,
    decode_latents,
    kl_divergence,
    posterior_draw_reconstructions,
    posterior_kl,
)
from brain_vqvae.model.vqvae import (
    VQVAE,
    VQVAE_METRICS,
    build_decoder,
    build_encoder,
    build_vqvae,
)

__all__ = [
    "PIXELCNN_METRICS",
    "SERIALIZATION_PACKAGE",
    "VAE_METRICS",
    "VQVAE",
    "VQVAE_METRICS",
    "AdversarialDecoder",
    "CoarseMap",
    "ConditionEncoder",
    "GatedLayer",
    "GaussianVAE",
    "MaskedConv2D",
    "PixelCNN",
    "VectorQuantizer",
    "build_adversarial_decoder",
    "build_decoder",
    "build_encoder",
    "build_pixelcnn",
    "build_vae",
    "build_vqvae",
    "causal_mask",
    "decode_code_maps",
    "decode_latents",
    "encode_code_maps",
    "kl_divergence",
    "kmeans",
    "posterior_draw_reconstructions",
    "posterior_kl",
    "sample_code_maps",
]
