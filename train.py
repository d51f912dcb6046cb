"""Train the two-stage model: a VQ-VAE on brain slices, then a PixelCNN prior on its code maps.

    python train.py [--data PATH | --demo] [--out runs/NAME] [--stage all|vqvae|pixelcnn]
                    [--resume] [--overwrite] [--tensorboard] [--preset card|hifi] [--FIELD VALUE]
                    [--strategy default|mirrored|multiworker]

Stage 1 fits the VQ-VAE to the training split, validating on the validation split. Stage 2
encodes every training slice to its code map (8x8 for the card) and fits the PixelCNN to them
with sparse categorical cross-entropy, validating on the validation split's code maps. The test
split is then scored once. What the run folder holds is described in `runs.py`; every file is
written atomically, so a run killed at any moment leaves its last good checkpoint, and
`--resume` continues from it with the optimizer's state and epoch count. `--strategy` trains on
every local GPU or on a cluster (`make_strategy`, README "Multiple devices and clusters").
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow starts: see modules.py
import keras
import tensorflow as tf

import modules
from dataset import DataError, SliceSet, load_slices, make_tf_dataset
from hyperparameters import (
    Hyperparameters,
    add_hyperparameter_arguments,
    hyperparameters_from_arguments,
)
from runs import STAGES, RunError, RunFolder, save_model_atomically, write_atomically
from similarity import code_usage, plot_ssim_history, score_model, ssim_per_slice

PROJECT_DIR = Path(__file__).resolve().parent
DEMO_DATA_DIR = PROJECT_DIR / "data" / "demo"
MIN_FREE_BYTES = 200 * 2**20
STRATEGIES = ("default", "mirrored", "multiworker")
ENCODE_CHUNK = 1024
COSINE_FINAL_FRACTION = 0.05  # a cosine schedule ends at this fraction of the learning rate


def prepare_run_folder(
    path: Path, stages: tuple[str, ...], resume: bool, overwrite: bool
) -> RunFolder:
    """Create or check the run folder before any training, so a mistake costs no time.

    A folder that already holds a run is never overwritten: `resume` continues it, `overwrite`
    replaces the files of the stages being trained (all of it when training both). The folder
    must be writable and its disk must have room for checkpoints.
    """
    run = RunFolder(path)
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: choose one")
    existing = path.exists() and any(path.iterdir())
    if existing and not resume:
        replaced = _files_of_stages(run, stages)
        if "vqvae" not in stages and not run.model("vqvae").exists():
            raise RunError(f"{path}: --stage pixelcnn needs a trained vqvae.keras in the folder")
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
            if "vqvae" in stages:
                shutil.rmtree(path / "checkpoints", ignore_errors=True)
    if resume and not run.hyperparameters.exists():
        raise RunError(f"{path}: nothing to resume (no hyperparameters.json)")
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the run folder {path}: {error.strerror}") from None
    _check_writable(path)
    return run


def _files_of_stages(run: RunFolder, stages: tuple[str, ...]) -> list[Path]:
    files = [run.path / "metrics.json"]
    for stage in stages:
        files += [run.model(stage), run.history(stage), run.last_checkpoint(stage)]
    return files


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
    optimizer) and, when `monitor` improves on the best so far, as the stage's model file."""

    def __init__(self, run: RunFolder, stage: str, monitor: str = "val_loss"):
        super().__init__()
        self.run, self.stage, self.monitor = run, stage, monitor
        self.best = run.read_state().get(stage, {}).get("best", math.inf)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(math.isfinite(value) for value in logs.values()):
            return
        current = logs.get(self.monitor, logs["loss"])
        if current < self.best:
            self.best = current
            save_model_atomically(self.model, self.run.model(self.stage))
        save_model_atomically(self.model, self.run.last_checkpoint(self.stage))
        self.run.write_state(self.stage, epochs_done=epoch + 1, best=self.best, finished=False)


class ValidationSSIM(keras.callbacks.Callback):
    """Per-slice SSIM of the validation slices each epoch: adds `val_ssim_p05` (5th percentile)
    and `val_above_target` (fraction of slices with SSIM >= target) to the epoch's logs."""

    def __init__(self, images: np.ndarray, ssim_target: float, batch_size: int):
        super().__init__()
        self.images, self.ssim_target, self.batch_size = images, ssim_target, batch_size

    def on_epoch_end(self, epoch, logs=None):
        reconstructions = self.model.predict(self.images, batch_size=self.batch_size, verbose=0)
        scores = ssim_per_slice(self.images, np.clip(reconstructions, 0.0, 1.0))
        if logs is not None:
            logs["val_ssim_p05"] = float(np.percentile(scores, 5))
            logs["val_above_target"] = float(np.mean(scores >= self.ssim_target))


def trim_history(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows of a CSV history, if it exists."""
    if path.exists():
        rows = path.read_text().splitlines(keepends=True)
        write_atomically(path, "".join(rows[: 1 + epochs]))


def stage_callbacks(
    run: RunFolder, stage: str, hyperparameters: Hyperparameters, resume: bool, tensorboard: bool
) -> tuple[list[keras.callbacks.Callback], StopOnNaN]:
    """Early stopping (restoring the best weights), NaN guard, CSV history, checkpoints and,
    optionally, TensorBoard logs under `run/tensorboard/<stage>`.

    Each epoch's history row is written before its checkpoint, and a resumed run first cuts the
    history back to the epochs of its checkpoint, so a run killed between the two writes
    neither loses nor repeats a row."""
    nan_guard = StopOnNaN()
    if resume:
        trim_history(run.history(stage), run.read_state().get(stage, {}).get("epochs_done", 0))
    callbacks = [
        nan_guard,
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=hyperparameters.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.CSVLogger(str(run.history(stage)), append=resume),
        AtomicCheckpoint(run, stage),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard" / stage)))
    return callbacks, nan_guard


def fit_stage(
    model: keras.Model,
    run: RunFolder,
    stage: str,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    nan_guard: StopOnNaN,
    verbose: int | str,
) -> keras.Model:
    """Fit `model` from the stage's last finished epoch up to `epochs`, then return the best
    model saved on disk. A NaN loss stops the run with a `RunError`; checkpoints are kept."""
    epochs_done = run.read_state().get(stage, {}).get("epochs_done", 0)
    model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        initial_epoch=epochs_done,
        shuffle=False,  # the tf.data pipelines shuffle themselves
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


def adam(learning_rate: float, schedule: str, total_steps: int) -> keras.optimizers.Adam:
    """Adam at a constant `learning_rate`, or with "cosine" decay over `total_steps` steps:
    lr(t) = lr (0.05 + 0.95 (1 + cos(pi min(t, T) / T)) / 2). The schedule is saved with the
    optimizer, so a resumed run continues it from its step count."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(total_steps, 1), alpha=COSINE_FINAL_FRACTION
        )
    return keras.optimizers.Adam(learning_rate)


def stage_is_done(run: RunFolder, stage: str, epochs: int) -> bool:
    """Whether a stage finished (all its epochs, or stopped early) for at least `epochs`."""
    state = run.read_state().get(stage, {})
    return state.get("finished", False) and epochs <= state.get("epochs_requested", 0)


# Stage 1: VQ-VAE ---------------------------------------------------------------------------


def pixel_variance(slice_set: SliceSet) -> float:
    """Variance of the pixel values on the [0, 1] scale the model sees, computed in chunks.

    The reconstruction loss is MSE / variance; computing the variance on 0..255 pixels instead
    would divide the MSE by a number 255**2 times too big and leave only the VQ loss to train.
    """
    count, total, total_of_squares = 0, 0.0, 0.0
    for start in range(0, len(slice_set), ENCODE_CHUNK):
        chunk = slice_set.images[start : start + ENCODE_CHUNK].astype(np.float64) / 255.0
        count += chunk.size
        total += chunk.sum()
        total_of_squares += np.square(chunk).sum()
    mean = total / count
    return float(total_of_squares / count - mean**2)


def train_vqvae(
    hyperparameters: Hyperparameters,
    run: RunFolder,
    train: SliceSet,
    validate: SliceSet,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
) -> modules.VQVAE:
    """Stage 1: fit the VQ-VAE to `train`, validating on `validate`; returns the best model."""
    if resume and stage_is_done(run, "vqvae", hyperparameters.epochs_vqvae):
        return keras.saving.load_model(run.model("vqvae"))
    if resume and run.last_checkpoint("vqvae").exists():
        vqvae = keras.saving.load_model(run.last_checkpoint("vqvae"))
    else:
        vqvae = modules.build_vqvae(hyperparameters, data_variance=pixel_variance(train))
        vqvae.compile(
            optimizer=adam(
                hyperparameters.learning_rate_vqvae,
                hyperparameters.learning_rate_schedule,
                hyperparameters.epochs_vqvae * steps_per_epoch(len(train), hyperparameters),
            )
        )
    batch_size = hyperparameters.batch_size
    train_data = make_tf_dataset(
        train, batch_size, shuffle=True, seed=hyperparameters.seed, augment=hyperparameters.augment
    )
    validation_data = make_tf_dataset(validate, batch_size)
    callbacks, nan_guard = stage_callbacks(run, "vqvae", hyperparameters, resume, tensorboard)
    ssim_images = validate.float_images()[:512]
    callbacks.insert(1, ValidationSSIM(ssim_images, hyperparameters.ssim_target, batch_size))
    return fit_stage(
        vqvae,
        run,
        "vqvae",
        train_data,
        validation_data,
        hyperparameters.epochs_vqvae,
        callbacks,
        nan_guard,
        verbose,
    )


# Stage 2: PixelCNN prior -------------------------------------------------------------------


def encode_split(vqvae: modules.VQVAE, slice_set: SliceSet, batch_size: int) -> np.ndarray:
    """Code maps of every slice of a split: (N, S, S) uint8 -> (N, h, w) int32, in chunks so a
    large split never sits in memory as float32."""
    chunks = [
        modules.encode_code_maps(
            vqvae,
            slice_set.images[start : start + ENCODE_CHUNK, ..., None] / np.float32(255.0),
            batch_size=batch_size,
        )
        for start in range(0, len(slice_set), ENCODE_CHUNK)
    ]
    return np.concatenate(chunks)


def code_map_dataset(
    code_maps: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of code maps, which are the PixelCNN's inputs and targets: it predicts each code
    from the ones before it (`modules.PixelCNN`)."""
    data = tf.data.Dataset.from_tensor_slices(code_maps)
    if shuffle:
        data = data.shuffle(len(code_maps), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_pixelcnn(
    hyperparameters: Hyperparameters,
    run: RunFolder,
    train_codes: np.ndarray,
    validate_codes: np.ndarray,
    resume: bool,
    tensorboard: bool = False,
    verbose: int | str = "auto",
) -> modules.PixelCNN:
    """Stage 2: fit the PixelCNN to the training code maps; returns the best model."""
    if resume and stage_is_done(run, "pixelcnn", hyperparameters.epochs_pixelcnn):
        return keras.saving.load_model(run.model("pixelcnn"))
    if resume and run.last_checkpoint("pixelcnn").exists():
        pixelcnn = keras.saving.load_model(run.last_checkpoint("pixelcnn"))
    else:
        pixelcnn = modules.build_pixelcnn(hyperparameters)
        pixelcnn.compile(
            optimizer=adam(
                hyperparameters.learning_rate_pixelcnn,
                hyperparameters.learning_rate_schedule,
                hyperparameters.epochs_pixelcnn
                * steps_per_epoch(len(train_codes), hyperparameters),
            ),
        )
    batch_size = hyperparameters.batch_size
    train_data = code_map_dataset(train_codes, batch_size, shuffle=True, seed=hyperparameters.seed)
    validation_data = code_map_dataset(validate_codes, batch_size, shuffle=False)
    callbacks, nan_guard = stage_callbacks(run, "pixelcnn", hyperparameters, resume, tensorboard)
    return fit_stage(
        pixelcnn,
        run,
        "pixelcnn",
        train_data,
        validation_data,
        hyperparameters.epochs_pixelcnn,
        callbacks,
        nan_guard,
        verbose,
    )


# Report ------------------------------------------------------------------------------------


def test_metrics(
    hyperparameters: Hyperparameters,
    vqvae: modules.VQVAE,
    pixelcnn: modules.PixelCNN | None,
    test: SliceSet,
) -> dict:
    """The run's headline numbers on the test split (written to metrics.json): reconstruction
    scores, codebook use over the whole split (perplexity exp(-sum p log p) of the code
    frequencies p, fraction of codes used) and the prior's negative log-likelihood in bits."""
    scores = score_model(vqvae, test.float_images(), batch_size=hyperparameters.batch_size)
    test_codes = encode_split(vqvae, test, hyperparameters.batch_size)
    usage = code_usage(test_codes, hyperparameters.num_embeddings)
    used = usage[usage > 0]
    metrics = {
        "split": "test",
        **scores.summary(hyperparameters.ssim_target),
        "perplexity": float(np.exp(-np.sum(used * np.log(used)))),
        "codes_used": float(np.mean(usage > 0)),
    }
    if pixelcnn is not None:
        evaluation = pixelcnn.evaluate(
            code_map_dataset(test_codes, hyperparameters.batch_size, shuffle=False),
            return_dict=True,
            verbose=0,
        )
        metrics["prior_bits_per_code"] = evaluation["loss"] / math.log(2)
        metrics["uniform_bits_per_code"] = math.log2(hyperparameters.num_embeddings)
    return metrics


def plot_histories(run: RunFolder, ssim_target: float) -> list[Path]:
    """loss.png (training and validation loss of each stage trained so far) and ssim.png (SSIM
    per epoch with the target drawn) from the run's CSV histories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {
        stage: np.genfromtxt(run.history(stage), delimiter=",", names=True, ndmin=1)
        for stage in STAGES
        if run.history(stage).exists()
    }
    figure, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 4), squeeze=False)
    for axis, (stage, history) in zip(axes[0], histories.items(), strict=True):
        for column in ("loss", "val_loss", "reconstruction_loss", "val_reconstruction_loss"):
            if column in history.dtype.names:
                axis.plot(history["epoch"] + 1, history[column], marker=".", label=column)
        axis.set(title=stage, xlabel="epoch", ylabel="loss", yscale="log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(run.path / "loss.png", dpi=100)
    plt.close(figure)
    written = [run.path / "loss.png"]
    if "vqvae" in histories:
        written.append(plot_ssim_history(run.history("vqvae"), ssim_target, run.path / "ssim.png"))
    return written


# Devices and clusters ----------------------------------------------------------------------


@functools.cache
def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy of --strategy. "default": the current (normally the
    default, one-device) strategy; "mirrored": `MirroredStrategy` over every local GPU, or
    over the logical CPU devices when there is none; "multiworker":
    `MultiWorkerMirroredStrategy` over the cluster in TF_CONFIG (every GPU, or the CPU, of
    every worker; this machine alone without TF_CONFIG). It is a runtime choice, not saved with
    the run: a run trained on several devices loads and resumes on one, and the other way.
    Made once per process: two strategies over the same devices would reuse the keys of
    TensorFlow's collective operations."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: any process outside a cluster, and on a
    cluster the "chief" task or, when TF_CONFIG names none, worker 0."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def worker_folder(out: Path, strategy: tf.distribute.Strategy):
    """The run folder this process writes: `out` on the chief. Every other worker of a cluster
    trains in step with the chief (the same epochs, the same checkpoint to resume from), so it
    runs in a scratch copy of what a resume or `--stage pixelcnn` reads from `out`, deleted at
    the end; the run folder keeps a single writer."""
    if is_chief(strategy):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="brain-vqvae-worker-") as scratch:
        copy = Path(scratch) / out.name
        source, target = RunFolder(out), RunFolder(copy)
        files = [(source.hyperparameters, target.hyperparameters), (source.state, target.state)]
        for stage in STAGES:
            files += [
                (source.model(stage), target.model(stage)),
                (source.last_checkpoint(stage), target.last_checkpoint(stage)),
                (source.history(stage), target.history(stage)),
            ]
        for original, duplicate in files:
            if original.exists():
                duplicate.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, duplicate)
        yield copy


# Command line ------------------------------------------------------------------------------


def resolve_hyperparameters(arguments: argparse.Namespace, run_path: Path) -> Hyperparameters:
    """The command line's configuration, or on --resume / --stage pixelcnn the run's own, with
    only the epoch counts allowed to change."""
    requested = hyperparameters_from_arguments(arguments)
    saved_path = run_path / "hyperparameters.json"
    if not (arguments.resume or arguments.stage == "pixelcnn") or not saved_path.exists():
        return requested
    saved = Hyperparameters.load(saved_path)
    given = {
        name: value
        for name, value in vars(arguments).items()
        if name in saved.to_dict() and value is not None
    }
    epoch_fields = {"epochs_vqvae", "epochs_pixelcnn"}
    conflicting = sorted(
        name
        for name, value in given.items()
        if name not in epoch_fields and getattr(requested, name) != getattr(saved, name)
    )
    if conflicting:
        raise RunError(
            f"{saved_path} was trained with other values of {', '.join(conflicting)}; "
            "a resumed run keeps its configuration (only epoch counts may change)"
        )
    return saved.replace(**{name: given[name] for name in epoch_fields & set(given)})


def data_path(arguments: argparse.Namespace, seed: int) -> Path:
    """The dataset to train on: --data, or the demo dataset (built on first use)."""
    if arguments.data is not None:
        return Path(arguments.data).resolve()
    if not DEMO_DATA_DIR.exists():
        from brain_vqvae.data.demo import build_demo_dataset

        print(f"Building the synthetic demo dataset in {DEMO_DATA_DIR} ...")
        build_demo_dataset(DEMO_DATA_DIR, seed=seed)
    return DEMO_DATA_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="dataset path (any format dataset.py reads)")
    source.add_argument(
        "--demo", action="store_true", help="use the synthetic demo dataset (the default)"
    )
    parser.add_argument("--out", help="run folder (default runs/<data>-<preset>)")
    parser.add_argument("--stage", choices=("all", *STAGES), default="all")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable data files")
    parser.add_argument("--cache-dir", help="where decoded slices are cached")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help="default: one device; mirrored: every local GPU (or the visible CPU devices); "
        "multiworker: every worker of the cluster in TF_CONFIG (see README)",
    )
    add_hyperparameter_arguments(parser)
    return parser


def run_training(arguments: argparse.Namespace, verbose: int | str = "auto") -> dict:
    """Everything `python train.py` does; returns the metrics written to metrics.json.

    Models are built, loaded and trained in the scope of the --strategy (`make_strategy`), with
    the global batch of `batch_size` images split over its replicas. On a cluster every worker
    runs this in step; only the chief writes the run folder (`worker_folder`).
    """
    strategy = make_strategy(arguments.strategy)
    source = data_path(arguments, seed=arguments.seed or 0)
    out = Path(arguments.out or PROJECT_DIR / "runs" / f"{source.name}-{arguments.preset}")
    with strategy.scope(), worker_folder(out, strategy) as folder:
        return train_in_folder(arguments, source, folder, verbose)


def train_in_folder(
    arguments: argparse.Namespace, source: Path, out: Path, verbose: int | str
) -> dict:
    """`run_training` inside its strategy's scope: train on `source`, writing to `out`."""
    stages = STAGES if arguments.stage == "all" else (arguments.stage,)
    hyperparameters = resolve_hyperparameters(arguments, out)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if hyperparameters.batch_size < replicas:
        raise RunError(
            f"batch_size {hyperparameters.batch_size} is smaller than the {replicas} replicas of "
            f"--strategy {arguments.strategy}: the batch is split over them"
        )
    if replicas > 1:
        print(
            f"--strategy {arguments.strategy}: {replicas} replicas, a global batch of "
            f"{hyperparameters.batch_size} ({hyperparameters.batch_size / replicas:g} per replica)"
        )
    run = prepare_run_folder(out, stages, arguments.resume, arguments.overwrite)
    write_atomically(run.hyperparameters, json.dumps(hyperparameters.to_dict(), indent=2) + "\n")
    keras.utils.set_random_seed(hyperparameters.seed)

    data = load_slices(
        source,
        image_size=hyperparameters.image_size,
        slices_per_volume=hyperparameters.slices_per_volume,
        seed=hyperparameters.seed,
        cache_dir=arguments.cache_dir,
        skip_bad=arguments.skip_bad,
    )
    for problem in data.problems:
        print(f"warning: {problem}", file=sys.stderr)
    splits = {name: data.splits.get(name) for name in ("train", "validate", "test")}
    empty = [name for name, split in splits.items() if split is None or len(split) == 0]
    if empty:
        raise RunError(f"{source}: the {', '.join(empty)} split(s) hold no slices")

    if "vqvae" in stages:
        vqvae = train_vqvae(
            hyperparameters,
            run,
            splits["train"],
            splits["validate"],
            arguments.resume,
            arguments.tensorboard,
            verbose,
        )
    else:
        vqvae = keras.saving.load_model(run.model("vqvae"))
    pixelcnn = None
    if "pixelcnn" in stages:
        pixelcnn = train_pixelcnn(
            hyperparameters,
            run,
            encode_split(vqvae, splits["train"], hyperparameters.batch_size),
            encode_split(vqvae, splits["validate"], hyperparameters.batch_size),
            arguments.resume,
            arguments.tensorboard,
            verbose,
        )
    elif run.model("pixelcnn").exists():
        pixelcnn = keras.saving.load_model(run.model("pixelcnn"))

    metrics = {
        "data": str(source),
        **test_metrics(hyperparameters, vqvae, pixelcnn, splits["test"]),
    }
    write_atomically(run.metrics, json.dumps(metrics, indent=2) + "\n")
    plot_histories(run, hyperparameters.ssim_target)
    return metrics


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        metrics = run_training(arguments)
    except (RunError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"test SSIM mean {metrics['ssim_mean']:.3f} (median {metrics['ssim_median']:.3f}; "
        f"{metrics['fraction_above_target']:.0%} of {metrics['slices']} slices >= "
        f"{metrics['ssim_target']}), PSNR {metrics['psnr_mean']:.1f} dB, "
        f"MAE {metrics['mae_mean']:.4f}, codes used {metrics['codes_used']:.0%}"
    )
    if "prior_bits_per_code" in metrics:
        print(
            f"PixelCNN: {metrics['prior_bits_per_code']:.2f} bits per code "
            f"(uniform prior: {metrics['uniform_bits_per_code']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
