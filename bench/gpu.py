"""The device check: how fast each preset trains and samples on the device Keras finds, and
what it reaches in a fixed number of steps. Written for one GPU with Keras' JAX backend (the
GPU machine has JAX but no TensorFlow), it runs on any backend and device:

    KERAS_BACKEND=jax python -m bench.gpu [--data DIR] [--presets card hifi] [--steps 300]
                                          [--epochs N]
                                          [--adversarial-steps 100] [--prior-steps 100]
                                          [--device auto|cpu|gpu]
                                          [--batch-factors 1 4] [--profile] [--json PATH]
                                          [--quick]

Without --data it builds the synthetic demo set (`python dataset.py demo`, 80 subjects, one
process per core) into a temporary folder first. Then, for each preset at the batch size and
learning rates of the device (`hyperparameters.preset(name, device)`), and at that batch times
each of `--batch-factors` (learning rates by the square-root rule, `scaled_to_batch`):

1. the VQ-VAE trains for about `--steps` steps (whole epochs over the training split, at least
   two), or for `--epochs` epochs, by `fit`, with Adam at the preset's learning rate and
   schedule over those epochs (`optimizers.adam`, as `train.py` trains it); images/s = the
   images of the epochs after the first / their wall time, so the first epoch's compilation is
   left out and reported on its own;
2. what bounds that speed: the input pipeline's own images/s (one epoch of batches made and
   put on the device, no training), and on JAX the work of one compiled training step as XLA
   counts it (`cost_analysis`: GFLOP and MB of memory traffic per image), which at the measured
   images/s gives the arithmetic (TFLOP/s) and memory bandwidth (TB/s) the step reaches; with
   `--profile` (JAX), one more epoch traced by JAX's profiler and the device time per step of
   its busiest operations (`device_time_by_operation`; the test SSIM then follows that epoch);
3. its test SSIM: the mean SSIM of the test split's reconstructions (`metrics.ssim_per_slice`);
4. a preset with an adversarial stage (`epochs_adversarial` > 0: the card) fine-tunes the
   decoder against its discriminator (`build_adversarial_decoder`) for about
   `--adversarial-steps` steps on the same batches, images/s likewise, and the test SSIM of the
   fine-tuned decoder's reconstructions;
5. the preset's (unconditional) PixelCNN trains for about `--prior-steps` steps on the training
   split's code maps, images/s likewise;
6. 64 code maps are drawn (`sample_code_maps`): the first call, which compiles, and the second;
7. the peak device memory of the process so far (JAX: the device's `peak_bytes_in_use`;
   TensorFlow: `get_memory_info`'s peak), None on a CPU.

It prints a table and writes everything to one JSON (`--json`), rewritten after each preset
and batch so that a check stopped at its time limit keeps what it measured. The targets (issue
"Fast on every device"): on one H200 with JAX the card trains at 10,000 images/s or more and the
hifi preset at 2,000 or more, and the whole check runs in under 8 minutes there. On the JAX
backend it imports nothing that needs TensorFlow, so it runs where JAX is the only backend
installed.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_common_arguments, announce_machine, print_table, write_json
from hyperparameters import DEVICES, preset, scaled_to_batch

TARGET_IMAGES_PER_SECOND = {"card": 10_000, "hifi": 2_000}  # on one H200 with JAX
SAMPLED_MAPS = 64
PROFILED_OPERATIONS = 12  # --profile: the busiest operations reported
QUICK_STEPS = 4  # --quick: a smoke run of a few steps per stage, on a small demo set


def epoch_timer():
    """A Keras callback whose `seconds` lists the wall time of each epoch."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return Timer()


def timed_fit(model, batches, images_per_epoch: int, epochs: int) -> dict:
    """`model.fit(batches)` for `epochs` epochs: the seconds of all of them and of the first
    (with compilation), images/s over the others, and the last epoch's loss."""
    timer = epoch_timer()
    history = model.fit(batches, epochs=epochs, callbacks=[timer], shuffle=False, verbose=0)
    steady = sum(timer.seconds[1:])
    return {
        "epochs": epochs,
        "seconds": sum(timer.seconds),
        "first_epoch_s": timer.seconds[0],
        "images_per_s": images_per_epoch * (epochs - 1) / steady,
        "final_loss": float(history.history["loss"][-1]),
    }


def epochs_for(steps: int, steps_per_epoch: int) -> int:
    """Whole epochs of `steps_per_epoch` steps that give about `steps` steps, at least 2."""
    return max(2, round(steps / steps_per_epoch))


def peak_device_memory() -> int | None:
    """Peak bytes the process has held on its first accelerator, None on a CPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return int((device.memory_stats() or {}).get("peak_bytes_in_use", 0)) or None
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def pipeline_images_per_second(batches, images: int) -> float:
    """Images/s of one epoch of `batches` (a `slice_batches` result) made and put on Keras'
    device with nothing trained: the most the input can feed a training step."""
    import keras

    start = time.perf_counter()
    for batch in batches:
        keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.convert_to_tensor(batch)))
    return images / (time.perf_counter() - start)


def train_step_cost(model, batch) -> dict:
    """XLA's count of the work of one compiled training step of `model` on a batch like
    `batch` (N images), per image: GFLOP and MB of memory traffic (`cost_analysis`). JAX only
    (empty on another backend); the step's state comes from Keras' `_get_jax_state`, as its
    own JAX trainer builds it."""
    import keras

    if keras.backend.backend() != "jax":
        return {}
    import jax

    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    cost = jax.jit(model.train_step).lower(state, (batch,)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "step_gflop_per_image": float(cost["flops"]) / len(batch) / 1e9,
        "step_mb_per_image": float(cost["bytes accessed"]) / len(batch) / 1e6,
    }


def device_time_by_operation(profile, steps: int) -> dict:
    """Where the device time of `steps` traced training steps went, from a JAX profile
    (`jax.profiler.ProfileData`): the kernels on the accelerator's streams (planes "/device:...",
    lines "Stream ..."), each labelled by the XLA operation it ran and the framework operation
    behind it (the "hlo_op" and "tf_op" stats, e.g. a Keras layer's convolution) where the trace
    names them, else by its own name; on a CPU, XLA's operations on its host threads (lines
    "tf_XLA...", without the runtime's spans around them). Returns {"ms_per_step": the time
    counted, ms per step, "lines": {line: ms per step} for every line of the planes read, counted
    or not (to see what a trace holds), "operations": [{"operation", "ms_per_step", "share"}]
    for the PROFILED_OPERATIONS busiest, share = of the time counted}."""
    by_operation, by_line = collections.Counter(), collections.Counter()
    devices = [plane for plane in profile.planes if plane.name.startswith("/device:")]
    prefix = "Stream" if devices else "tf_XLA"
    for plane in devices or [plane for plane in profile.planes if plane.name == "/host:CPU"]:
        for line in plane.lines:
            by_line[f"{plane.name} {line.name}"] += sum(event.duration_ns for event in line.events)
            if not line.name.startswith(prefix):
                continue
            for event in line.events:
                if not devices and "::" in event.name:
                    continue  # the runtime's own spans on the host, around XLA's operations
                stats = dict(event.stats)
                names = [str(stats[key]) for key in ("hlo_op", "tf_op") if stats.get(key)]
                by_operation[" ".join(names) or event.name] += event.duration_ns
    total = sum(by_operation.values())
    milliseconds = 1e6 * steps
    return {
        "ms_per_step": total / milliseconds,
        "lines": {line: time / milliseconds for line, time in by_line.items()},
        "operations": [
            {"operation": name, "ms_per_step": time / milliseconds, "share": time / max(total, 1)}
            for name, time in by_operation.most_common(PROFILED_OPERATIONS)
        ],
    }


def profiled_epoch(model, batches) -> dict:
    """One more epoch of `model.fit(batches)` traced by JAX's profiler, summarised by
    `device_time_by_operation`."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            model.fit(batches, epochs=1, shuffle=False, verbose=0)
        (path,) = Path(folder).rglob("*.xplane.pb")
        profile = ProfileData.from_file(str(path))
    return device_time_by_operation(profile, len(batches))


def check_preset(
    name: str,
    device: str,
    batch_factor: int,
    data: Path,
    steps: int,
    adversarial_steps: int,
    prior_steps: int,
    profile: bool = False,
    epochs: int | None = None,
) -> dict:
    """Train, score and sample one preset at its device's batch times `batch_factor` (the module
    docstring's steps 1-7), its VQ-VAE for `epochs` epochs (None: about `steps` steps)."""
    import keras

    from brain_vqvae import training
    from brain_vqvae.data import code_map_batches, slice_batches
    from brain_vqvae.metrics import ssim_per_slice
    from brain_vqvae.model import (
        build_adversarial_decoder,
        build_pixelcnn,
        build_vqvae,
        decode_code_maps,
        encode_code_maps,
        sample_code_maps,
    )
    from brain_vqvae.model.adversarial import ADVERSARIAL_BETA_1
    from brain_vqvae.optimizers import adam
    from brain_vqvae.runs import load_training_data

    hyperparameters = preset(name, device)
    hyperparameters = scaled_to_batch(hyperparameters, hyperparameters.batch_size * batch_factor)
    batch = hyperparameters.batch_size
    slices = load_training_data(data, hyperparameters)
    train, test = slices.splits["train"], slices.splits["test"]
    row = {"preset": name, "batch": batch, "train_slices": len(train)}

    images = train.float_images()
    vqvae = build_vqvae(hyperparameters, float(images.var()))
    steps_per_epoch = training.steps_per_epoch(len(train), hyperparameters)
    epochs = epochs or epochs_for(steps, steps_per_epoch)
    schedule = hyperparameters.learning_rate_schedule
    vqvae.compile(
        optimizer=adam(hyperparameters.learning_rate_vqvae, schedule, epochs * steps_per_epoch)
    )
    batches = slice_batches(train, batch, shuffle=True, seed=hyperparameters.seed)
    fitted = timed_fit(vqvae, batches, len(train), epochs)
    fitted |= train_step_cost(vqvae, images[:batch])
    if "step_gflop_per_image" in fitted:
        fitted["tflop_per_s"] = fitted["step_gflop_per_image"] * fitted["images_per_s"] / 1e3
        fitted["tb_per_s"] = fitted["step_mb_per_image"] * fitted["images_per_s"] / 1e6
    row |= {f"vqvae_{key}": value for key, value in fitted.items()}
    row["vqvae_steps"] = epochs * steps_per_epoch
    row["pipeline_images_per_s"] = pipeline_images_per_second(batches, len(train))
    if profile:
        row["vqvae_profile"] = profiled_epoch(vqvae, batches)
    inference = hyperparameters.inference_batch_size
    test_images = test.float_images()
    test_codes = encode_code_maps(vqvae, test_images, inference)
    reconstructions = decode_code_maps(vqvae, test_codes, inference)
    row["test_ssim"] = float(ssim_per_slice(test_images, reconstructions).mean())

    if hyperparameters.epochs_adversarial:
        adversarial = build_adversarial_decoder(vqvae, hyperparameters)
        adversarial_epochs = epochs_for(adversarial_steps, steps_per_epoch)
        adversarial.compile(
            optimizer=adam(
                hyperparameters.learning_rate_adversarial,
                "constant",
                adversarial_epochs * steps_per_epoch,
                ADVERSARIAL_BETA_1,
            )
        )
        fitted = timed_fit(adversarial, batches, len(train), adversarial_epochs)
        row |= {f"adversarial_{key}": value for key, value in fitted.items()}
        reconstructions = decode_code_maps(adversarial.vqvae, test_codes, inference)
        row["adversarial_test_ssim"] = float(ssim_per_slice(test_images, reconstructions).mean())

    code_maps = encode_code_maps(vqvae, images, inference)
    prior = build_pixelcnn(
        hyperparameters.replace(prior_conditions="none"),
        training_maps=code_maps,
        code_vectors=keras.ops.convert_to_numpy(vqvae.quantizer.codebook),
    )
    prior_epochs = epochs_for(prior_steps, steps_per_epoch)
    prior.compile(
        optimizer=adam(
            hyperparameters.learning_rate_pixelcnn, schedule, prior_epochs * steps_per_epoch
        )
    )
    batches = code_map_batches(code_maps, batch, shuffle=True, seed=hyperparameters.seed)
    fitted = timed_fit(prior, batches, len(train), prior_epochs)
    row |= {f"prior_{key}": value for key, value in fitted.items()}

    for call in ("first", "second"):
        start = time.perf_counter()
        maps = sample_code_maps(prior, SAMPLED_MAPS, seed=0)
        row[f"sample_{call}_s"] = time.perf_counter() - start
    size = hyperparameters.code_map_size
    if maps.shape != (SAMPLED_MAPS, size, size):
        raise RuntimeError(f"sample_code_maps gave shape {maps.shape}")
    row["peak_memory_gib"] = (peak_device_memory() or 0) / 2**30 or None
    row["target_images_per_s"] = TARGET_IMAGES_PER_SECOND[name]
    return row


COLUMNS = (
    ("preset", "preset", "<"),
    ("batch", "batch", ""),
    ("vqvae_images_per_s", "VQ-VAE img/s", ".0f"),
    ("vqvae_first_epoch_s", "1st epoch s", ".1f"),
    ("vqvae_seconds", "VQ-VAE s", ".0f"),
    ("vqvae_tflop_per_s", "TFLOP/s", ".3g"),
    ("vqvae_tb_per_s", "TB/s", ".3g"),
    ("pipeline_images_per_s", "input img/s", ".0f"),
    ("test_ssim", "test SSIM", ".3f"),
    ("adversarial_images_per_s", "adversarial img/s", ".0f"),
    ("adversarial_test_ssim", "its test SSIM", ".3f"),
    ("prior_images_per_s", "prior img/s", ".0f"),
    ("sample_first_s", f"{SAMPLED_MAPS} maps 1st s", ".1f"),
    ("sample_second_s", f"{SAMPLED_MAPS} maps s", ".2f"),
    ("peak_memory_gib", "peak GiB", ".2f"),
    ("target_images_per_s", "target img/s", ".0f"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a dataset (default: build the demo set)")
    parser.add_argument(
        "--presets", nargs="+", default=["card", "hifi"], choices=TARGET_IMAGES_PER_SECOND
    )
    parser.add_argument("--steps", type=int, default=300, help="VQ-VAE steps per preset")
    parser.add_argument(
        "--epochs",
        type=int,
        help="VQ-VAE epochs per preset and batch instead of --steps (e.g. the presets' 30: "
        "the SSIM each batch reaches in a full run's epochs, and in what time)",
    )
    parser.add_argument(
        "--adversarial-steps",
        type=int,
        default=100,
        help="adversarial decoder steps per preset that has the stage",
    )
    parser.add_argument("--prior-steps", type=int, default=100, help="PixelCNN steps per preset")
    parser.add_argument("--device", choices=("auto", *DEVICES), default="auto")
    parser.add_argument(
        "--batch-factors",
        nargs="+",
        type=int,
        default=[1],
        help="check each preset at its device's batch times each of these",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="trace one more VQ-VAE epoch (JAX) and report its busiest operations",
    )
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import keras

    from brain_vqvae.devices import found_device

    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.profile and keras.backend.backend() != "jax":
        parser.error("--profile reads JAX's profiler: run with KERAS_BACKEND=jax")
    started = time.perf_counter()
    machine = announce_machine()
    device = found_device() if arguments.device == "auto" else arguments.device
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        data = arguments.data
        if data is None:
            from brain_vqvae.data.demo import build_demo_dataset

            data = Path(folder) / "demo"
            subjects = (4, 2, 2) if arguments.quick else (64, 8, 8)
            start = time.perf_counter()
            build_demo_dataset(data, *subjects, workers=os.cpu_count() or 1)
            print(f"built the demo set in {time.perf_counter() - start:.0f} s")
        steps = QUICK_STEPS if arguments.quick else arguments.steps
        adversarial_steps = QUICK_STEPS if arguments.quick else arguments.adversarial_steps
        prior_steps = QUICK_STEPS if arguments.quick else arguments.prior_steps
        rows = []
        for factor in arguments.batch_factors:
            for name in arguments.presets:
                rows.append(
                    check_preset(
                        name,
                        device,
                        factor,
                        data,
                        steps,
                        adversarial_steps,
                        prior_steps,
                        arguments.profile,
                        arguments.epochs,
                    )
                )
                total = time.perf_counter() - started
                write_json(
                    arguments.json,
                    {"machine": machine, "device": device, "seconds": total, "rows": rows},
                )
    print(f"\neach preset on the {device.upper()} ({total:.0f} s in all)")
    print_table(rows, COLUMNS)
    for row in rows:
        if "vqvae_profile" in row:
            print_profile(row)
    return 0


def print_profile(row: dict) -> None:
    """The busiest operations of a row's traced VQ-VAE epoch (`device_time_by_operation`)."""
    profile = row["vqvae_profile"]
    print(
        f"\n{row['preset']} at batch {row['batch']}: "
        f"{profile['ms_per_step']:.2f} ms of device time per step, busiest operations:"
    )
    for operation in profile["operations"]:
        share, milliseconds = operation["share"], operation["ms_per_step"]
        print(f"  {share:6.1%}  {milliseconds:8.3f} ms  {operation['operation']}")


if __name__ == "__main__":
    sys.exit(main())
