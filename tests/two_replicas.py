"""Training on two replicas against one device, in a fresh process (run by test_distribute.py):
the CPU must be split into two logical devices before TensorFlow initialises.

    python tests/two_replicas.py HYPERPARAMETERS_JSON DATA_DIR WORK_DIR

writes WORK_DIR/result.json:

    "replicas"   replicas of training.make_strategy("mirrored") on the two logical CPUs
    "steps"      {"plain" | "ema": {"one_device" | "mirrored": {"loss" | "perplexity": [value
                 after each step]}}}: fit of a fresh VQ-VAE (same seed) on 17 slices in batches
                 of 8, 8 and 1 (the last leaves one replica empty) for 2 epochs with SGD, whose
                 step, unlike Adam's, is proportional to the gradient, so summed replica
                 gradients show
    "weights_difference"  {"plain" | "ema": max |w_one_device - w_mirrored| after training}
    "resumed_epochs"  the epochs of history_vqvae.csv after `train.py --strategy mirrored`
                 for one epoch and `--resume` on one device to two
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf

import brain_vqvae  # noqa: F401  (sets TensorFlow's environment before it starts)

(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import csv  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import brain_like_slice, tiny_arguments  # noqa: E402

import modules  # noqa: E402
import train  # noqa: E402
from brain_vqvae import training  # noqa: E402
from hyperparameters import Hyperparameters  # noqa: E402

SLICES = 17
EPOCHS = 2
SGD_LEARNING_RATE = 0.05


class StepLogs(keras.callbacks.Callback):
    """Loss and perplexity as Keras reports them after each training step (running means of
    the epoch)."""

    def __init__(self):
        super().__init__()
        self.logs: dict[str, list[float]] = {"loss": [], "perplexity": []}

    def on_train_batch_end(self, batch, logs=None):
        for name, values in self.logs.items():
            values.append(float(logs[name]))


def fit_steps(strategy, settings: Hyperparameters, images: np.ndarray):
    """Per-step logs and final weights of a fresh VQ-VAE fitted under `strategy`."""
    keras.utils.set_random_seed(settings.seed)
    with strategy.scope():
        model = modules.build_vqvae(settings, data_variance=float(images.var()))
        model.compile(optimizer=keras.optimizers.SGD(SGD_LEARNING_RATE))
    recorder = StepLogs()
    data = tf.data.Dataset.from_tensor_slices(images).batch(settings.batch_size)
    model.fit(data, epochs=EPOCHS, callbacks=[recorder], verbose=0)
    return recorder.logs, model.get_weights()


def main(settings_path: str, data: str, work: str) -> None:
    settings = Hyperparameters.load(settings_path)
    mirrored = training.make_strategy("mirrored")  # the one run_training uses below
    rng = np.random.default_rng(0)
    size = settings.image_size
    images = np.stack([brain_like_slice(rng, size) for _ in range(SLICES)])
    images = (images[..., None] / np.float32(255.0)).astype("float32")
    result = {"replicas": mirrored.num_replicas_in_sync, "steps": {}, "weights_difference": {}}
    for name, ema in (("plain", False), ("ema", True)):
        variant = settings.replace(ema=ema)
        one_logs, one_weights = fit_steps(tf.distribute.get_strategy(), variant, images)
        mirrored_logs, mirrored_weights = fit_steps(mirrored, variant, images)
        result["steps"][name] = {"one_device": one_logs, "mirrored": mirrored_logs}
        result["weights_difference"][name] = max(
            float(np.abs(one - other).max())
            for one, other in zip(one_weights, mirrored_weights, strict=True)
        )

    out, cache = Path(work) / "run", Path(work) / "cache"
    one_epoch = settings.replace(epochs_vqvae=1)
    common = ("--stage", "vqvae", "--cache-dir", str(cache))
    train.run_training(
        tiny_arguments(one_epoch, data, out, *common, "--strategy", "mirrored"), verbose=0
    )
    resumed = tiny_arguments(one_epoch, data, out, *common, "--resume")
    resumed.epochs_vqvae = 2
    train.run_training(resumed, verbose=0)
    with open(out / "history_vqvae.csv") as file:
        result["resumed_epochs"] = [int(row["epoch"]) for row in csv.DictReader(file)]
    (Path(work) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
