"""The configuration: card defaults, validation, JSON round trip, command-line overrides."""

import argparse
import json

import numpy as np
import pytest

from hyperparameters import (
    ARCHITECTURE_FIELDS,
    Hyperparameters,
    add_hyperparameter_arguments,
    check_odd_kernel,
    check_quantizer_settings,
    check_sample_count,
    check_temperature,
    check_top_k,
    check_top_p,
    gated_dilation_cycle,
    hyperparameters_from_arguments,
    preset,
    scaled_to_batch,
)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_hyperparameter_arguments(parser)
    return hyperparameters_from_arguments(parser.parse_args(argv))


def test_defaults_are_the_card_design():
    card = Hyperparameters()
    assert card.image_size == 128
    assert card.encoder_filters == (32, 32, 64, 64, 128)
    assert card.downsample_stages == 4
    assert card.code_map_size == 8
    assert (card.num_embeddings, card.latent_dim, card.beta) == (16, 16, 0.25)
    assert (card.pixelcnn_filters, card.pixelcnn_first_kernel) == (128, 7)
    assert card.pixelcnn_residual_blocks == 4
    assert (card.epochs_vqvae, card.epochs_pixelcnn) == (30, 30)
    assert card.ssim_target == 0.6
    assert not card.ema and not card.dead_code_restart
    assert (card.reconstruction_loss, card.learning_rate_schedule) == ("ssim_l1", "cosine")
    assert preset("card") == card


def test_hifi_preset_has_32x32_code_maps_and_a_larger_ema_codebook():
    hifi = preset("hifi")
    assert hifi.code_map_size == 32
    assert (hifi.num_embeddings, hifi.latent_dim) == (4096, 32)
    assert hifi.ema and hifi.dead_code_restart and hifi.kmeans_init
    assert hifi.dead_code_threshold < 1 / hifi.num_embeddings
    assert hifi.reconstruction_loss == "ssim_l1"
    assert (hifi.batch_size, hifi.inference_batch_size) == (2, 64)
    assert hifi.pixelcnn_embedding_dim == 64
    assert hifi.pixelcnn_coarse_codes == 64  # a two-level prior, its coarse maps 8x8
    assert hifi.sampling_top_p == 0.9 and preset("card").sampling_top_p == 1.0
    # Its fine level reads the slice below clean, its coarse level a quarter blurred.
    assert (hifi.fine_previous_slice_noise, hifi.previous_slice_noise) == (0.0, 0.25)
    # A configuration saved before the field existed draws from every code, as it did.
    assert Hyperparameters.from_dict({"num_embeddings": 4096}).sampling_top_p == 1.0
    # Its coarse level draws from every coarse code; one saved before that field existed drew
    # both levels from `sampling_top_p`, and keeps doing so.
    assert hifi.sampling_coarse_top_p == 1.0
    saved = {"pixelcnn_architecture": "gated", "pixelcnn_coarse_codes": 64, "sampling_top_p": 0.9}
    assert Hyperparameters.from_dict(saved).sampling_coarse_top_p == 0.9
    assert (
        Hyperparameters.from_dict({**saved, "sampling_coarse_top_p": 0.95}).sampling_coarse_top_p
        == 0.95
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_embeddings": 1}, "num_embeddings"),
        ({"beta": -0.1}, "beta"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"image_size": 100}, "image_size"),
        ({"downsample_stages": 6}, "downsample_stages"),
        ({"pixelcnn_first_kernel": 6}, "pixelcnn_first_kernel"),
        ({"pixelcnn_embedding_dim": -1}, "pixelcnn_embedding_dim"),
        ({"reconstruction_loss": "l2"}, "reconstruction_loss"),
        ({"learning_rate_vqvae": 0.0}, "learning_rate_vqvae"),
        ({"learning_rate_schedule": "step"}, "learning_rate_schedule"),
        ({"ssim_target": 1.5}, "ssim_target"),
        ({"sampling_top_p": 0.0}, "sampling_top_p"),
        ({"sampling_top_p": 1.5}, "sampling_top_p"),
        ({"sampling_coarse_top_p": 0.0}, "sampling_coarse_top_p"),
        ({"batch_size": 0}, "batch_size"),
        ({"inference_batch_size": 0}, "inference_batch_size"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"dead_code_restart": True, "num_embeddings": 1024}, "dead_code_threshold"),
        ({"pixelcnn_architecture": "pixelsnail"}, "pixelcnn_architecture"),
        ({"pixelcnn_gated_kernel": 4}, "pixelcnn_gated_kernel"),
        ({"pixelcnn_gated_kernel": 1}, "pixelcnn_gated_kernel"),
        ({"pixelcnn_gated_layers": 0}, "pixelcnn_gated_layers"),
        ({"pixelcnn_gated_layers": 2}, "pixelcnn_gated_layers"),  # 8x8 maps need 3
        ({"pixelcnn_gated_layers": 4, "downsample_stages": 2}, "pixelcnn_gated_layers"),
        ({"fine_previous_slice_noise": 1.0}, "fine_previous_slice_noise"),
        ({"prior_input_noise": -0.1}, "prior_input_noise"),
        ({"previous_slice_dropout": -0.1}, "previous_slice_dropout"),
        ({"epochs_adversarial": -1}, "epochs_adversarial"),
        ({"adversarial_weight": 0.0}, "adversarial_weight"),
        ({"spectral_weight": -0.1}, "spectral_weight"),
        ({"learning_rate_adversarial": -1e-4}, "learning_rate_adversarial"),
    ],
)
def test_bad_values_raise_a_value_error_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        Hyperparameters().replace(**changes)


def test_inference_batch_size_is_not_an_architecture_field_and_has_a_flag():
    assert Hyperparameters().inference_batch_size == 64
    assert "inference_batch_size" not in ARCHITECTURE_FIELDS
    assert parse(["--inference-batch-size", "16"]).inference_batch_size == 16
    assert Hyperparameters.from_dict({}).inference_batch_size == 64  # files saved before it


def test_a_configuration_saved_before_the_architecture_field_is_masked():
    """Runs and `.keras` priors saved before `pixelcnn_architecture` existed were masked;
    before `fine_previous_slice_noise`, both levels read the slice below blurred alike."""
    assert Hyperparameters().pixelcnn_architecture == "gated"
    assert Hyperparameters.from_dict({}).pixelcnn_architecture == "masked"
    assert Hyperparameters.from_dict({}) == Hyperparameters(
        pixelcnn_architecture="masked",
        prior_conditions="none",
        pixelcnn_embed_previous_slice=False,
        pixelcnn_position_features=False,
        prior_mirror_images=False,
        epochs_adversarial=0,
        spectral_weight=0.0,
        fine_previous_slice_noise=0.25,
        previous_slice_dropout=0.25,
    )
    # Runs saved before the adversarial stage have none; the card has one, hifi none yet.
    assert Hyperparameters().epochs_adversarial == 12 and preset("hifi").epochs_adversarial == 0
    # One saved before its spectral term was trained without it.
    assert Hyperparameters().spectral_weight > 0
    assert Hyperparameters.from_dict({"epochs_adversarial": 12}).spectral_weight == 0.0
    assert Hyperparameters().pixelcnn_embed_previous_slice
    assert Hyperparameters().prior_told_positions  # the card's gated prior is told them
    assert not Hyperparameters(pixelcnn_architecture="masked").prior_told_positions
    assert not preset("hifi").prior_told_positions  # not measured on its two-level prior
    assert Hyperparameters().prior_mirror_images and preset("hifi").prior_mirror_images
    assert Hyperparameters().fine_previous_slice_noise == Hyperparameters().previous_slice_noise
    saved_before = Hyperparameters.from_dict({"previous_slice_noise": 0.1})
    assert saved_before.fine_previous_slice_noise == 0.1
    # Before `previous_slice_dropout`, the slice below was hidden as the other conditions.
    assert Hyperparameters.from_dict({"condition_dropout": 0.3}).previous_slice_dropout == 0.3
    assert Hyperparameters.from_dict({}).previous_slice_dropout == 0.25
    for name in ("card", "hifi"):
        assert Hyperparameters.from_dict(preset(name).to_dict()) == preset(name)
    assert {"pixelcnn_architecture", "pixelcnn_gated_layers", "pixelcnn_gated_kernel"} <= set(
        ARCHITECTURE_FIELDS
    )
    assert parse(["--pixelcnn-architecture", "masked"]).pixelcnn_architecture == "masked"


def test_gated_dilations_cycle_until_the_last_position_reaches_the_first():
    assert Hyperparameters().pixelcnn_dilations == (1, 2, 4, 1, 2, 4)
    assert Hyperparameters(pixelcnn_gated_kernel=7).pixelcnn_dilations[:3] == (1, 2, 1)
    hifi = preset("hifi")
    cycle = (1, 2, 4, 8, 16)
    assert hifi.pixelcnn_dilations[:5] == cycle and hifi.pixelcnn_gated_layers >= 5
    assert gated_dilation_cycle(1, 3) == 1 and gated_dilation_cycle(32, 3) == 5


def test_check_helpers_name_the_argument():
    with pytest.raises(ValueError, match="count must be a positive integer"):
        check_sample_count(True)
    with pytest.raises(ValueError, match="count"):
        check_sample_count(2.0)
    check_sample_count(np.int64(3))
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be positive"):
            check_temperature(temperature)
    for top_k in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match="top_k"):
            check_top_k(top_k, 16)
    check_top_k(None, 16)
    check_top_k(np.int32(16), 16)
    for top_p in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="top_p"):
            check_top_p(top_p)
    check_top_p(None)
    check_top_p(1.0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        check_odd_kernel("kernel_size", (3, 4))
    with pytest.raises(ValueError, match="ema_decay"):
        check_quantizer_settings(8, 4, 0.25, ema_decay=1.0, ema_epsilon=1e-5, dead_code_threshold=0)


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ValueError, match="num_embedings"):
        Hyperparameters.from_dict({"num_embedings": 32})


def test_json_round_trip(tmp_path):
    original = preset("hifi").replace(encoder_filters=(8, 16, 16), seed=7)
    path = tmp_path / "hyperparameters.json"
    original.save(path)
    assert json.loads(path.read_text())["encoder_filters"] == [8, 16, 16]
    assert Hyperparameters.load(path) == original


def test_loading_a_bad_file_names_it(tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="hyperparameters.json.*not valid JSON"):
        Hyperparameters.load(path)
    path.write_text(json.dumps({"beta": -1}))
    with pytest.raises(ValueError, match="hyperparameters.json.*beta"):
        Hyperparameters.load(path)
    with pytest.raises(ValueError, match="no such"):
        Hyperparameters.load(tmp_path / "missing.json")


def test_command_line_overrides_apply_on_top_of_the_preset():
    parsed = parse(["--preset", "hifi", "--num-embeddings", "512", "--ema", "false"])
    assert parsed == preset("hifi").replace(num_embeddings=512, ema=False)
    parsed = parse(["--encoder-filters", "16,16,32", "--downsample-stages", "3"])
    assert parsed.encoder_filters == (16, 16, 32)
    assert parsed.code_map_size == 16
    assert parse([]) == Hyperparameters()


def test_a_gpu_takes_the_presets_own_batches_and_larger_batches_scale_the_learning_rates():
    # On the demo larger batches ended with lower SSIM over the same epochs (hyperparameters.py).
    for name in ("card", "hifi"):
        assert preset(name, "gpu") == preset(name, "cpu")
    assert (preset("card").batch_size, preset("hifi").batch_size) == (32, 2)
    card = scaled_to_batch(preset("card"), 256)  # 8 x the CPU's 32: learning rates x sqrt(8)
    assert card.batch_size == 256
    assert card.learning_rate_vqvae == pytest.approx(2.8284271e-3)
    assert card.learning_rate_pixelcnn == pytest.approx(2.8284271e-3)
    assert card.learning_rate_adversarial == pytest.approx(2.8284271e-4)
    cpu_rates = {"learning_rate_vqvae": 1e-3, "learning_rate_pixelcnn": 1e-3}
    cpu_rates["learning_rate_adversarial"] = 1e-4
    assert card.replace(batch_size=32, **cpu_rates) == preset("card")
    hifi = scaled_to_batch(preset("hifi"), 32)
    assert (hifi.batch_size, hifi.learning_rate_vqvae) == (32, pytest.approx(4e-3))  # 16 x 2
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        preset("card", "tpu")
    parser = argparse.ArgumentParser()
    add_hyperparameter_arguments(parser)
    given = hyperparameters_from_arguments(parser.parse_args(["--batch-size", "64"]), "gpu")
    assert (given.batch_size, given.learning_rate_vqvae) == (64, 1e-3)


def test_command_line_rejects_malformed_values():
    with pytest.raises(SystemExit):
        parse(["--ema", "maybe"])
    with pytest.raises(SystemExit):
        parse(["--encoder-filters", "16,x"])
    with pytest.raises(ValueError, match="num_embeddings"):
        parse(["--num-embeddings", "1"])
