"""`python train.py` end to end on a tiny dataset: the run folder, resume, refusals, NaN."""

from __future__ import annotations

import csv
import json
import math
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_arguments

import modules
import train
from bench import level_gap
from brain_vqvae import devices as devices_module
from brain_vqvae import generation, training
from brain_vqvae.optimizers import adam
from brain_vqvae.runs import RunError, RunFolder, load_run, load_run_data
from hyperparameters import Hyperparameters


def read_history(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_run_folder_holds_everything_it_promises(tiny_run, tiny_hyperparameters):
    out, metrics = tiny_run
    for name in (
        "hyperparameters.json",
        "vqvae.keras",
        "adversarial.keras",
        "pixelcnn.keras",
        "history_vqvae.csv",
        "history_adversarial.csv",
        "history_pixelcnn.csv",
        "loss.png",
        "ssim.png",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    # "auto" conditions become what the tiny PNG tree provides: levels, no demographics table
    assert Hyperparameters.load(out / "hyperparameters.json") == tiny_hyperparameters.replace(
        prior_conditions="slice_position,previous_slice"
    )
    saved = json.loads((out / "metrics.json").read_text())
    seconds = saved.pop("seconds")
    assert saved == pytest.approx(
        {name: value for name, value in metrics.items() if name != "seconds"}
    )
    # Each phase of the run took some time, none of it absurd.
    phases = {"load data", "vqvae", "adversarial", "encode", "encode mirrored", "pixelcnn", "test"}
    assert set(seconds) == phases  # the prior trains on the mirror images too by default
    assert all(0.0 <= value < 600.0 for value in seconds.values())
    assert seconds["vqvae"] > 0.0 and seconds["pixelcnn"] > 0.0
    for key in (
        "ssim_mean",
        "ssim_median",
        "psnr_mean",
        "mae_mean",
        "fraction_above_target",
        "perplexity",
        "codes_used",
        "prior_bits_per_code",
    ):
        assert math.isfinite(saved[key]), key
    assert saved["slices"] == 6
    # A trained codebook that has not collapsed: several codes carry the slices.
    assert 0.5 <= saved["codes_used"] <= 1.0
    assert 2.0 <= saved["perplexity"] <= tiny_hyperparameters.num_embeddings
    assert saved["ssim_mean"] > 0.2
    assert saved["uniform_bits_per_code"] == pytest.approx(3.0)


def test_vqvae_loss_falls_and_the_history_has_the_metrics(tiny_run):
    out, _ = tiny_run
    history = read_history(out / "history_vqvae.csv")
    assert len(history) == 8
    for column in (
        "loss",
        "val_loss",
        "perplexity",
        "codes_used",
        "val_ssim",
        "val_above_target",
        "val_ssim_p05",
    ):
        assert column in history[0], column
    # The validation SSIM's 5th percentile is at most its mean, and above_target a share.
    for row in history:
        assert float(row["val_ssim_p05"]) <= float(row["val_ssim"]) + 0.005
        assert 0.0 <= float(row["val_above_target"]) <= 1.0
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    assert len(read_history(out / "history_pixelcnn.csv")) == 2


def test_saved_models_keep_the_promised_interfaces(tiny_run, tiny_hyperparameters):
    out, _ = tiny_run
    vqvae = keras.saving.load_model(out / "vqvae.keras")
    pixelcnn = keras.saving.load_model(out / "pixelcnn.keras")
    images = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    assert vqvae(images).shape == (3, 32, 32, 1)
    code_maps = modules.sample_code_maps(pixelcnn, 4, seed=1)
    assert code_maps.shape == (4, 8, 8)
    assert pixelcnn(code_maps.astype(np.int32)).shape == (4, 8, 8, 8)


def test_a_second_run_into_the_same_folder_is_refused(tiny_run, tiny_hyperparameters):
    out, _ = tiny_run
    before = (out / "vqvae.keras").stat().st_mtime_ns
    with pytest.raises(training.RunError, match="already holds a run"):
        train.run_training(tiny_arguments(tiny_hyperparameters, "unused", out), verbose=0)
    assert (out / "vqvae.keras").stat().st_mtime_ns == before


def test_resume_continues_the_epoch_count_on_the_runs_own_data(
    tiny_hyperparameters, tiny_png_tree, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    short = tiny_hyperparameters.replace(epochs_vqvae=1)
    train.run_training(tiny_arguments(short, tiny_png_tree, out, "--stage", "vqvae"), verbose=0)
    assert len(read_history(out / "history_vqvae.csv")) == 1
    first_line = capsys.readouterr().out.splitlines()[0]
    assert f"batch {short.batch_size} and learning rates" in first_line
    assert first_line.endswith("the batch as given")

    # Killed before metrics.json was written, and resumed without --data: the run's own data,
    # not the demo dataset (here a folder of no slices, which would fail to load).
    (out / "metrics.json").unlink()
    monkeypatch.setattr(train, "DEMO_DATA_DIR", tmp_path / "demo")
    (tmp_path / "demo").mkdir()
    resumed = tiny_arguments(short, tiny_png_tree, out, "--stage", "vqvae", "--resume")
    resumed.data = None
    resumed.epochs_vqvae = 3
    resumed.batch_size = None  # not given again: the run's own, whatever the device
    resumed.device = "gpu"
    train.run_training(resumed, verbose=0)
    data_line, batch_line = capsys.readouterr().out.splitlines()[:2]
    assert data_line == f"data: {tiny_png_tree.resolve()}, the run's own (--data to change it)"
    assert json.loads((out / "metrics.json").read_text())["data"] == str(tiny_png_tree.resolve())
    assert f"for the GPU: batch {short.batch_size} " in batch_line
    assert batch_line.endswith("the run's own")
    epochs = [int(row["epoch"]) for row in read_history(out / "history_vqvae.csv")]
    assert epochs == [0, 1, 2]
    assert json.loads((out / "checkpoints" / "state.json").read_text())["vqvae"]["epochs_done"] == 3


def test_resume_refuses_a_changed_configuration(tiny_hyperparameters, tiny_png_tree, tmp_path):
    out = tmp_path / "run"
    short = tiny_hyperparameters.replace(epochs_vqvae=1)
    train.run_training(tiny_arguments(short, tiny_png_tree, out, "--stage", "vqvae"), verbose=0)
    changed = tiny_arguments(short.replace(num_embeddings=4), tiny_png_tree, out, "--resume")
    with pytest.raises(training.RunError, match="num_embeddings"):
        train.run_training(changed, verbose=0)


@pytest.mark.parametrize("stage", ["pixelcnn", "adversarial"])
def test_a_later_stage_alone_needs_a_trained_vqvae(
    tiny_hyperparameters, tiny_png_tree, tmp_path, stage
):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    arguments = tiny_arguments(tiny_hyperparameters, tiny_png_tree, out, "--stage", stage)
    with pytest.raises(training.RunError, match=f"--stage {stage} needs a trained vqvae.keras"):
        train.run_training(arguments, verbose=0)
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_hyperparameters, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(training.RunError, match="not a run folder"):
        training.prepare_run_folder(out, training.STAGES, resume=False, overwrite=True)
    assert (out / "thesis.tex").exists()


def test_a_nan_loss_stops_training_with_a_clear_message(tmp_path):
    run = training.prepare_run_folder(tmp_path / "run", ("toy",), resume=False, overwrite=False)
    inputs = np.full((8, 2), np.nan, dtype=np.float32)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    targets = np.ones((8, 1), np.float32)
    nan_data = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)
    callbacks, guard = training.stage_callbacks(
        run, "toy", Hyperparameters(), resume=False, tensorboard=False
    )
    with pytest.raises(training.RunError, match="NaN at epoch 1, batch 1"):
        training.fit_stage(model, run, "toy", nan_data, nan_data, 3, callbacks, guard, verbose=0)
    assert not run.model("toy").exists()


def test_cosine_schedule_decays_to_five_percent_and_constant_stays():
    """lr(t) = lr (0.05 + 0.95 (1 + cos(pi t / T)) / 2): 1, 0.525 and 0.05 of lr at 0, T/2, T."""
    cosine = adam(1e-3, "cosine", total_steps=100)
    constant = adam(1e-3, "constant", total_steps=100)
    for step, fraction in ((0, 1.0), (50, 0.525), (100, 0.05), (150, 0.05)):
        cosine.iterations.assign(step)
        constant.iterations.assign(step)
        assert float(cosine.learning_rate) == pytest.approx(fraction * 1e-3, rel=1e-4), step
        assert float(constant.learning_rate) == pytest.approx(1e-3), step


def test_pixel_variance_is_on_the_unit_scale(tiny_png_tree):
    from dataset import load_slices

    train_split = load_slices(tiny_png_tree, image_size=32).splits["train"]
    expected = np.var(train_split.images.astype(np.float64) / 255.0)
    assert training.pixel_variance(train_split) == pytest.approx(expected, rel=1e-9)
    assert training.pixel_variance(train_split) < 1.0


def test_retraining_the_prior_may_change_the_prior_and_keeps_the_vqvae(
    tiny_run, tiny_hyperparameters, tiny_png_tree, tmp_path
):
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    vqvae_before = (out / "vqvae.keras").read_bytes()
    masked = tiny_hyperparameters.replace(pixelcnn_architecture="masked", epochs_pixelcnn=1)
    argv = ("--stage", "pixelcnn", "--overwrite")
    train.run_training(tiny_arguments(masked, tiny_png_tree, out, *argv), verbose=0)
    run = load_run(out)
    assert run.hyperparameters.pixelcnn_architecture == "masked"
    assert run.pixelcnn.hyperparameters.pixelcnn_architecture == "masked"
    assert (out / "vqvae.keras").read_bytes() == vqvae_before
    with pytest.raises(training.RunError, match=r"num_embeddings.*only pixelcnn_"):
        changed = masked.replace(num_embeddings=4)
        train.run_training(tiny_arguments(changed, tiny_png_tree, out, *argv), verbose=0)
    unmirrored = tiny_hyperparameters.replace(prior_mirror_images=False, epochs_pixelcnn=1)
    train.run_training(tiny_arguments(unmirrored, tiny_png_tree, out, *argv), verbose=0)
    assert not load_run(out).hyperparameters.prior_mirror_images
    assert "encode mirrored" not in json.loads((out / "metrics.json").read_text())["seconds"]


def test_the_adversarial_decoder_draws_the_samples_and_the_vqvae_reconstructs(tiny_run):
    out, _ = tiny_run
    run = load_run(out)
    history = read_history(out / "history_adversarial.csv")
    assert len(history) == 1
    assert {"discriminator_loss", "generator_loss", "val_reconstruction_loss"} <= set(history[0])
    assert run.generator is run.adversarial.vqvae
    np.testing.assert_array_equal(run.generator.quantizer.codebook, run.vqvae.quantizer.codebook)
    code_maps, slices = generation.sample_slices(run, 3, seed=4)
    drawn = modules.decode_code_maps(run.generator, code_maps)
    np.testing.assert_array_equal(slices, generation.to_uint8(drawn))
    assert np.abs(drawn - modules.decode_code_maps(run.vqvae, code_maps)).max() > 1e-3
    images = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    reconstructed = generation.reconstruct(run, images, ["a", "b"]).reconstructions
    np.testing.assert_array_equal(
        reconstructed, modules.decode_code_maps(run.vqvae, run.vqvae.code_indices(images))
    )


def test_retraining_the_adversarial_decoder_keeps_the_rest_and_a_new_vqvae_drops_it(
    tiny_run, tiny_png_tree, tmp_path
):
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    kept = {name: (out / name).read_bytes() for name in ("vqvae.keras", "pixelcnn.keras")}
    saved = Hyperparameters.load(out / "hyperparameters.json")
    stronger = saved.replace(adversarial_weight=0.1, spectral_weight=0.3, epochs_adversarial=2)
    argv = ("--stage", "adversarial", "--overwrite")
    train.run_training(tiny_arguments(stronger, tiny_png_tree, out, *argv), verbose=0)
    assert {name: (out / name).read_bytes() for name in kept} == kept
    run = load_run(out)
    assert run.hyperparameters.adversarial_weight == 0.1
    assert run.adversarial.hyperparameters.adversarial_weight == 0.1
    assert run.adversarial.hyperparameters.spectral_weight == 0.3
    assert len(read_history(out / "history_adversarial.csv")) == 2
    with pytest.raises(training.RunError, match=r"num_embeddings.*only epochs_adversarial"):
        changed = stronger.replace(num_embeddings=4)
        train.run_training(tiny_arguments(changed, tiny_png_tree, out, *argv), verbose=0)

    # A new VQ-VAE has new codes: the adversarial decoder fine-tuned from the old one goes.
    vqvae = saved.replace(epochs_vqvae=1)
    argv = ("--stage", "vqvae", "--overwrite")
    train.run_training(tiny_arguments(vqvae, tiny_png_tree, out, *argv), verbose=0)
    assert not (out / "adversarial.keras").exists()
    run = load_run(out)
    assert run.adversarial is None and run.generator is run.vqvae


def test_the_adversarial_stage_alone_without_epochs_says_so(
    tiny_hyperparameters, tiny_png_tree, tmp_path
):
    """A run trained before the stage has `epochs_adversarial` 0: asking for the stage alone
    must not silently train nothing."""
    none = tiny_hyperparameters.replace(epochs_adversarial=0)
    arguments = tiny_arguments(none, tiny_png_tree, tmp_path / "run", "--stage", "adversarial")
    with pytest.raises(training.RunError, match="trains nothing.*--epochs-adversarial"):
        train.run_training(arguments, verbose=0)


def test_an_adversarial_decoder_of_another_vqvae_is_refused(
    tiny_run, tiny_hyperparameters, tmp_path
):
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    other = modules.build_vqvae(tiny_hyperparameters, 0.05)
    modules.build_adversarial_decoder(other, tiny_hyperparameters).save(out / "adversarial.keras")
    with pytest.raises(training.RunError, match="adversarial.keras was fine-tuned from another"):
        load_run(out)


def test_a_prior_deleted_by_hand_is_retrained_from_its_first_epoch(
    tiny_run, tiny_hyperparameters, tiny_png_tree, tmp_path
):
    """The state still records the deleted prior's finished epochs; a new training of the
    stage must not take them up (it would train nothing and save nothing)."""
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    folder = RunFolder(out)
    assert folder.read_state()["pixelcnn"]["finished"]
    for file in [folder.metrics, *folder.stage_files("pixelcnn")]:
        file.unlink(missing_ok=True)
    prior = tiny_hyperparameters.replace(epochs_pixelcnn=1)
    argv = ("--stage", "pixelcnn")
    train.run_training(tiny_arguments(prior, tiny_png_tree, out, *argv), verbose=0)
    assert len(read_history(out / "history_pixelcnn.csv")) == 1
    assert load_run(out).pixelcnn is not None


def test_a_prior_retrained_as_two_levels_draws_slices_and_volumes(
    tiny_run, tiny_hyperparameters, tiny_png_tree, tmp_path, monkeypatch
):
    """`--pixelcnn-coarse-codes` on an existing run: the coarse map reads the run's VQ-VAE
    codebook, the coarse prior takes the run's conditions, and the run draws from both. In a
    volume the fine level reads the slice below as trained, here clean
    (`fine_previous_slice_noise` 0), the coarse level with a quarter of its codes random
    (`previous_slice_noise`)."""
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    two_level = tiny_hyperparameters.replace(
        pixelcnn_coarse_codes=4, epochs_pixelcnn=2, fine_previous_slice_noise=0.0
    )
    argv = ("--stage", "pixelcnn", "--overwrite")
    metrics = train.run_training(tiny_arguments(two_level, tiny_png_tree, out, *argv), verbose=0)
    run = load_run(out)
    prior = run.pixelcnn
    np.testing.assert_array_equal(
        prior.coarse_map.code_vectors.numpy(), run.vqvae.quantizer.codebook.numpy()
    )
    assert prior.coarse_prior.condition_names == prior.condition_names
    assert "previous_slice" in prior.condition_names
    history = read_history(out / "history_pixelcnn.csv")
    assert float(history[-1]["coarse_loss"]) < float(history[0]["coarse_loss"])
    assert 0 < metrics["prior_bits_per_code"] < metrics["uniform_bits_per_code"] + 1

    codes, slices = generation.sample_slices(run, 3, seed=2, conditions={"slice_position": 0.5})
    assert codes.shape == (3, 8, 8) and slices.shape == (3, 32, 32)
    volume_codes, volumes = generation.sample_volumes(run, 1, depth=4, seed=2)
    assert volume_codes.shape == (1, 4, 8, 8) and volumes.shape == (1, 4, 32, 32)
    training_slices = load_run_data(run).splits["train"]
    both = level_gap.draw_both_ways(run, training_slices, 3, seed=2)  # bench/level_gap.py
    assert {name: images.shape for name, images in both.items()} == {
        "prior": (3, 32, 32, 1),
        "coarse_given": (3, 32, 32, 1),
    }
    with pytest.raises(RunError, match="not a two-level prior"):
        level_gap.level_gap(tiny_run[0], None, "test", 3, seed=0)
    again, _ = generation.sample_volumes(run, 1, depth=4, seed=2)
    np.testing.assert_array_equal(again, volume_codes)

    asked, draw = [], generation.sample_code_maps

    def recording(pixelcnn, count, **options):
        asked.append((options["conditions"].get("previous_slice"), options["coarse_slice_below"]))
        nuclei.append((options["top_p"], options["coarse_top_p"]))
        return draw(pixelcnn, count, **options)

    nuclei = []
    monkeypatch.setattr(generation, "sample_code_maps", recording)
    volume_codes, _ = generation.sample_volumes(run, 16, depth=3, seed=2)
    assert asked[0] == (None, None)
    # Each level from its own nucleus: the run's (every code, both) unless told otherwise.
    assert nuclei == [(1.0, 1.0)] * 3
    generation.sample_volumes(run, 2, depth=2, seed=2, top_p=0.9, coarse_top_p=0.8)
    assert nuclei[3:] == [(0.9, 0.8)] * 2
    codes = run.hyperparameters.num_embeddings
    for level in (1, 2):
        fine_below, coarse_below = asked[level]
        np.testing.assert_array_equal(fine_below, volume_codes[:, level - 1])
        changed = (coarse_below != volume_codes[:, level - 1]).mean()
        assert changed == pytest.approx(0.25 * (codes - 1) / codes, abs=0.05)


@pytest.mark.parametrize(
    ("devices", "found"),
    [(["cpu:0"], "cpu"), (["gpu:0", "gpu:1"], "gpu"), (["tpu:0"], "gpu")],
)
def test_the_batch_is_chosen_for_the_device_keras_finds(monkeypatch, devices, found):
    monkeypatch.setattr(devices_module, "list_devices", lambda: devices)
    assert devices_module.found_device() == found
