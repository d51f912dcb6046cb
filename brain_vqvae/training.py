"""Training the stages into a run folder: the VQ-VAE on slices, a copy of its decoder against a
discriminator, then the PixelCNN prior on their code maps; or, for the baseline (`model` "vae"),
the Gaussian VAE as the one stage.

Stage 1 fits the VQ-VAE to the training split, validating on the validation split. The
adversarial stage (when `epochs_adversarial` > 0) fine-tunes a copy of its decoder against a
discriminator on the same slices, the codes frozen (`brain_vqvae.model.adversarial`), to decode
the prior's samples. Stage 2 encodes every training slice to its code map (8x8 for the card)
and fits the PixelCNN to them with sparse categorical cross-entropy, validating on the
validation split's code maps. A VAE run fits the `GaussianVAE` as its stage 1, as the VQ-VAE is
fitted, and has no stage 2: it samples N(0, I). The test split is then scored once
(`evaluation.run_test_metrics`). Every stage is one `fit_stage`: `model.fit` with early
stopping (restoring the best weights; the adversarial stage, whose losses are a game, keeps its
last epoch instead), a NaN guard, a CSV history and atomic checkpoints, so a run killed at any
moment keeps its last good checkpoint and `resume=True` continues from it with the optimizer's
state and epoch count.

`train_run` is everything `python train.py` does. Training runs in the scope of a
`tf.distribute` strategy (`make_strategy`): the global batch of `batch_size` images is split
over its replicas, and on a cluster only the chief writes the run folder (`worker_folder`).
On Keras' JAX backend the data come as NumPy batches (`data.slice_batches`) and several devices
train through `keras.distribution.DataParallel` (`JaxDevices`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras.distribution import list_devices

from brain_vqvae import evaluation, plotting
from brain_vqvae.conditioning import condition_ranges, resolve_prior_conditions, slice_conditions
from brain_vqvae.data import BrainSlices, SliceSet, code_map_batches, slice_batches
from brain_vqvae.model import (
    build_adversarial_decoder,
    build_pixelcnn,
    build_vae,
    build_vqvae,
    encode_code_maps,
)
from brain_vqvae.model.adversarial import ADVERSARIAL_BETA_1
from brain_vqvae.model.distribute import TENSORFLOW
from brain_vqvae.model.prior import pack_prior_inputs
from brain_vqvae.optimizers import adam
from brain_vqvae.runs import (
    AUTOENCODER_STAGES,
    MODEL_STAGES,
    STAGES,
    RunError,
    RunFolder,
    copy_run_files,
    load_training_data,
    save_model_atomically,
    write_atomically,
)
from hyperparameters import Hyperparameters

if TENSORFLOW:
    import tensorflow as tf

MIN_FREE_BYTES = 200 * 2**20
STRATEGIES = ("default", "mirrored", "multiworker")
ENCODE_CHUNK = 1024  # slices converted at a time when encoding or counting a split
AUTOENCODER_BUILDERS = {"vqvae": build_vqvae, "vae": build_vae}
# A stage's epochs and learning rate are the fields epochs_<name> and learning_rate_<name> of
# its own name, except the VAE's: it is stage 1, as the VQ-VAE is, and shares stage 1's fields.
STAGE_SETTINGS = {"vae": "vqvae"}


# The run folder ----------------------------------------------------------------------------


def prepare_run_folder(
    path: Path, stages: tuple[str, ...], resume: bool, overwrite: bool
) -> RunFolder:
    """Create or check the run folder before any training, so a mistake costs no time.

    A folder that already holds a run is never overwritten: `resume` continues it, `overwrite`
    replaces the files of the stages being trained (all of it when training both), and a new
    autoencoder also replaces the files of the other model's stages (a VAE over a VQ-VAE run or
    the other way), and a new VQ-VAE its adversarial decoder, fine-tuned from the old one. The
    folder must be writable and its disk must have room for checkpoints.
    """
    run = RunFolder(path)
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: choose one")
    existing = path.exists() and any(path.iterdir())
    autoencoders = [stage for stage in stages if stage in AUTOENCODER_STAGES]
    if existing and not resume:
        replaced = [run.metrics] + [file for stage in stages for file in run.stage_files(stage)]
        if autoencoders:
            own = MODEL_STAGES[autoencoders[0]]
            replaced += [
                file for stage in STAGES if stage not in own for file in run.stage_files(stage)
            ]
        if "vqvae" in stages:
            replaced += run.stage_files("adversarial")
        for stage in ("adversarial", "pixelcnn"):
            if stage in stages and "vqvae" not in stages and not run.model("vqvae").exists():
                raise RunError(f"{path}: --stage {stage} needs a trained vqvae.keras in the folder")
        if any(file.exists() for file in replaced) or not run.hyperparameters.exists():
            if not overwrite:
                raise RunError(
                    f"{path} already holds a run; pass --resume to continue it or "
                    "--overwrite to replace it"
                )
            if not run.hyperparameters.exists():
                raise RunError(
                    f"{path} is not a run folder (no hyperparameters.json): not replacing it"
                )
            for file in replaced:
                file.unlink(missing_ok=True)
            if autoencoders:
                shutil.rmtree(run.checkpoints, ignore_errors=True)
        # Not resumed, each stage starts at its first epoch: forget a best loss and epoch count
        # left without the stage's files (a prior deleted by hand), or they would be taken up.
        for stage in stages:
            run.forget_stage(stage)
    if resume and not run.hyperparameters.exists():
        raise RunError(f"{path}: nothing to resume (no hyperparameters.json)")
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the run folder {path}: {error.strerror}") from None
    _check_writable(path)
    return run


def _check_writable(path: Path) -> None:
    probe = path / ".write_test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to the run folder {path}: {error.strerror}") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise RunError(
            f"only {free / 2**20:.0f} MiB free on the disk of {path}; "
            f"training needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB for checkpoints"
        )


def resolve_hyperparameters(
    requested: Hyperparameters, given: set[str], run_path: Path, changeable: tuple[str, ...]
) -> Hyperparameters:
    """The configuration to continue an existing run with: its own hyperparameters.json with
    the `changeable` fields that the user set explicitly (`given`) taken from `requested` (a
    preset with the command line's fields applied); `requested` itself when the run has no
    configuration yet. Any other given field that contradicts the saved run is an error."""
    saved_path = run_path / "hyperparameters.json"
    if not saved_path.exists():
        return requested
    saved = Hyperparameters.load(saved_path)
    conflicting = sorted(
        name
        for name in given
        if name not in changeable and getattr(requested, name) != getattr(saved, name)
    )
    if conflicting:
        raise RunError(
            f"{saved_path} was trained with other values of {', '.join(conflicting)}; a resumed "
            f"run keeps its configuration (only {', '.join(changeable)} may change)"
        )
    return saved.replace(**{name: getattr(requested, name) for name in set(changeable) & given})


# Callbacks ---------------------------------------------------------------------------------


class StopOnNaN(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite, and remember where."""

    def __init__(self):
        super().__init__()
        self.failed_at: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.failed_at = (self._epoch + 1, batch + 1)
            self.model.stop_training = True


class AtomicCheckpoint(keras.callbacks.Callback):
    """Each epoch with finite losses: save the model as the stage's last checkpoint (with its
    optimizer) and, when `monitor` improves on the best so far (always, for `monitor` None), as
    the stage's model file."""

    def __init__(self, run: RunFolder, stage: str, monitor: str | None = "val_loss"):
        super().__init__()
        self.run, self.stage, self.monitor = run, stage, monitor
        self.best = run.read_state().get(stage, {}).get("best", math.inf)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(math.isfinite(value) for value in logs.values()):
            return
        state = {"epochs_done": epoch + 1, "finished": False}
        improved = self.monitor is None
        if self.monitor is not None:
            current = logs.get(self.monitor, logs["loss"])
            improved = current < self.best
            self.best = state["best"] = min(current, self.best)
        if improved:
            save_model_atomically(self.model, self.run.model(self.stage))
        save_model_atomically(self.model, self.run.last_checkpoint(self.stage))
        self.run.write_state(self.stage, **state)


def trim_history(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows of a CSV history, if it exists."""
    if path.exists():
        rows = path.read_text().splitlines(keepends=True)
        write_atomically(path, "".join(rows[: 1 + epochs]))


def stage_callbacks(
    run: RunFolder,
    stage: str,
    hyperparameters: Hyperparameters,
    resume: bool,
    tensorboard: bool,
    keep_last: bool = False,
) -> tuple[list[keras.callbacks.Callback], StopOnNaN]:
    """Early stopping (restoring the best weights), NaN guard, CSV history, checkpoints and,
    optionally, TensorBoard logs under `run/tensorboard/<stage>`. With `keep_last`, no early
    stopping, and the stage's model file is its last epoch.

    Each epoch's history row is written before its checkpoint, and a resumed run first cuts the
    history back to the epochs of its checkpoint, so a run killed between the two writes
    neither loses nor repeats a row."""
    nan_guard = StopOnNaN()
    if resume:
        trim_history(run.history(stage), run.read_state().get(stage, {}).get("epochs_done", 0))
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=hyperparameters.early_stopping_patience,
        restore_best_weights=True,
    )
    callbacks = [
        nan_guard,
        *([] if keep_last else [early_stopping]),
        keras.callbacks.CSVLogger(str(run.history(stage)), append=resume),
        AtomicCheckpoint(run, stage, monitor=None if keep_last else "val_loss"),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard" / stage)))
    return callbacks, nan_guard


# Fitting a stage ---------------------------------------------------------------------------


def fit_stage(
    model: keras.Model,
    run: RunFolder,
    stage: str,
    train_data,
    validation_data,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    nan_guard: StopOnNaN,
    verbose: int | str,
) -> keras.Model:
    """Fit `model` on the batches of `train_data` (`slice_batches`, `code_map_batches`) from
    the stage's last finished epoch up to `epochs`, then return the best model saved on disk.
    A NaN loss stops the run with a `RunError`; checkpoints are kept."""
    epochs_done = run.read_state().get(stage, {}).get("epochs_done", 0)
    model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        initial_epoch=epochs_done,
        shuffle=False,  # the pipelines shuffle themselves
        callbacks=callbacks,
        verbose=verbose,
    )
    if nan_guard.failed_at is not None:
        epoch, batch = nan_guard.failed_at
        raise RunError(
            f"{stage}: the loss became NaN at epoch {epoch}, batch {batch}; training stopped. "
            f"The last good checkpoint is kept in {run.path}; try a lower learning rate and "
            "--resume."
        )
    if not run.model(stage).exists():
        raise RunError(f"{stage}: no epoch finished with finite losses; nothing was saved")
    run.write_state(stage, finished=True, epochs_requested=epochs)
    return keras.saving.load_model(run.model(stage))


def steps_per_epoch(examples: int, hyperparameters: Hyperparameters) -> int:
    """Batches in one pass over `examples` (the last batch may be partial)."""
    return -(-examples // hyperparameters.batch_size)


def stage_is_done(run: RunFolder, stage: str, epochs: int) -> bool:
    """Whether a stage finished (all its epochs, or stopped early) for at least `epochs`."""
    state = run.read_state().get(stage, {})
    return state.get("finished", False) and epochs <= state.get("epochs_requested", 0)


def train_stage(
    stage: str,
    build_model,
    hyperparameters: Hyperparameters,
    run: RunFolder,
    train_data,
    validation_data,
    examples: int,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
    game: bool = False,
) -> keras.Model:
    """Train one stage ("vqvae", "adversarial", "pixelcnn" or "vae") and return its best model.

    A finished stage of a resumed run is loaded as it is; an unfinished one continues from its
    last checkpoint; otherwise `build_model()` makes a new model, compiled here with Adam at the
    stage's learning rate and schedule over its epochs of `examples` training examples (the
    fields of `STAGE_SETTINGS`). A `game` (the adversarial stage, whose loss is two players')
    takes Adam with beta_1 `ADVERSARIAL_BETA_1` at a constant learning rate, does not stop
    early, and returns its last epoch.
    """
    settings = STAGE_SETTINGS.get(stage, stage)
    epochs = getattr(hyperparameters, f"epochs_{settings}")
    if resume and stage_is_done(run, stage, epochs):
        return keras.saving.load_model(run.model(stage))
    if resume and run.last_checkpoint(stage).exists():
        model = keras.saving.load_model(run.last_checkpoint(stage))
    else:
        model = build_model()
        total_steps = epochs * steps_per_epoch(examples, hyperparameters)
        learning_rate = getattr(hyperparameters, f"learning_rate_{settings}")
        if game:
            optimizer = adam(learning_rate, "constant", total_steps, ADVERSARIAL_BETA_1)
        else:
            optimizer = adam(learning_rate, hyperparameters.learning_rate_schedule, total_steps)
        model.compile(optimizer=optimizer)
    callbacks, nan_guard = stage_callbacks(
        run, stage, hyperparameters, resume, tensorboard, keep_last=game
    )
    return fit_stage(
        model, run, stage, train_data, validation_data, epochs, callbacks, nan_guard, verbose
    )


def pixel_variance(slice_set: SliceSet) -> float:
    """Variance of the pixel values on the [0, 1] scale the model sees, exact and fast: from the
    histogram of the uint8 values v (counts c_v over n pixels), mean = sum c_v v / n and
    variance = sum c_v v^2 / n - mean^2, divided by 255^2. Counted `ENCODE_CHUNK` slices at a
    time, as one count over a whole split would first copy it to int64 (8 bytes a pixel).

    The reconstruction loss is MSE / variance; computing the variance on 0..255 pixels instead
    would divide the MSE by a number 255**2 times too big and leave only the VQ loss to train.
    """
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(slice_set), ENCODE_CHUNK):
        chunk = slice_set.images[start : start + ENCODE_CHUNK].reshape(-1)
        counts += np.bincount(chunk, minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = counts @ values / counts.sum()
    return float(counts @ np.square(values) / counts.sum() - mean**2)


def train_autoencoder(
    hyperparameters: Hyperparameters,
    run: RunFolder,
    train: SliceSet,
    validate: SliceSet,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
):
    """Stage 1: fit the run's autoencoder (`hyperparameters.model`: the VQ-VAE, or the
    Gaussian VAE) to `train`, validating on `validate` each epoch (its logs include the
    validation slices' SSIM spread, `val_above_target` and `val_ssim_p05`); returns the best
    model."""
    build = AUTOENCODER_BUILDERS[hyperparameters.model]
    return train_stage(
        hyperparameters.model,
        lambda: build(hyperparameters, data_variance=pixel_variance(train)),
        hyperparameters,
        run,
        *slice_stage_batches(train, validate, hyperparameters),
        len(train),
        resume,
        tensorboard,
        verbose,
    )


def slice_stage_batches(train: SliceSet, validate: SliceSet, hyperparameters: Hyperparameters):
    """The training and validation batches of a stage fitted to slices: `train` shuffled by
    the run's seed (and augmented, with `augment`), `validate` in order."""
    batch_size = hyperparameters.batch_size
    training = slice_batches(
        train, batch_size, shuffle=True, seed=hyperparameters.seed, augment=hyperparameters.augment
    )
    return training, slice_batches(validate, batch_size)


def train_adversarial_decoder(
    hyperparameters: Hyperparameters,
    run: RunFolder,
    vqvae,
    train: SliceSet,
    validate: SliceSet,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
):
    """The adversarial stage: fine-tune a copy of `vqvae`'s decoder against a discriminator on
    `train` (validating on `validate`), its codes frozen (`AdversarialDecoder`), for
    `epochs_adversarial` epochs; returns the model of its last epoch."""
    return train_stage(
        "adversarial",
        lambda: build_adversarial_decoder(vqvae, hyperparameters),
        hyperparameters,
        run,
        *slice_stage_batches(train, validate, hyperparameters),
        len(train),
        resume,
        tensorboard,
        verbose,
        game=True,
    )


def encode_split(vqvae, slice_set: SliceSet, batch_size: int) -> np.ndarray:
    """Code maps of every slice of a split: (N, S, S) uint8 -> (N, h, w) int32, in chunks so a
    large split never sits in memory as float32."""
    chunks = [
        encode_code_maps(
            vqvae,
            slice_set.images[start : start + ENCODE_CHUNK, ..., None] / np.float32(255.0),
            batch_size=batch_size,
        )
        for start in range(0, len(slice_set), ENCODE_CHUNK)
    ]
    return np.concatenate(chunks)


def with_mirror_images(
    vqvae,
    slice_set: SliceSet,
    code_maps: np.ndarray,
    conditions: dict | None,
    names: tuple[str, ...],
    demographics: dict[str, dict],
    batch_size: int,
) -> tuple[np.ndarray, dict | None]:
    """The prior's training maps [N, h, w] of `slice_set` and their `conditions`
    (`slice_conditions` of `names`, or None), each followed by those of the slices' mirror
    images, flipped left to right: [2N, h, w], the same people at the same levels, and a
    mirrored slice's slice below is the mirror image of the real one's."""
    mirrored = SliceSet(
        slice_set.images[:, :, ::-1], slice_set.subject_ids, slice_set.slice_indices
    )
    mirrored_maps = encode_split(vqvae, mirrored, batch_size)
    maps = np.concatenate([code_maps, mirrored_maps])
    if conditions is None:
        return maps, None
    mirrored_conditions = slice_conditions(names, mirrored, demographics, mirrored_maps)
    return maps, {
        key: np.concatenate([conditions[key], mirrored_conditions[key]]) for key in conditions
    }


def train_pixelcnn(
    hyperparameters: Hyperparameters,
    run: RunFolder,
    train_codes: np.ndarray,
    validate_codes: np.ndarray,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
    conditions: tuple[dict, dict] | None = None,
    condition_ranges: dict | None = None,
    code_vectors: np.ndarray | None = None,
):
    """Stage 2: fit the PixelCNN to the training code maps (for a conditional prior with the
    training and validation maps' `conditions`, `slice_conditions`, and the training data's
    `condition_ranges`; a two-level prior's coarse map is fitted to the training maps and the
    VQ-VAE's `code_vectors`); returns the best model."""
    batch_size = hyperparameters.batch_size
    training_maps = train_codes
    if conditions is not None:
        train_codes, validate_codes = (
            pack_prior_inputs(codes, maps_conditions)
            for codes, maps_conditions in zip(
                (train_codes, validate_codes), conditions, strict=True
            )
        )
    return train_stage(
        "pixelcnn",
        lambda: build_pixelcnn(hyperparameters, condition_ranges, training_maps, code_vectors),
        hyperparameters,
        run,
        code_map_batches(train_codes, batch_size, shuffle=True, seed=hyperparameters.seed),
        code_map_batches(validate_codes, batch_size),
        len(train_codes),
        resume,
        tensorboard,
        verbose,
    )


# Devices and clusters ----------------------------------------------------------------------


class JaxDevices:
    """Where a run trains on Keras' JAX backend, with what `train_run` uses of a
    `tf.distribute.Strategy`: `scope()`, `num_replicas_in_sync` and `cluster_resolver`.

    With a `keras.distribution.DataParallel` over several devices each step's global batch is
    sharded over them (the model's variables replicated) and JAX computes the step's means over
    the whole batch; without one (None) training runs on the default device. There is no
    cluster: this process is the chief."""

    cluster_resolver = None

    def __init__(self, distribution: keras.distribution.DataParallel | None):
        self.distribution = distribution

    @property
    def num_replicas_in_sync(self) -> int:
        """The devices the batch is sharded over: 1 without a distribution."""
        if self.distribution is None:
            return 1
        return int(np.prod(self.distribution.device_mesh.shape))

    def scope(self):
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()


@functools.cache
def make_strategy(name: str):
    """The `tf.distribute` strategy of --strategy. "default": the current (normally the
    default, one-device) strategy; "mirrored": `MirroredStrategy` over every local GPU, or
    over the logical CPU devices when there is none; "multiworker":
    `MultiWorkerMirroredStrategy` over the cluster in TF_CONFIG (every GPU, or the CPU, of
    every worker; this machine alone without TF_CONFIG). It is a runtime choice, not saved with
    the run: a run trained on several devices loads and resumes on one, and the other way.
    Made once per process: two strategies over the same devices would reuse the keys of
    TensorFlow's collective operations.

    On Keras' JAX backend it is a `JaxDevices`: "default" one device, "mirrored" data
    parallelism over every local device of JAX's default platform (`keras.distribution.
    DataParallel`) when there are several; "multiworker" needs TensorFlow."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if not TENSORFLOW:
        return _jax_devices(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def _jax_devices(name: str) -> JaxDevices:
    """`make_strategy` on JAX."""
    if name == "multiworker":
        raise RunError(
            "--strategy multiworker trains on Keras' TensorFlow backend only "
            "(KERAS_BACKEND=tensorflow); on JAX, --strategy mirrored uses the local devices"
        )
    devices = list_devices()
    if name == "default" or len(devices) == 1:
        return JaxDevices(None)
    return JaxDevices(keras.distribution.DataParallel(devices=devices))


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: any process outside a cluster, and on a
    cluster the "chief" task or, when TF_CONFIG names none, worker 0."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def worker_folder(out: Path, strategy):
    """The run folder this process writes: `out` on the chief. Every other worker of a cluster
    trains in step with the chief (the same epochs, the same checkpoint to resume from), so it
    runs in a scratch copy of what a resume or `--stage pixelcnn` reads from `out`, deleted at
    the end; the run folder keeps a single writer."""
    if is_chief(strategy):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="brain-vqvae-worker-") as scratch:
        copy = Path(scratch) / out.name
        copy_run_files(RunFolder(out), RunFolder(copy))
        yield copy


# The whole run -----------------------------------------------------------------------------


def train_run(
    source: Path,
    out: Path,
    hyperparameters: Hyperparameters,
    stages: tuple[str, ...] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    strategy_name: str = "default",
    tensorboard: bool = False,
    cache_dir: Path | None = None,
    skip_bad: bool = False,
    verbose: int | str = "auto",
    data: BrainSlices | None = None,
) -> dict:
    """Train `stages` of a run (default: every stage of `hyperparameters.model`, see
    `MODEL_STAGES`) on the data at `source` into the folder `out`, score the test split and
    return the metrics written to metrics.json. A stage the model does not have, such as
    "pixelcnn" for a VAE run, raises `RunError`. `data`, when given, is `source` already loaded
    with its splits chosen by the caller (a benchmark's folds); by default `source` is loaded and
    split by person (`load_training_data`).

    Models are built, loaded and trained in the scope of the strategy `strategy_name`
    (`make_strategy`), with the global batch of `batch_size` images split over its replicas.
    On a cluster every worker runs this in step; only the chief writes `out` (`worker_folder`).
    """
    if stages is not None and "adversarial" in stages and not hyperparameters.epochs_adversarial:
        raise RunError(
            "--stage adversarial trains nothing with epochs_adversarial 0 (a run from before "
            "the stage, or a preset without it): give --epochs-adversarial, e.g. 12 as the card"
        )
    stages = check_stages(hyperparameters.model, stages)
    strategy = make_strategy(strategy_name)
    with strategy.scope(), worker_folder(out, strategy) as folder:
        return _train_in_folder(
            source,
            folder,
            hyperparameters,
            stages,
            resume,
            overwrite,
            strategy_name,
            strategy.num_replicas_in_sync,
            tensorboard,
            cache_dir,
            skip_bad,
            verbose,
            data,
        )


def _train_in_folder(
    source: Path,
    out: Path,
    hyperparameters: Hyperparameters,
    stages: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    strategy_name: str,
    replicas: int,
    tensorboard: bool,
    cache_dir: Path | None,
    skip_bad: bool,
    verbose: int | str,
    data: BrainSlices | None,
) -> dict:
    """`train_run` inside its strategy's scope (of `replicas` replicas), writing to `out`."""
    if hyperparameters.batch_size < replicas:
        raise RunError(
            f"batch_size {hyperparameters.batch_size} is smaller than the {replicas} replicas of "
            f"--strategy {strategy_name}: the batch is split over them"
        )
    if replicas > 1:
        print(
            f"--strategy {strategy_name}: {replicas} replicas, a global batch of "
            f"{hyperparameters.batch_size} ({hyperparameters.batch_size / replicas:g} per replica)"
        )
    run = prepare_run_folder(out, stages, resume, overwrite)
    write_atomically(run.hyperparameters, json.dumps(hyperparameters.to_dict(), indent=2) + "\n")
    run.record_training_data(source)
    keras.utils.set_random_seed(hyperparameters.seed)

    seconds = {}  # wall seconds of each phase, for metrics.json
    with timed(seconds, "load data"):
        if data is None:
            data = load_training_data(
                source, hyperparameters, cache_dir=cache_dir, skip_bad=skip_bad
            )
    for problem in data.problems:
        print(f"warning: {problem}", file=sys.stderr)
    splits = {name: data.splits.get(name) for name in ("train", "validate", "test")}
    empty = [name for name, split in splits.items() if split is None or len(split) == 0]
    if empty:
        raise RunError(f"{source}: the {', '.join(empty)} split(s) hold no slices")
    if not TENSORFLOW and replicas > 1:
        check_even_over_devices(hyperparameters, splits, replicas)

    if hyperparameters.model in stages:
        with timed(seconds, hyperparameters.model):
            autoencoder = train_autoencoder(
                hyperparameters,
                run,
                splits["train"],
                splits["validate"],
                resume,
                tensorboard,
                verbose,
            )
    else:
        autoencoder = keras.saving.load_model(run.model(hyperparameters.model))
    test_images = splits["test"].float_images()
    if hyperparameters.model == "vae":
        with timed(seconds, "test"):
            metrics = evaluation.run_test_metrics(hyperparameters, autoencoder, None, test_images)
        return _write_metrics(run, source, metrics, seconds, hyperparameters)
    vqvae = autoencoder
    if "adversarial" in stages and hyperparameters.epochs_adversarial:
        with timed(seconds, "adversarial"):
            train_adversarial_decoder(
                hyperparameters,
                run,
                vqvae,
                splits["train"],
                splits["validate"],
                resume,
                tensorboard,
                verbose,
            )
    pixelcnn = None
    encode_batch = hyperparameters.inference_batch_size
    encoded = ("train", "validate", "test") if "pixelcnn" in stages else ("test",)
    with timed(seconds, "encode"):
        codes = {name: encode_split(vqvae, splits[name], encode_batch) for name in encoded}
    if "pixelcnn" in stages:
        hyperparameters = resolve_prior_conditions(
            hyperparameters, splits["train"], data.demographics
        )
        write_atomically(
            run.hyperparameters, json.dumps(hyperparameters.to_dict(), indent=2) + "\n"
        )
        names = hyperparameters.condition_names
        print(f"prior conditions: {', '.join(names) or 'none'}")
        conditions = {
            name: slice_conditions(names, splits[name], data.demographics, codes[name])
            if names
            else None
            for name in ("train", "validate")
        }
        train_maps = codes["train"]
        if hyperparameters.prior_mirror_images:
            with timed(seconds, "encode mirrored"):
                train_maps, conditions["train"] = with_mirror_images(
                    vqvae,
                    splits["train"],
                    train_maps,
                    conditions["train"],
                    names,
                    data.demographics,
                    encode_batch,
                )
        with timed(seconds, "pixelcnn"):
            pixelcnn = train_pixelcnn(
                hyperparameters,
                run,
                train_maps,
                codes["validate"],
                resume,
                tensorboard,
                verbose,
                conditions=(conditions["train"], conditions["validate"]) if names else None,
                condition_ranges=condition_ranges(names, splits["train"], data.demographics),
                code_vectors=keras.ops.convert_to_numpy(vqvae.quantizer.codebook),
            )
    elif run.model("pixelcnn").exists():
        pixelcnn = keras.saving.load_model(run.model("pixelcnn"))

    test_conditions = None
    if pixelcnn is not None and pixelcnn.condition_names:
        test_conditions = slice_conditions(
            pixelcnn.condition_names, splits["test"], data.demographics, codes["test"]
        )
    with timed(seconds, "test"):
        metrics = evaluation.run_test_metrics(
            hyperparameters, vqvae, pixelcnn, test_images, codes["test"], test_conditions
        )
    return _write_metrics(run, source, metrics, seconds, hyperparameters)


@contextlib.contextmanager
def timed(seconds: dict, phase: str):
    """Record the wall seconds of the block as `seconds[phase]`."""
    start = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - start, 2)


def check_even_over_devices(hyperparameters: Hyperparameters, splits: dict, devices: int) -> None:
    """On JAX, `keras.distribution.DataParallel` splits every batch of `fit`, `evaluate` and
    `predict` evenly over the `devices` and fails on one that does not divide, the last batch
    of a split too; so a run whose batch sizes and split sizes are not all multiples of
    `devices` is refused before it trains (TensorFlow's mirrored strategy takes any sizes)."""
    sizes = {
        "--batch-size": hyperparameters.batch_size,
        "--inference-batch-size": hyperparameters.inference_batch_size,
        **{f"the {name} split's slices": len(split) for name, split in splits.items()},
    }
    uneven = [f"{what} ({size})" for what, size in sizes.items() if size % devices]
    if uneven:
        raise RunError(
            f"--strategy mirrored on JAX splits every batch evenly over its {devices} devices, "
            f"and these are not multiples of {devices}: {', '.join(uneven)}"
        )


def check_stages(model: str, stages: tuple[str, ...] | None) -> tuple[str, ...]:
    """`stages`, or every stage of `model` when None; a stage `model` does not have raises
    `RunError` saying why."""
    own = MODEL_STAGES[model]
    if stages is None:
        return own
    foreign = [stage for stage in stages if stage not in own]
    if foreign:
        reason = (
            "a VAE run has one stage, vae, and no prior stage: it samples its latent vectors "
            "from N(0, I)"
            if model == "vae"
            else f"a {model} run's stages are {', '.join(own)}"
        )
        raise RunError(f"--stage {' '.join(foreign)} does not apply: {reason}")
    return tuple(stages)


def _write_metrics(
    run: RunFolder, source: Path, metrics: dict, seconds: dict, hyperparameters: Hyperparameters
) -> dict:
    """Write metrics.json (the training data's path, `metrics`, and the wall `seconds` of this
    invocation's phases: loading the data, each stage trained, encoding, the test scores) and
    the curves."""
    metrics = {"data": str(source), **metrics, "seconds": seconds}
    write_atomically(run.metrics, json.dumps(metrics, indent=2) + "\n")
    plotting.plot_histories(run, hyperparameters.ssim_target)
    return metrics
