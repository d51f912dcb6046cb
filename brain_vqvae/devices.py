"""Which device Keras trains on, and the line `train.py` prints about the batch it chose for it.

Kept apart from `training` so that the device check (`bench/gpu.py`), which trains the models
itself, can ask it without importing the training of runs.
"""

from __future__ import annotations

from keras.distribution import list_devices

from hyperparameters import Hyperparameters


def found_device() -> str:
    """ "gpu" when Keras' backend has an accelerator (a GPU, or a TPU, which gets the same large
    batches), "cpu" otherwise: the device `hyperparameters.preset` fits the batch to."""
    devices = list_devices()
    return "gpu" if devices and not devices[0].lower().startswith("cpu") else "cpu"


def describe_batch_choice(hyperparameters: Hyperparameters, device: str, reason: str) -> str:
    """The line `train.py` prints first: the devices Keras sees, the device the batch was
    chosen for, and the batch and learning rates it trains with, with the `reason` for them
    (e.g. "the GPU preset's", "given", "the run's own")."""
    adversarial = (
        f"{hyperparameters.learning_rate_adversarial:.3g} (adversarial decoder), "
        if hyperparameters.epochs_adversarial and hyperparameters.model == "vqvae"
        else ""
    )
    return (
        f"devices {', '.join(list_devices())}; for the {device.upper()}: "
        f"batch {hyperparameters.batch_size} and learning rates "
        f"{hyperparameters.learning_rate_vqvae:.3g} (VQ-VAE), {adversarial}"
        f"{hyperparameters.learning_rate_pixelcnn:.3g} (prior), {reason}"
    )
