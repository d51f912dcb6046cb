"""train.py under hard failures: killed with SIGKILL mid-run then resumed, a run folder it cannot
write, a loss that turns NaN after a good epoch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_argv

import modules  # noqa: F401  (registers the custom models for load_model)
import train
from brain_vqvae import training
from hyperparameters import Hyperparameters

PROJECT_DIR = Path(__file__).resolve().parents[1]


def vqvae_state(out: Path) -> dict:
    state = out / "checkpoints" / "state.json"
    return json.loads(state.read_text()).get("vqvae", {}) if state.exists() else {}


def test_a_run_killed_mid_epoch_resumes_from_its_last_checkpoint(
    tiny_hyperparameters, tiny_png_tree, tmp_path
):
    out, cache = tmp_path / "run", tmp_path / "cache"
    endless = tiny_hyperparameters.replace(epochs_vqvae=500, early_stopping_patience=500)
    command = [sys.executable, str(PROJECT_DIR / "train.py")]
    arguments = tiny_argv(endless, tiny_png_tree, out, "--cache-dir", str(cache))
    process = subprocess.Popen(
        command + arguments, cwd=PROJECT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while vqvae_state(out).get("epochs_done", 0) < 1:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    killed_at = vqvae_state(out)
    assert process.returncode == -signal.SIGKILL and not killed_at["finished"]

    epochs = killed_at["epochs_done"] + 2
    resumed = subprocess.run(
        command + arguments + ["--resume", "--epochs-vqvae", str(epochs)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["vqvae"]["epochs_done"] == epochs and state["vqvae"]["finished"]
    assert state["adversarial"]["finished"] and state["pixelcnn"]["finished"]
    with open(out / "history_vqvae.csv") as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == list(range(epochs))

    models = sorted(out.rglob("*.keras"))
    assert {path.name for path in models} == {
        f"{stage}{suffix}.keras"
        for stage in ("vqvae", "adversarial", "pixelcnn")
        for suffix in ("", "_last")
    }
    for path in models:
        assert keras.saving.load_model(path).built, path
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for path in out.rglob("*.csv"):
        with open(path) as file:
            header, *rows = list(csv.reader(file))
        assert rows and all(len(row) == len(header) for row in rows), path
        np.asarray(rows, dtype=float)  # every value is a number


@pytest.mark.parametrize("case", ["read-only folder", "file in the way"])
def test_an_unwritable_run_folder_fails_before_training(
    case, tiny_hyperparameters, tiny_png_tree, tmp_path, monkeypatch, capsys
):
    if case == "file in the way":
        (tmp_path / "runs").write_text("a file where the runs folder should be")
        out = tmp_path / "runs" / "tiny"
    elif os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
        out = Path("/sys/brain-vqvae-test-run")
        if not out.parent.is_dir():
            pytest.skip("no /sys to stand in for a read-only folder")
    else:
        out = tmp_path / "read_only"
        out.mkdir()
        out.chmod(0o555)

    def training_started(*arguments, **options):
        raise AssertionError("the data were loaded for training")

    monkeypatch.setattr(training, "load_training_data", training_started)
    assert train.main(tiny_argv(tiny_hyperparameters, tiny_png_tree, out)) == 2
    assert f"error: cannot create the run folder {out}: " in capsys.readouterr().err


def test_a_nan_loss_keeps_the_last_good_checkpoint(tmp_path):
    run = training.prepare_run_folder(tmp_path / "run", ("toy",), resume=False, overwrite=False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    inputs = np.ones((8, 2), np.float32)
    good = tf.data.Dataset.from_tensor_slices((inputs, inputs[:, :1])).batch(4)
    bad = tf.data.Dataset.from_tensor_slices((inputs * np.nan, inputs[:, :1])).batch(4)

    def fit(data, epochs, resume):
        callbacks, guard = training.stage_callbacks(
            run, "toy", Hyperparameters(), resume=resume, tensorboard=False
        )
        return training.fit_stage(
            model, run, "toy", data, good, epochs, callbacks, guard, verbose=0
        )

    fit(good, 1, resume=False)
    saved = {path: path.read_bytes() for path in (run.model("toy"), run.last_checkpoint("toy"))}
    with pytest.raises(training.RunError, match="NaN at epoch 2, batch 1.*last good checkpoint"):
        fit(bad, 3, resume=True)
    for path, content in saved.items():
        assert path.read_bytes() == content, path
        weights = keras.saving.load_model(path).get_weights()
        assert all(np.isfinite(weight).all() for weight in weights), path
    assert run.read_state()["toy"]["epochs_done"] == 1
