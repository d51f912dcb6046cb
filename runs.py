"""The run folder: what `train.py` writes and every other tool reads.

    hyperparameters.json                  the configuration (`Hyperparameters.load`)
    vqvae.keras, pixelcnn.keras           the best model of each stage (by validation loss)
    history_vqvae.csv, history_pixelcnn.csv
    loss.png, ssim.png                    curves per epoch; the SSIM target is drawn
    metrics.json                          test SSIM/PSNR/MAE, codebook use, prior bits per code
    checkpoints/                          last epoch of each stage and its state, for --resume

Files are written to a temporary name and renamed over the old one, so a process killed at
any moment leaves every file either as it was or complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hyperparameters import ARCHITECTURE_FIELDS, Hyperparameters

STAGES = ("vqvae", "pixelcnn")


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's files (see the module docstring)."""

    path: Path

    def model(self, stage: str) -> Path:
        return self.path / f"{stage}.keras"

    def history(self, stage: str) -> Path:
        return self.path / f"history_{stage}.csv"

    def last_checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}_last.keras"

    @property
    def hyperparameters(self) -> Path:
        return self.path / "hyperparameters.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def state(self) -> Path:
        return self.path / "checkpoints" / "state.json"

    def read_state(self) -> dict:
        """{stage: {"epochs_done": int, "best": float, "finished": bool, ...}} of begun stages."""
        return json.loads(self.state.read_text()) if self.state.exists() else {}

    def write_state(self, stage: str, **values) -> None:
        state = self.read_state()
        state[stage] = {**state.get(stage, {}), **values}
        write_atomically(self.state, json.dumps(state, indent=2))

    def read_metrics(self) -> dict:
        """The run's metrics.json, or {} before the run has finished."""
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else {}


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def save_model_atomically(model, path: Path) -> None:
    """`model.save` to a temporary `.keras` file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.stem}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def load_run(path: str | Path, stages: tuple[str, ...] = STAGES):
    """A trained run's configuration and the models of `stages`, checked against each other.

    Returns (Hyperparameters, {stage: model}); a missing folder or file, or a model that does
    not fit the configuration, raises `RunError` naming it.
    """
    import keras

    import modules  # noqa: F401  (registers the custom layers and models with Keras)

    run = RunFolder(Path(path))
    if not run.path.is_dir():
        raise RunError(f"{run.path}: no such run folder")
    if not run.hyperparameters.exists():
        raise RunError(f"{run.path} is not a trained run: hyperparameters.json is missing")
    try:
        hyperparameters = Hyperparameters.load(run.hyperparameters)
    except ValueError as error:
        raise RunError(str(error)) from None
    models = {}
    for stage in stages:
        if not run.model(stage).exists():
            raise RunError(f"{run.path} has no {stage}.keras: train it with train.py first")
        models[stage] = keras.saving.load_model(run.model(stage))
    _check_models_fit(run, hyperparameters, models)
    return hyperparameters, models


def _check_models_fit(run: RunFolder, hyperparameters: Hyperparameters, models: dict) -> None:
    """Each model was built with the architecture hyperparameters.json describes."""
    for stage, model in models.items():
        differing = [
            name
            for name in ARCHITECTURE_FIELDS
            if getattr(model.hyperparameters, name) != getattr(hyperparameters, name)
        ]
        if differing:
            raise RunError(
                f"{run.model(stage)} was built with other values of {', '.join(differing)} than "
                f"{run.hyperparameters} says: the folder mixes files of different runs"
            )
