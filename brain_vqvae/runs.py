"""The run folder: what training writes and every other tool reads, and the one place that
loads a run, its configuration and the data it was trained on.

    hyperparameters.json                  the configuration (`Hyperparameters.load`)
    vqvae.keras, pixelcnn.keras           the best model of each stage (by validation loss)
    adversarial.keras                     the VQ-VAE with its decoder fine-tuned against a
                                          discriminator (its last epoch), which decodes the
                                          sampled code maps; absent when the run has no
                                          adversarial stage
    history_vqvae.csv, history_pixelcnn.csv, history_adversarial.csv
    loss.png, ssim.png                    curves per epoch; the SSIM target is drawn
    metrics.json                          the training data's path, test SSIM/PSNR/MAE,
                                          codebook use, prior bits per code, and the
                                          seconds each phase of the last train.py took
    realism_features.keras                the domain feature network of the realism measures,
                                          trained on the training split when first needed
    checkpoints/                          last epoch of each stage and its state, and the
                                          training data's path from the start of a training,
                                          for --resume and a retrained stage

A VAE run (`model` "vae", the Gaussian baseline) has one stage, "vae": vae.keras and
history_vae.csv in place of the two stages' files, and in metrics.json the KL term in place of
the codebook and prior numbers; its prior is N(0, I), so there is no prior file.

Files are written to a temporary name and renamed over the old one, so a process killed at
any moment leaves every file either as it was or complete.

    run = load_run("runs/demo-card")               # configuration and models, checked
    slices = load_run_data(run)                    # the slices it was trained on, as it saw them
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_vqvae.data import BrainSlices, load_slices
from hyperparameters import (
    PRIOR_ARCHITECTURE_FIELDS,
    VAE_ARCHITECTURE_FIELDS,
    VQVAE_ARCHITECTURE_FIELDS,
    Hyperparameters,
)

# The stages of each model, in training order; the first trains the autoencoder, and a stage's
# name is its file names' (vqvae.keras, history_vqvae.csv, checkpoints/vqvae_last.keras).
MODEL_STAGES = {"vqvae": ("vqvae", "adversarial", "pixelcnn"), "vae": ("vae",)}
STAGES = tuple(stage for stages in MODEL_STAGES.values() for stage in stages)
AUTOENCODER_STAGES = tuple(stages[0] for stages in MODEL_STAGES.values())


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

    def stage_files(self, stage: str) -> list[Path]:
        """What training `stage` writes: its best model, history and last checkpoint."""
        return [self.model(stage), self.history(stage), self.last_checkpoint(stage)]

    @property
    def hyperparameters(self) -> Path:
        return self.path / "hyperparameters.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def state(self) -> Path:
        return self.path / "checkpoints" / "state.json"

    @property
    def feature_network(self) -> Path:
        return self.path / "realism_features.keras"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def resumable_files(self) -> list[Path]:
        """The files a resumed run or a later stage reads: configuration, state, and every
        stage's files."""
        files = [self.hyperparameters, self.state]
        for stage in STAGES:
            files += self.stage_files(stage)
        return files

    def read_state(self) -> dict:
        """{stage: {"epochs_done": int, "best": float, "finished": bool, ...}} of begun stages,
        and "data": the path of the dataset the last training began on."""
        return json.loads(self.state.read_text()) if self.state.exists() else {}

    def write_state(self, stage: str, **values) -> None:
        state = self.read_state()
        state[stage] = {**state.get(stage, {}), **values}
        write_atomically(self.state, json.dumps(state, indent=2))

    def record_training_data(self, source: str | Path) -> None:
        """Name the dataset a training reads in the state as it begins, so that a run killed
        before metrics.json is written still says what it was trained on."""
        state = self.read_state()
        state["data"] = str(source)
        write_atomically(self.state, json.dumps(state, indent=2))

    def recorded_training_data(self) -> str | None:
        """The dataset the run was trained on: the state's (the last training begun), else
        metrics.json's (a run from before the state named it), else None."""
        return self.read_state().get("data") or self.read_metrics().get("data")

    def forget_stage(self, stage: str) -> None:
        """Drop `stage` from the state, as when its files are replaced by a new training."""
        state = self.read_state()
        if state.pop(stage, None) is not None:
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


def copy_run_files(source: RunFolder, target: RunFolder) -> None:
    """Copy the `resumable_files` that exist from one run folder to another."""
    for original, duplicate in zip(source.resumable_files(), target.resumable_files(), strict=True):
        if original.exists():
            duplicate.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, duplicate)


@dataclass(frozen=True)
class Run:
    """A trained run: its folder, configuration and models. `autoencoder` is the `VQVAE` or,
    for a VAE run, the `GaussianVAE`; `pixelcnn` is None when the run has no learned prior (a
    VAE run samples N(0, I)) or it was not asked for; `adversarial` is the `AdversarialDecoder`
    of a run with an adversarial stage, else None."""

    folder: RunFolder
    hyperparameters: Hyperparameters
    autoencoder: object
    pixelcnn: object | None
    adversarial: object | None = None

    @property
    def name(self) -> str:
        return self.folder.path.name

    @property
    def kind(self) -> str:
        """The run's model, "vqvae" or "vae" (`Hyperparameters.model`)."""
        return self.hyperparameters.model

    @property
    def vqvae(self):
        """The VQ-VAE of a VQ-VAE run; a VAE run has none (`RunError`, saying so)."""
        if self.kind != "vqvae":
            raise RunError(
                f"{self.folder.path} is a {self.kind.upper()} run: it has a Gaussian latent "
                "vector, no VQ-VAE codes"
            )
        return self.autoencoder

    @property
    def generator(self):
        """The autoencoder whose decoder draws what the prior draws: the adversarial stage's
        VQ-VAE, its decoder fine-tuned against a discriminator, when the run has one; otherwise
        the `autoencoder` itself. Reconstructions of real slices are the autoencoder's; the
        generator's show what a perfect prior's samples would look like."""
        if self.adversarial is not None:
            return self.adversarial.vqvae
        return self.autoencoder


def load_run(path: str | Path, prior: str = "required") -> Run:
    """A trained run's configuration and models, checked against each other.

    `prior` is "required" (a missing pixelcnn.keras is an error), "optional" (loaded when
    present) or "skip" (not loaded); a VAE run's prior is N(0, I), so there it is ignored. The
    adversarial decoder of a VQ-VAE run is loaded when adversarial.keras exists. A missing
    folder or file, or a model that does not fit the configuration, raises `RunError` naming
    it. A hyperparameters.json without a `model` key (written before the VAE baseline) is a
    VQ-VAE run.
    """
    import keras

    import brain_vqvae.model  # noqa: F401  (registers the custom layers and models with Keras)

    if prior not in ("required", "optional", "skip"):
        raise ValueError(f'prior must be "required", "optional" or "skip", got {prior!r}')
    folder = RunFolder(Path(path))
    if not folder.path.is_dir():
        raise RunError(f"{folder.path}: no such run folder")
    if not folder.hyperparameters.exists():
        raise RunError(f"{folder.path} is not a trained run: hyperparameters.json is missing")
    try:
        hyperparameters = Hyperparameters.load(folder.hyperparameters)
    except ValueError as error:
        raise RunError(str(error)) from None
    stages = [hyperparameters.model]
    wanted = prior == "required" or (prior == "optional" and folder.model("pixelcnn").exists())
    if hyperparameters.model == "vqvae" and wanted:
        stages.append("pixelcnn")
    if hyperparameters.model == "vqvae" and folder.model("adversarial").exists():
        stages.append("adversarial")
    models = {}
    for stage in stages:
        if not folder.model(stage).exists():
            raise RunError(f"{folder.path} has no {stage}.keras: train it with train.py first")
        models[stage] = keras.saving.load_model(folder.model(stage))
    _check_models_fit(folder, hyperparameters, models)
    if "adversarial" in models:
        _check_same_codes(folder, models["vqvae"], models["adversarial"])
    return Run(
        folder,
        hyperparameters,
        models[hyperparameters.model],
        models.get("pixelcnn"),
        models.get("adversarial"),
    )


STAGE_ARCHITECTURE_FIELDS = {
    "vqvae": VQVAE_ARCHITECTURE_FIELDS,
    "vae": VAE_ARCHITECTURE_FIELDS,  # the same encoder and decoder, and the latent vector
    "pixelcnn": PRIOR_ARCHITECTURE_FIELDS,
    "adversarial": VQVAE_ARCHITECTURE_FIELDS,  # a VQ-VAE whose decoder was fine-tuned
}


def _check_models_fit(folder: RunFolder, hyperparameters: Hyperparameters, models: dict) -> None:
    """Each model was built with the architecture hyperparameters.json describes for it (a
    prior retrained with other settings keeps the run's VQ-VAE)."""
    for stage, model in models.items():
        differing = [
            name
            for name in STAGE_ARCHITECTURE_FIELDS[stage]
            if getattr(model.hyperparameters, name) != getattr(hyperparameters, name)
        ]
        if differing:
            raise RunError(
                f"{folder.model(stage)} was built with other values of {', '.join(differing)} "
                f"than {folder.hyperparameters} says: the folder mixes files of different runs"
            )


def _check_same_codes(folder: RunFolder, vqvae, adversarial) -> None:
    """The adversarial decoder was fine-tuned from this run's VQ-VAE: the same codebook, so the
    prior's codes mean to it what they mean to the VQ-VAE."""
    import keras

    codebooks = [
        keras.ops.convert_to_numpy(model.quantizer.codebook) for model in (vqvae, adversarial.vqvae)
    ]
    if not np.array_equal(*codebooks):
        raise RunError(
            f"{folder.model('adversarial')} was fine-tuned from another VQ-VAE than "
            f"{folder.model('vqvae')} (their codebooks differ): retrain it with "
            "train.py --stage adversarial"
        )


def training_data_path(folder: RunFolder, data: str | Path | None = None) -> Path:
    """The dataset to read for a run: `data` when given, else the one it was trained on
    (`RunFolder.recorded_training_data`). A run that names none, or names a path missing here,
    raises `RunError`."""
    if data is not None:
        return Path(data)
    recorded = folder.recorded_training_data()
    if not recorded:
        raise RunError(
            f"{folder.path} does not name its training data (in {folder.metrics} or "
            f"{folder.state}); pass --data"
        )
    if not Path(recorded).exists():
        raise RunError(
            f"the run in {folder.path} was trained on {recorded}, which does not exist here; "
            "pass --data"
        )
    return Path(recorded)


def load_training_data(
    source: str | Path,
    hyperparameters: Hyperparameters,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    demographics_csv: str | Path | None = None,
) -> BrainSlices:
    """The slices of `source` as a run with `hyperparameters` sees them: its image size, slices
    per volume and split seed."""
    return load_slices(
        source,
        image_size=hyperparameters.image_size,
        slices_per_volume=hyperparameters.slices_per_volume,
        seed=hyperparameters.seed,
        cache_dir=cache_dir,
        skip_bad=skip_bad,
        demographics_csv=demographics_csv,
    )


def load_run_data(
    run: Run,
    data: str | Path | None = None,
    cache_dir: str | Path | None = None,
    demographics_csv: str | Path | None = None,
) -> BrainSlices:
    """The data a run was trained on (or `data`), loaded as the run saw it."""
    source = training_data_path(run.folder, data)
    return load_training_data(
        source, run.hyperparameters, cache_dir=cache_dir, demographics_csv=demographics_csv
    )


def prepare_output_folder(path: Path, overwrite: bool) -> Path:
    """Create `path` for a tool's outputs; one that already holds files is refused unless
    `overwrite`, so nothing a user has is replaced without asking."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose another --out")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already holds files; pass --overwrite to write over them")
    path.mkdir(parents=True, exist_ok=True)
    return path
