"""Shared fixtures: a tiny configuration and a tiny dataset in the real OASIS PNG layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import brain_vqvae  # noqa: F401  (sets TensorFlow's environment before a test imports it)
from hyperparameters import Hyperparameters

TINY_CASES = {"train": (1, 2, 3, 4), "validate": (5,), "test": (6,)}
TINY_SLICES_PER_CASE = 6


@pytest.fixture(scope="session")
def tiny_hyperparameters() -> Hyperparameters:
    """A model small enough to train for a few epochs in seconds: 32x32 slices, 8x8 codes."""
    return Hyperparameters(
        image_size=32,
        encoder_filters=(8, 16),
        downsample_stages=2,
        num_embeddings=8,
        latent_dim=4,
        pixelcnn_filters=16,
        pixelcnn_first_kernel=3,
        pixelcnn_residual_blocks=1,
        batch_size=8,
        epochs_vqvae=8,
        epochs_pixelcnn=2,
        epochs_adversarial=1,
        learning_rate_vqvae=3e-3,
        mse_warmup_steps=8,  # of the 24 steps of the tiny run
    )


def brain_like_slice(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A (size, size) uint8 image: a bright ellipse ("brain") with a darker inner ellipse
    ("ventricles") and noise, at a random size and position."""
    rows, columns = np.mgrid[0:size, 0:size] / size - 0.5
    centre_row, centre_column = rng.uniform(-0.05, 0.05, 2)
    radius_row, radius_column = rng.uniform(0.28, 0.4, 2)
    inside = ((rows - centre_row) / radius_row) ** 2 + (
        (columns - centre_column) / radius_column
    ) ** 2
    image = np.where(inside < 1.0, 170.0, 0.0)
    image[inside < rng.uniform(0.05, 0.2)] = 60.0
    image += rng.normal(0.0, 8.0, image.shape) * (inside < 1.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tiny_png_tree(root: Path, seed: int = 0) -> Path:
    """Write `root/keras_png_slices_data/keras_png_slices_{split}/case_NNN_slice_S.nii.png`
    (256x256, 8-bit greyscale) for the cases of TINY_CASES; returns the tree's folder."""
    rng = np.random.default_rng(seed)
    tree = root / "keras_png_slices_data"
    for split, cases in TINY_CASES.items():
        folder = tree / f"keras_png_slices_{split}"
        folder.mkdir(parents=True)
        for case in cases:
            for slice_index in range(TINY_SLICES_PER_CASE):
                image = Image.fromarray(brain_like_slice(rng), mode="L")
                image.save(folder / f"case_{case:03d}_slice_{slice_index}.nii.png")
    return tree


@pytest.fixture(scope="session")
def tiny_png_tree(tmp_path_factory) -> Path:
    """A read-only tiny dataset shared by the tests of the whole session."""
    return write_tiny_png_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture
def image_pairs():
    """Four random 48x48 images in [0, 1] (one a smooth ramp) and noisy copies of them."""
    rng = np.random.default_rng(0)
    originals = rng.random((4, 48, 48, 1), dtype=np.float32)
    originals[1] = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48, 1)
    noisy = np.clip(originals + rng.normal(0, 0.15, originals.shape), 0, 1).astype(np.float32)
    return originals, noisy


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep each test's decoded-slice cache out of the user's home folder."""
    monkeypatch.setenv("BRAIN_VQVAE_CACHE", str(tmp_path / "cache"))


def tiny_argv(hyperparameters: Hyperparameters, data, out, *extra: str) -> list[str]:
    """`train.py` command-line words that train `hyperparameters` on `data` into `out`, plus
    `extra`."""
    argv = ["--data", str(data), "--out", str(out), *extra]
    for name, value in hyperparameters.to_dict().items():
        flag = "--" + name.replace("_", "-")
        if flag not in extra:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def tiny_arguments(hyperparameters: Hyperparameters, data, out, *extra: str):
    """`train.py` arguments that train `hyperparameters` on `data` into `out`, plus `extra`."""
    import train

    return train.build_parser().parse_args(tiny_argv(hyperparameters, data, out, *extra))


@pytest.fixture(scope="session")
def tiny_run(tiny_hyperparameters, tiny_png_tree, tmp_path_factory):
    """A run folder trained once per session by `train.py` (both stages, a few epochs), and
    its metrics; tests must not change it."""
    import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cache = tmp_path_factory.mktemp("cache")
    arguments = tiny_arguments(tiny_hyperparameters, tiny_png_tree, out, "--cache-dir", str(cache))
    return out, train.run_training(arguments, verbose=0)
