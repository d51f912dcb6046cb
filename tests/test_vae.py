"""The Gaussian VAE baseline: its vector latent and KL term, training by train.py --model vae,
saving and loading, sampling, the scripts on a VAE run, and old VQ-VAE runs still loading as
such."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from conftest import tiny_arguments

import predict
import similarity
import train
from brain_vqvae import generation
from brain_vqvae.model import (
    build_vae,
    build_vqvae,
    kl_divergence,
    posterior_draw_reconstructions,
    posterior_kl,
)
from brain_vqvae.runs import RunError, load_run
from hyperparameters import Hyperparameters


@pytest.fixture(scope="session")
def vae_hyperparameters(tiny_hyperparameters) -> Hyperparameters:
    return tiny_hyperparameters.replace(model="vae", vae_kl_weight=0.1, vae_latent_dim=8)


@pytest.fixture(scope="session")
def vae_run(vae_hyperparameters, tiny_png_tree, tmp_path_factory):
    """A VAE run trained once per session by `train.py --model vae`, and its metrics."""
    out = tmp_path_factory.mktemp("runs") / "tiny-vae"
    cache = tmp_path_factory.mktemp("cache")
    arguments = tiny_arguments(vae_hyperparameters, tiny_png_tree, out, "--cache-dir", str(cache))
    return out, train.run_training(arguments, verbose=0)


def test_kl_term_matches_a_hand_computation():
    mean = np.array([[0.5, -1.0, 0.0, 2.0]], np.float32)  # [1, d = 4]
    log_variance = np.array([[0.0, np.log(2.0), -1.0, 0.5]], np.float32)
    by_hand = [
        0.25 + 1 - 1 - 0,
        1.0 + 2 - 1 - np.log(2.0),
        0.0 + np.exp(-1.0) - 1 + 1,
        4.0 + np.exp(0.5) - 1 - 0.5,
    ]
    expected = 0.5 * np.mean(by_hand)
    np.testing.assert_allclose(kl_divergence(mean, log_variance), [expected], rtol=1e-6)
    zero = np.zeros((3, 4), np.float32)
    np.testing.assert_allclose(kl_divergence(zero, zero), np.zeros(3), atol=1e-7)


def test_the_latent_is_one_vector_per_image(vae_hyperparameters):
    vae = build_vae(vae_hyperparameters, data_variance=0.05)
    images = np.random.default_rng(1).random((5, 32, 32, 1)).astype(np.float32)
    mean, log_variance = (np.asarray(value) for value in vae.posterior(images))
    assert mean.shape == log_variance.shape == (5, 8) and vae.latent_shape == (8,)
    assert vae.decoder_inputs(mean).shape == (5, 8, 8, 4)  # the decoder's [h, h, latent_dim]
    assert vae.decode(mean).shape == (5, 32, 32, 1)
    assert vae.prior_latents(3, seed=0).shape == (3, 8)
    # The model's KL, by hand from its posterior: nats per element of the d-vector.
    terms = np.square(mean) + np.exp(log_variance) - 1.0 - log_variance
    np.testing.assert_allclose(posterior_kl(vae, images, 2), 0.5 * terms.mean(axis=1), rtol=1e-5)
    # `call` decodes the posterior mean: no draw, so the same images give the same output.
    first = np.asarray(vae(images))
    np.testing.assert_array_equal(first, np.asarray(vae(images)))
    np.testing.assert_allclose(first, np.asarray(vae.decode(mean)), atol=1e-6)


def with_log_variance(vae, value: float):
    """`vae` with its posterior's log sigma^2 set to `value` for every image (mu unchanged)."""
    kernel, bias = vae.posterior_dense.get_weights()
    size = vae.latent_shape[0]
    kernel[:, size:], bias[size:] = 0.0, value
    vae.posterior_dense.set_weights([kernel, bias])
    return vae


def test_a_posterior_draw_decodes_mu_plus_sigma_times_noise(vae_hyperparameters):
    images = np.random.default_rng(1).random((5, 32, 32, 1)).astype(np.float32)
    vae = with_log_variance(build_vae(vae_hyperparameters, data_variance=0.05), -30.0)
    # sigma = exp(-15): the draw is mu, so it decodes as the model's own reconstruction.
    drawn = posterior_draw_reconstructions(vae, images, batch_size=2, seed=0)
    np.testing.assert_allclose(drawn, np.asarray(vae(images)), atol=1e-5)
    vae = with_log_variance(vae, 0.0)  # sigma = 1
    mean = np.asarray(vae.posterior(images)[0])
    noise = np.random.default_rng(3).standard_normal(mean.shape)  # one batch: one draw in order
    expected = np.asarray(vae.decode((mean + noise).astype(np.float32)))
    drawn = posterior_draw_reconstructions(vae, images, batch_size=8, seed=3)
    np.testing.assert_allclose(drawn, expected, atol=1e-5)
    assert not np.allclose(drawn, np.asarray(vae(images)), atol=1e-3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": "gan"}, "model"),
        ({"vae_kl_weight": 0.0}, "vae_kl_weight"),
        ({"vae_latent_dim": 0}, "vae_latent_dim"),
    ],
)
def test_model_fields_are_validated(changes, field):
    with pytest.raises(ValueError, match=field):
        Hyperparameters(**changes)


def test_training_lowers_the_loss_and_writes_the_run(vae_run):
    out, metrics = vae_run
    assert (out / "vae.keras").exists() and (out / "history_vae.csv").exists()
    assert not (out / "vqvae.keras").exists() and not (out / "pixelcnn.keras").exists()
    history = np.genfromtxt(out / "history_vae.csv", delimiter=",", names=True)
    assert history["loss"][-1] < history["loss"][0]
    assert {"kl_loss", "val_kl_loss", "ssim", "val_ssim"} <= set(history.dtype.names)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert np.isfinite(saved["ssim_mean"]) and np.isfinite(saved["kl_loss"])
    assert -1.0 <= saved["ssim_mean_posterior_draw"] <= 1.0
    assert not {"perplexity", "codes_used", "prior_bits_per_code"} & set(saved)


def test_the_saved_model_reloads_with_identical_reconstructions(vae_run):
    out, _ = vae_run
    run = load_run(out)
    assert run.kind == "vae" and run.pixelcnn is None
    reloaded = keras.saving.load_model(out / "vae.keras")
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(run.autoencoder(images), reloaded(images))
    posteriors = run.autoencoder.posterior(images), reloaded.posterior(images)
    for mine, theirs in zip(*posteriors, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(run.autoencoder.sample(2, seed=5), reloaded.sample(2, seed=5))
    with pytest.raises(RunError, match="VAE run"):
        _ = run.vqvae


def test_a_run_whose_latent_size_disagrees_is_refused(vae_run, tmp_path):
    out = shutil.copytree(vae_run[0], tmp_path / "run")
    values = json.loads((out / "hyperparameters.json").read_text())
    (out / "hyperparameters.json").write_text(json.dumps({**values, "vae_latent_dim": 16}))
    with pytest.raises(RunError, match="vae_latent_dim"):
        load_run(out)


def test_samples_are_reproducible_by_seed(vae_hyperparameters):
    vae = build_vae(vae_hyperparameters, data_variance=0.05)
    first, again, other = (vae.sample(4, seed=seed) for seed in (3, 3, 4))
    assert first.shape == (4, 32, 32, 1) and first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    cooler = vae.prior_latents(4, temperature=0.5, seed=3)
    np.testing.assert_allclose(cooler, 0.5 * vae.prior_latents(4, seed=3), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        vae.prior_latents(2, temperature=0.0)


def test_sample_slices_dispatches_to_the_gaussian_prior(vae_run):
    run = load_run(vae_run[0])
    latents, slices = generation.sample_slices(run, 3, temperature=0.8, seed=7)
    assert latents.shape == (3, 8) and slices.shape == (3, 32, 32)
    assert slices.dtype == np.uint8
    np.testing.assert_array_equal(slices, generation.sample_slices(run, 3, 0.8, seed=7)[1])
    for cut in ({"top_p": 0.9}, {"coarse_top_p": 0.9}):  # a Gaussian prior has no codes to cut
        with pytest.raises(ValueError, match="coarse_top_p and conditions belong to a PixelCNN"):
            generation.sample_slices(run, 2, **cut)


def test_predict_samples_and_reconstructs_a_vae_run(vae_run, tmp_path):
    out, _ = vae_run
    samples = tmp_path / "samples"
    assert predict.main(["--run", str(out), "--num", "4", "--out", str(samples)]) == 0
    assert (samples / "samples.png").exists() and (samples / "sample_003.png").exists()
    rebuilt = tmp_path / "reconstructions"
    assert predict.main(["--run", str(out), "--reconstruct", "--out", str(rebuilt)]) == 0
    assert (rebuilt / "reconstructions.png").exists()


def test_similarity_reports_the_measures_that_apply(vae_run, tmp_path, capsys):
    out, _ = vae_run
    argv = ["--run", str(out), "--samples", "4", "--out", str(tmp_path), "--json"]
    for cut in (["--top-k", "2"], ["--top-p", "0.9"], ["--coarse-top-p", "0.9"]):
        assert similarity.main([*argv, *cut]) == 2
        assert "belong to a PixelCNN prior" in capsys.readouterr().err
    assert similarity.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    keys = ("ssim_mean", "ssim_mean_posterior_draw", "kl_loss", "novelty_ssim_max")
    for key in (*keys, "novelty_ssim_mean"):
        assert np.isfinite(report[key]), key
    assert report["samples"] == 4 and "smaller half has 3" in report["realism_skipped"]
    assert not {"prior_bits_per_code", "code_usage_total_variation"} & set(report)


def test_the_prior_stage_of_a_vae_run_is_refused(vae_run, tiny_png_tree, tmp_path, capsys):
    out = shutil.copytree(vae_run[0], tmp_path / "run")
    argv = ["--data", str(tiny_png_tree), "--out", str(out), "--stage", "pixelcnn"]
    assert train.main(argv) == 2
    assert "no prior stage" in capsys.readouterr().err
    assert not (out / "pixelcnn.keras").exists()


def test_latent_refuses_a_vae_run(vae_run, tmp_path, capsys):
    import latent

    assert latent.main(["--run", str(vae_run[0]), "--out", str(tmp_path / "latent")]) == 2
    assert "no VQ-VAE codes" in capsys.readouterr().err


def test_an_old_run_without_a_model_key_loads_as_a_vqvae_run(tiny_hyperparameters, tmp_path):
    build_vqvae(tiny_hyperparameters, data_variance=0.05).save(tmp_path / "vqvae.keras")
    values = tiny_hyperparameters.to_dict()
    del values["model"], values["vae_kl_weight"], values["vae_latent_dim"]
    (tmp_path / "hyperparameters.json").write_text(json.dumps(values))
    run = load_run(tmp_path, prior="skip")
    assert run.kind == "vqvae" and run.vqvae is run.autoencoder
    assert run.vqvae(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 32, 32, 1)
