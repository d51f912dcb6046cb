"""The models, their sampler and a whole run on Keras' JAX backend (over two devices), and models
saved on one backend loaded (and sampled) on the other.

A process has one Keras backend, and this one runs TensorFlow's, so each backend runs in a
fresh process (`tests/on_backend.py`). The whole run and the scripts that use it run as on a
machine with JAX and no TensorFlow (`tests/without_tensorflow.py`). Without jax installed these
tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="jax is not installed, so Keras' JAX backend cannot be tested",
)

ON_BACKEND = Path(__file__).resolve().parent / "on_backend.py"
WITHOUT_TENSORFLOW = ON_BACKEND.parent / "without_tensorflow.py"


def on_backend(
    backend: str, command: str, work: Path, refuse_tensorflow: bool = False, **environment: str
) -> None:
    """Run `tests/on_backend.py command work` with KERAS_BACKEND=`backend` and `environment`
    (with `refuse_tensorflow`, every import of TensorFlow refused)."""
    refusing = [str(WITHOUT_TENSORFLOW)] if refuse_tensorflow else []
    done = subprocess.run(
        [sys.executable, *refusing, str(ON_BACKEND), command, str(work)],
        env={**os.environ, **environment, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{command} on {backend} failed:\n{done.stderr[-5000:]}"


def test_every_model_trains_on_jax(tmp_path):
    on_backend("jax", "train", tmp_path)
    result = json.loads((tmp_path / "train.json").read_text())

    assert result["backend"] == "jax"
    history = result["history"]
    assert set(history) == {"vqvae", "masked", "gated", "conditional", "vae"}
    for name, metrics in history.items():
        assert all(np.isfinite(values).all() for values in metrics.values()), name
        assert metrics["loss"][-1] < 0.9 * metrics["loss"][0], name
    assert {"perplexity", "codes_used", "ssim", "psnr"} <= set(history["vqvae"])
    assert history["vqvae"]["ssim"][-1] > history["vqvae"]["ssim"][0]
    assert history["gated"]["accuracy"][-1] > history["gated"]["accuracy"][0]
    # EMA, restarts and the k-means initialisation update the quantizer in the JAX step too,
    # and evaluation leaves it alone.
    assert all(result["quantizer_state_changed"].values()), result["quantizer_state_changed"]
    assert not result["evaluate_changed_state"]
    # The adversarial decoder's one loss trains the decoder and the discriminator on JAX too,
    # and leaves the codes alone.
    adversarial = result["adversarial_history"]
    assert all(np.isfinite(values).all() for values in adversarial.values())
    losses = adversarial["discriminator_loss"]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])
    assert result["adversarial_moved"] == {"encoder": False, "codebook": False, "decoder": True}


@pytest.mark.parametrize(("saved_on", "loaded_on"), [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_models_saved_on_one_backend_load_and_train_on_the_other(tmp_path, saved_on, loaded_on):
    on_backend(saved_on, "save", tmp_path)
    on_backend(loaded_on, "load", tmp_path)

    saved, loaded = np.load(tmp_path / "saved.npz"), np.load(tmp_path / "loaded.npz")
    np.testing.assert_array_equal(loaded["code_indices"], saved["code_indices"])
    np.testing.assert_allclose(loaded["reconstructions"], saved["reconstructions"], atol=1e-5)
    for logits in ("masked_logits", "conditional_logits"):
        np.testing.assert_allclose(loaded[logits], saved[logits], rtol=1e-4, atol=1e-4)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert set(resumed) == {"vqvae", "masked", "conditional"}
    assert all(np.isfinite(loss) for loss in resumed.values())
    # the loaded priors sample on the other backend, their cached scan following the model
    samples = json.loads((tmp_path / "loaded_samples.json").read_text())
    assert set(samples) == {"masked", "conditional"}
    for name, checks in samples.items():
        assert_samples_follow_the_model(name, checks)


def assert_samples_follow_the_model(name: str, checks: dict) -> None:
    """`on_backend.sampler_checks` of a tiny prior (8 codes, 8x8 maps): 4 maps of codes in
    range, the same seed drawing the same maps and another seed other maps, and the cached scan
    replaying a map with the whole-map call's logits at every position."""
    assert checks["shape"] == checks["filtered_shape"] == [4, 8, 8], name
    assert checks["dtype"] == "int32", name
    assert 0 <= checks["low"] <= checks["high"] < 8, name
    assert checks["same_seed_same_maps"] and checks["other_seed_other_maps"], name
    assert checks["replayed"], name
    assert checks["replay_logit_error"] < 1e-5, name


def test_the_sampler_draws_on_jax(tmp_path):
    """`sample_code_maps` on JAX (`jax.jit` over the cached raster scans): a masked, a gated, a
    conditional, a conditional two-level prior and one told the positions, with guidance, draw
    maps in range, the same for the same seed, their cached scans replay a map with the
    whole-map logits, and a prior trained on constant maps draws (nearly) constant maps of the
    trained codes."""
    on_backend("jax", "sample", tmp_path)
    result = json.loads((tmp_path / "sample.json").read_text())

    assert result["backend"] == "jax"
    for name in ("masked", "gated", "conditional", "two_level", "places"):
        assert_samples_follow_the_model(name, result[name])
    assert set(result["constant_majority_codes"]) <= {2, 6}
    assert result["constant_majority_share"] > 0.9


def test_a_run_trains_on_jax_over_two_devices(tmp_path):
    """`train.py --strategy mirrored` on JAX with two CPU devices: `keras.distribution.
    DataParallel` shards the NumPy batches of both stages over them; a batch that does not
    split evenly over them is refused before training. `predict.py` then draws a volume and
    reconstructs slices with the run, `similarity.py` judges it (its feature network trained
    on JAX) and `latent.py` maps its codes: all on JAX, none of them importing TensorFlow."""
    on_backend(
        "jax",
        "run",
        tmp_path,
        refuse_tensorflow=True,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    result = json.loads((tmp_path / "run.json").read_text())

    assert result["devices"] == 2
    assert "not multiples of 2: --batch-size (7)" in result["refused"]
    losses = result["losses"]
    assert [len(losses[stage]) for stage in ("vqvae", "adversarial", "pixelcnn")] == [3, 2, 2]
    assert all(losses[stage][-1] < losses[stage][0] for stage in ("vqvae", "pixelcnn"))
    assert np.isfinite(losses["adversarial"]).all()
    metrics = result["metrics"]
    assert 0.0 < metrics["ssim_mean"] < 1.0
    assert metrics["prior_bits_per_code"] < metrics["uniform_bits_per_code"]
    for stage in ("vqvae", "adversarial", "pixelcnn"):
        assert (tmp_path / "run" / f"{stage}.keras").exists()

    run = str(tmp_path / "run")
    # The training split, where the tiny data has people enough for the realism measures.
    judged = ["--split", "train", "--samples", "24", "--json"]
    outputs = {}
    for script, *words in (
        ("predict.py", "--volume"),
        ("predict.py", "--reconstruct", "--num", "2"),
        ("similarity.py", *judged, "--out", str(tmp_path / "judged")),
        ("latent.py", "--out", str(tmp_path / "latent")),
    ):
        done = subprocess.run(
            [sys.executable, str(WITHOUT_TENSORFLOW), script, "--run", run, *words],
            cwd=ON_BACKEND.parents[1],
            env={**os.environ, "KERAS_BACKEND": "jax"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{script}: {done.stderr[-5000:]}"
        outputs[script] = done.stdout
    volume = nibabel.load(tmp_path / "run" / "volumes" / "volume_000.nii.gz")
    settings = json.loads((tmp_path / "run" / "hyperparameters.json").read_text())
    assert volume.shape[2] == settings["slices_per_volume"]
    assert np.ptp(volume.get_fdata()) > 0
    assert (tmp_path / "run" / "reconstructions" / "reconstructions.png").is_file()
    report = json.loads(outputs["similarity.py"])
    realism = report["realism"]
    assert realism["n_real_a"] == 12
    for key in ("fd_samples", "fd_real_floor", "ms_ssim_samples", "ms_ssim_real"):
        assert np.isfinite(realism[key]), key
    assert 0.0 <= realism["c2st_real_floor"] <= 1.0
    assert 0.0 < realism["ms_ssim_real"] < 1.0
    assert -1.0 <= report["conditions"]["slice_position"]["generated"]["r"] <= 1.0
    assert (tmp_path / "run" / "realism_features.keras").is_file()
    assert (tmp_path / "latent" / "latent.json").is_file()
