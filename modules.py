"""The two-stage model: a VQ-VAE that turns a brain slice into a small map of codes, and a
PixelCNN prior that learns (and samples) the distribution of those code maps.

Stage 1, the VQ-VAE (van den Oord, Vinyals and Kavukcuoglu 2017, "Neural Discrete
Representation Learning"). For the default design ("the card") a slice x of shape
[128, 128, 1] on the [0, 1] scale goes through

    encoder      z_e = E(x - 1/2)                  [8, 8, 16]   3x3 ReLU convs, 4 of stride 2
    quantizer    k(i, j) = argmin_k ||z_e(i, j) - e_k||^2        [8, 8] indices into the
                 z_q(i, j) = e_k(i, j)             [8, 8, 16]   codebook e of shape [16, 16]
    decoder      x_hat = D(z_q) + 1/2              [128, 128, 1] mirrored transposed convs

and is trained on (eq. 3 of the paper, with sg the stop-gradient)

    L = L_rec(x, x_hat) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2
                          (codebook term)     (commitment term)

where the gradient of L_rec reaches the encoder through the straight-through estimator
z_q = z_e + sg[e - z_e]. L_rec is either ||x - x_hat||^2 / var(x) ("mse", the scaling of
DeepMind's VQ-VAE notebook) or 0.84 (1 - SSIM(x, x_hat)) + 0.16 |x - x_hat| ("ssim_l1", Zhao
et al. 2017, "Loss Functions for Image Restoration with Neural Networks"). With the EMA
codebook option the codebook term is replaced by exponential moving averages of the encoder
outputs assigned to each code (`VectorQuantizer`).

The decoder output is linear, on centred data: the encoder sees x - 1/2, the decoder predicts
x_hat - 1/2. A sigmoid would saturate exactly where brain slices live: about half of every
slice is background at exactly 0, which a sigmoid only reaches as its input goes to minus
infinity, where its gradient vanishes. The linear output reaches 0 exactly and keeps its
gradient, which is how DeepMind's notebook and the keras-io example train. The model's public
contract is still [0, 1] in and [0, 1] out: `VQVAE.__call__`, `decode_indices` and
`decode_code_maps` clip to [0, 1]; only the losses see the raw linear output.

Why var(x) must be computed on the [0, 1] scale the model sees. Dividing by the variance makes
L_rec about 1 for a model that predicts the mean image, so it is commensurate with the
quantizer terms. A variance computed on 0-255 pixels while the model sees [0, 1] images is
255^2 = 65,025 times too large, so L_rec shrinks by that factor. This does not switch the
commitment term off; it makes it dominate: the encoder's gradient is then about 65,000 parts
beta ||z_e - sg[e]||^2 to one part reconstruction, so the encoder learns to sit on codebook
vectors instead of carrying the image, codes collapse (perplexity near 1) and reconstructions
become a blurry mean slice, while the decoder, whose only signal is L_rec, still trains (Adam
rescales its tiny gradients), so the loss curve looks healthy. It is the opposite mistake, a
variance from [0, 1] values with the model fed 0-255 pixels, that makes L_rec 65,025 times too
large and so effectively switches the commitment term off, letting the encoder outputs drift
away from the codebook. `VQVAE` therefore refuses a variance above 0.25, the largest variance
any values in [0, 1] can have.

Stage 2, the prior (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"; "Conditional
Image Generation with PixelCNN Decoders"). The code maps of the training images are modelled
autoregressively in raster order,

    p(k) = prod_{(i, j)} p(k(i, j) | k(i', j') for (i', j') before (i, j)),

by a PixelCNN over one-hot codes [8, 8, 16] (learned embeddings of them for a large codebook)
to 16 logits per position [8, 8, 16]. "masked" (`pixelcnn_architecture`): 7x7 mask-A
convolution -> residual blocks of masked 3x3 mask-B convolutions -> 1x1 convolution; mask A
hides the current position and everything after it, mask B only what comes after it, which
leaves a blind spot up and right of (i, j) and a reach of a few rows. "gated" (the card's
default): gated layers h = tanh(W_f * x) . sigmoid(W_g * x) in a vertical stack (rows <= i,
reaching the horizontal stack shifted down one row) and a horizontal stack (row i left of j),
dilated 1, 2, 4, ... so that (i, j) sees every earlier code (`gated_prior`). Either way the
logits at (i, j) depend on earlier codes only. A conditional (gated) prior models
p(k | c) for conditions c (the slice's level, the subject's age, sex and CDR, the code map of
the slice below): an embedding of c is projected into every gated layer's pre-activations,
and conditions hidden at random in training let any subset of them be given
(`brain_vqvae.model.conditions`). A two-level prior (`pixelcnn_coarse_codes`, as the top level
of VQ-VAE-2) factorises p(k) = p(u) p(k | u) through a coarse map u, one of C codes per 4x4
block of k (k-means of the block's mean code vector): a second gated prior draws u first, and
the prior of k reads all of u as one more condition (`brain_vqvae.model.coarse`).
`sample_code_maps` draws new maps position by
position in one compiled loop that computes each position's features once and caches them
(`_RasterScan`, `_GatedRasterScan`), with temperature, top-k and nucleus (top-p) sampling;
`decode_code_maps` turns them into slices.

Between the two, the adversarial stage (`brain_vqvae.model.adversarial`, as in VQGAN, Esser et
al. 2021): a decoder trained on L_rec alone draws each code map as the mean of the slices it
stands for, smoother and more alike than real slices. A copy of it is fine-tuned, the encoder
and codebook frozen (so the codes and the prior keep their meaning), on
L_rec + lambda mean softplus(-D(x_hat)) against a PatchGAN discriminator D trained on the
hinge loss mean relu(1 - D(x)) + mean relu(1 + D(x_hat)); the samples are decoded by it and
real slices still reconstructed by the VQ-VAE.

The baseline, a Gaussian VAE (Kingma and Welling 2014, `brain_vqvae.model.vae`), keeps the
encoder and decoder and replaces the quantizer by one latent vector per image: the [8, 8, 16]
encoder output is flattened and a dense layer gives a diagonal Gaussian posterior over
z in R^d (d = `vae_latent_dim`, 128), q(z | x) = N(mu(z_e), sigma^2(z_e)); z = mu + sigma eps
is mapped back to an [8, 8, 16] map by a second dense layer and decoded. It is trained on
L_rec plus a weighted KL divergence to N(0, I), and new slices are decoded from z ~ N(0, I)
with no learned prior (`python train.py --model vae`).

Where it lives (the package `brain_vqvae`): `brain_vqvae.metrics` (SSIM, PSNR and the code
metrics), `brain_vqvae.model.quantizer` (`VectorQuantizer`, k-means), `.vqvae` (encoder,
decoder, `VQVAE`), `.adversarial` (`AdversarialDecoder`), `.prior` (`MaskedConv2D`,
`PixelCNN`), `.gated_prior` (`GatedLayer`), `.conditions` (`ConditionEncoder`, the checks of a
request), `.coarse` (`CoarseMap`), `.sampler` (sampling, encoding and decoding code maps),
`.vae` (the baseline's `GaussianVAE`) and `.distribute` (the tf.distribute helpers). This
module re-exports the public API of `brain_vqvae.model` and `structural_similarity`, so
`import modules` also registers every model class for `keras.saving.load_model`.
"""

from brain_vqvae import model
from brain_vqvae.metrics import structural_similarity
from brain_vqvae.model import *  # noqa: F403  (the model's public API, re-exported)

__all__ = [*model.__all__, "structural_similarity"]
