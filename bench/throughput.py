"""Training throughput of our VQ-VAE against a reference written like the Keras example.

    python -m bench.throughput [--data data/demo] [--images 2048] [--repeats 3] [--variants]
        [--arms NAME ...] [--profile] [--quick] [--json PATH]

The two contestants.
  ours       `modules.build_vqvae(preset("card"))` fed by `brain_vqvae.data.make_tf_dataset`
             (uint8 slices, cast to [0, 1] per batch), trained by `VQVAE.train_step` with all its
             per-step metrics and `optimizers.adam`, as `brain_vqvae.training` runs it: the card's
             SSIM + L1 loss (blended in from MSE over the first steps) and Adam with the cosine
             decay of a full 30-epoch run.
  reference  `bench.reference.build_reference`: the Keras example "Vector-Quantized
             Variational Autoencoders" (keras.io/examples/generative/vq_vae) with the card's
             layers (446,033 weights, as ours), its MSE / data variance + VQ loss and Adam at
             1e-3, the images passed to `fit` as one NumPy float32 array on the example's scale
             x / 255 - 1/2 (see bench/reference.py).

How it is timed. Every arm (a contestant plus settings) runs in its own worker process,
because TensorFlow fixes the oneDNN switch and its thread pools when it starts. All workers
load the same slices, seed Keras the same way and call `fit` once for 1 + `--repeats` epochs of
`--images` training slices at batch size 32; a callback holds each epoch until the coordinator
says go. The coordinator runs one epoch of one arm at a time, round robin (the order rotated
every round), so all arms share the machine's load in the same minutes while idle workers
sleep. The first epoch (graph tracing, first allocations) is not timed. Per arm the table gives
images/s = images / wall seconds of an epoch (median over the repeats, with the range), CPU
seconds per 100 images (the worker's user + system time over all its threads: steadier than
wall time when other jobs share the cores, though it also counts threads spinning while they
wait), the speed-up over the reference in wall and in CPU time (median over the rounds of
reference epoch time / arm epoch time in the same round; the reference is the first arm: the
reference with TensorFlow's defaults, or the first of `--arms` when that is a reference, e.g.
"reference, oneDNN on", the fair one on CPUs where TensorFlow leaves oneDNN off) and the
validation SSIM (mean over `--validate-images` slices, `brain_vqvae.metrics.ssim_per_slice`)
after the last epoch, i.e. after the same number of updates for every arm.

Arms: the reference with TensorFlow's defaults and with oneDNN on, ours as shipped (oneDNN on)
and ours with TensorFlow's defaults; `--variants` adds ours with XLA (`jit_compile=True`), with
1 or 2 intra-op threads and 1 inter-op thread, with the example's MSE loss instead of the
card's SSIM + L1 (the same loss as the reference), that loss with the decoder's one-filter
output convolution computed by `Conv2D`'s kernels (`use_plain_output`; the model computes it
depthwise on TensorFlow's CPU, `OneFilterConv2D`), and the reference under the
`mixed_bfloat16` dtype policy (ours fails under it: its losses subtract the policy's bfloat16
reconstructions from float32 images; the reference casts its reconstructions and VQ loss to
float32, a no-op without the policy).
`--profile` adds where a training step of ours spends its time: the input pipeline alone, a
whole step on a fixed batch, the per-step SSIM/PSNR metrics, and the forward + backward pass
of every layer (card-shaped models only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    DEMO_DATA_DIR,
    add_common_arguments,
    describe_machine,
    machine_summary,
    median,
    onednn_enabled,
    print_table,
    write_json,
)

BATCH_SIZE = 32
REPLY = "@@bench "  # prefix of a worker's reply lines on stdout; other output is passed on


@dataclasses.dataclass(frozen=True)
class Arm:
    """One contestant with one set of settings. onednn: "on", "off" or "tf-default" (the
    variable TF_ENABLE_ONEDNN_OPTS unset: on for CPUs with VNNI, AVX512_BF16 or AMX only)."""

    name: str
    model: str  # "ours" or "reference"
    onednn: str = "on"
    intra_threads: int = 0  # 0: TensorFlow's choice (the number of cores)
    inter_threads: int = 0
    policy: str = "float32"
    jit_compile: bool = False
    plain_output: bool = False  # ours only: see `use_plain_output`
    reconstruction_loss: str | None = None  # ours only: None keeps the card's


MAIN_ARMS = (
    Arm("reference", "reference", onednn="tf-default"),
    Arm("ours", "ours"),
    Arm("reference, oneDNN on", "reference"),
    Arm("ours, TF default", "ours", onednn="tf-default"),
)
VARIANT_ARMS = (
    Arm("ours + XLA", "ours", jit_compile=True),
    Arm("reference + mixed_bfloat16", "reference", policy="mixed_bfloat16"),
    Arm("ours, threads 1/1", "ours", intra_threads=1, inter_threads=1),
    Arm("ours, threads 2/1", "ours", intra_threads=2, inter_threads=1),
    Arm("ours, MSE loss", "ours", reconstruction_loss="mse"),
    Arm("ours, MSE loss, Conv2D conv_out", "ours", reconstruction_loss="mse", plain_output=True),
)


# =============================================================================== worker


def start_tensorflow(arm: Arm):
    """Import TensorFlow under the arm's oneDNN setting (set by the coordinator in the
    environment) before any project module can choose, and fix its thread pools."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(arm.intra_threads)
    tf.config.threading.set_inter_op_parallelism_threads(arm.inter_threads)


class Contestant:
    """A compiled model with `fit(epochs, callback)`, `reconstruct(images)` -> [0, 1] images
    and its weight count, for either kind of arm."""

    def __init__(self, arm: Arm, slices, data_variance: float, seed: int):
        import keras

        import modules
        from bench.reference import LEARNING_RATE, build_reference
        from brain_vqvae import training
        from brain_vqvae.data import make_tf_dataset
        from brain_vqvae.optimizers import adam
        from hyperparameters import preset

        self.arm = arm
        keras.config.set_dtype_policy(arm.policy)
        keras.utils.set_random_seed(seed)
        card = preset("card")
        if arm.model == "ours":
            card = card.replace(
                reconstruction_loss=arm.reconstruction_loss or card.reconstruction_loss
            )
            self.model = modules.build_vqvae(card, data_variance)
            if arm.plain_output:
                use_plain_output(self.model.decoder.get_layer("conv_out"))
            self.data = make_tf_dataset(slices, BATCH_SIZE, shuffle=True, seed=seed)
            self.weights = self.model.count_params()
            steps = card.epochs_vqvae * training.steps_per_epoch(len(slices), card)  # a full run's
            optimizer = adam(card.learning_rate_vqvae, card.learning_rate_schedule, steps)
        else:
            self.model = build_reference(data_variance, seed)
            self.data = slices.float_images() - 0.5  # the example's x / 255 - 1/2
            # Keras does not count the raw codebook variable among the model's weights.
            codebook = self.model.quantizer.embeddings.shape.num_elements()
            self.weights = self.model.vqvae.count_params() + codebook
            optimizer = keras.optimizers.Adam(LEARNING_RATE)
        self.model.compile(optimizer=optimizer, jit_compile=arm.jit_compile)

    def fit(self, epochs: int, callback) -> None:
        if self.arm.model == "ours":
            self.model.fit(self.data, epochs=epochs, shuffle=False, verbose=0, callbacks=[callback])
        else:
            self.model.fit(
                self.data, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=[callback]
            )

    def reconstruct(self, images):
        import numpy as np

        if self.arm.model == "ours":
            outputs = self.model.predict(images, batch_size=BATCH_SIZE, verbose=0)
        else:
            outputs = self.model.vqvae.predict(images - 0.5, batch_size=BATCH_SIZE, verbose=0) + 0.5
        return np.clip(np.asarray(outputs, dtype="float32"), 0.0, 1.0)


def use_plain_output(layer) -> None:
    """Compute the decoder's `OneFilterConv2D` with `Conv2D`'s own kernels, as the model did
    before it (and as the reference does): the same weights and outputs, the other way.
    Patched on the layer instance, so nothing about saving changes."""
    import functools

    import keras

    layer.convolution_op = functools.partial(keras.layers.Conv2D.convolution_op, layer)


def reply(message: dict) -> None:
    print(REPLY + json.dumps(message), flush=True)


def make_gate():
    """A callback that waits for a line on stdin before each epoch and replies with the
    epoch's wall and CPU seconds and its logs after it."""
    import keras

    class EpochGate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            sys.stdin.readline()
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            reply(
                {
                    "wall": time.perf_counter() - self.wall,
                    "cpu": time.process_time() - self.cpu,
                    "logs": {key: float(value) for key, value in (logs or {}).items()},
                }
            )

    return EpochGate()


def run_worker(settings: dict) -> None:
    """One arm: load, build, then train epoch by epoch on the coordinator's word, evaluate,
    and profile when asked."""
    arm = Arm(**settings["arm"])
    start_tensorflow(arm)
    import numpy as np

    from brain_vqvae.data import SliceSet, load_slices
    from brain_vqvae.metrics import psnr_per_slice, ssim_per_slice
    from brain_vqvae.training import pixel_variance

    splits = load_slices(settings["data"], image_size=128, cache_dir=settings["cache_dir"]).splits
    train = _evenly_spaced(splits["train"], settings["images"], SliceSet)
    validate = splits["validate"].float_images()[: settings["validate_images"]]
    contestant = Contestant(arm, train, pixel_variance(train), settings["seed"])
    reply({"onednn": onednn_enabled(), "weights": contestant.weights, "images": len(train)})
    contestant.fit(settings["epochs"], make_gate())
    sys.stdin.readline()
    reconstructions = contestant.reconstruct(validate)
    reply(
        {
            "ssim": float(np.mean(ssim_per_slice(validate, reconstructions))),
            "psnr": float(np.mean(psnr_per_slice(validate, reconstructions))),
        }
    )
    if settings["profile"] and profiled(arm):
        reply(profile_step(contestant, train))


def _evenly_spaced(slice_set, count: int, slice_set_type):
    """`count` slices spread evenly over the split (all of it when it has no more)."""
    import numpy as np

    if count >= len(slice_set):
        return slice_set
    keep = np.linspace(0, len(slice_set) - 1, count).round().astype(int)
    return slice_set_type(
        slice_set.images[keep], slice_set.subject_ids[keep], slice_set.slice_indices[keep]
    )


# -------------------------------------------------------------------------- profile


def profiled(arm: Arm) -> bool:
    """Whether `--profile` profiles this arm: ours in float32 (the profile reads its parts)."""
    return arm.model == "ours" and arm.policy == "float32"


def profile_step(contestant: Contestant, train, repeats: int = 3) -> dict:
    """Median milliseconds of: one pass of the input pipeline (per batch), a whole train step
    on a fixed batch, the SSIM + PSNR metrics of one batch, and the forward + backward pass of
    each layer of the encoder and decoder on its real input (chained models only)."""
    import tensorflow as tf

    import modules

    model = contestant.model
    batch = next(iter(contestant.data))
    step = tf.function(model.train_step)
    metrics = tf.function(
        lambda images: (
            modules.structural_similarity(images, images),
            tf.image.psnr(images, images, max_val=1.0),
        )
    )
    timings = {
        "input pipeline, per batch": lambda: _drain(contestant.data),
        "train step": lambda: step(batch),
        "SSIM + PSNR metrics": lambda: metrics(batch),
    }
    latents = model.encoder(batch)
    timings.update(_layer_timings(model.encoder, batch, input_gradient=False))
    timings.update(_layer_timings(model.decoder, latents, input_gradient=True))
    batches = len(train) // BATCH_SIZE or 1
    results = _median_milliseconds(timings, repeats)
    results["input pipeline, per batch"] /= batches
    return {"profile_ms": results}


def _drain(dataset) -> None:
    for _ in dataset:
        pass


def _layer_timings(model, inputs, input_gradient: bool) -> dict:
    """{layer name: callable running its forward + backward pass} for each layer with weights
    of a chain-shaped functional model, fed the output of the layer before it. The gradient
    with respect to a layer's input is computed where training needs it: everywhere but the
    first weighted layer of the encoder (`input_gradient` False)."""
    import tensorflow as tf

    timings = {}
    features = inputs
    for layer in model.layers[1:]:
        if layer.trainable_weights:
            timings[f"{model.name}.{layer.name}"] = _forward_backward(
                tf, layer, tf.constant(features), with_input=input_gradient
            )
            input_gradient = True
        features = layer(features)
    return timings


def _forward_backward(tf, layer, inputs, with_input: bool):
    sources = [*layer.trainable_variables, inputs] if with_input else layer.trainable_variables

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total = tf.reduce_sum(tf.cast(layer(inputs), tf.float32) ** 2)
        return tape.gradient(total, sources)

    return run


def _median_milliseconds(timings: dict, repeats: int) -> dict:
    for function in timings.values():
        function()
    samples = {name: [] for name in timings}
    for _ in range(repeats):
        for name, function in timings.items():
            start = time.perf_counter()
            function()
            samples[name].append(1000 * (time.perf_counter() - start))
    return {name: median(values) for name, values in samples.items()}


# =========================================================================== coordinator


class Worker:
    """A worker process running one arm, spoken to line by line."""

    def __init__(self, arm: Arm, settings: dict):
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if arm.onednn == "tf-default":
            environment.pop("TF_ENABLE_ONEDNN_OPTS", None)
        else:
            environment["TF_ENABLE_ONEDNN_OPTS"] = "1" if arm.onednn == "on" else "0"
        payload = json.dumps({**settings, "arm": dataclasses.asdict(arm)})
        self.arm = arm
        self.process = subprocess.Popen(
            [sys.executable, "-m", __spec__.name, "--worker", payload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )

    def ask(self, command: str | None = "go") -> dict:
        """Send `command` (a line; None sends nothing) and return the next reply."""
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
            print(f"  [{self.arm.name}] {line.rstrip()}", file=sys.stderr)
        raise RuntimeError(f"worker {self.arm.name!r} ended with code {self.process.wait()}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def run_arms(arms: list[Arm], settings: dict) -> list[dict]:
    """Start every arm, run the epochs round robin, then evaluate (and profile) each."""
    results = []
    workers = []
    for arm in arms:
        worker = Worker(arm, settings)
        workers.append(worker)
        results.append({"arm": dataclasses.asdict(arm), **worker.ask(None), "epochs": []})
        print(f"ready: {arm.name}", file=sys.stderr)
    try:
        for round_index in range(settings["epochs"]):
            shift = round_index % len(workers)
            for index in [*range(shift, len(workers)), *range(shift)]:
                results[index]["epochs"].append(workers[index].ask())
            print(f"round {round_index + 1}/{settings['epochs']} done", file=sys.stderr)
        for worker, result in zip(workers, results, strict=True):
            result.update(worker.ask())
            if settings["profile"] and profiled(worker.arm):
                try:
                    result.update(worker.ask(None))
                except RuntimeError as error:  # keep the timings when only a profile fails
                    result["profile_error"] = str(error)
    finally:
        for worker in workers:
            worker.close()
    return results


def summarise(results: list[dict], images: int) -> list[dict]:
    """One table row per arm from the timed epochs (all but the first)."""
    reference_walls = [epoch["wall"] for epoch in results[0]["epochs"][1:]]
    reference_cpus = [epoch["cpu"] for epoch in results[0]["epochs"][1:]]
    rows = []
    for result in results:
        timed = result["epochs"][1:]
        rates = [images / epoch["wall"] for epoch in timed]
        arm = result["arm"]
        rows.append(
            {
                "arm": arm["name"],
                "onednn": "on" if result["onednn"] else "off",
                "threads": f"{arm['intra_threads'] or '-'}/{arm['inter_threads'] or '-'}",
                "images_per_s": median(rates),
                "range": f"{min(rates):.1f}-{max(rates):.1f}",
                "cpu_s_per_100": median([100 * epoch["cpu"] / images for epoch in timed]),
                "speedup": median(
                    [ref / epoch["wall"] for ref, epoch in zip(reference_walls, timed, strict=True)]
                ),
                "cpu_speedup": median(
                    [ref / epoch["cpu"] for ref, epoch in zip(reference_cpus, timed, strict=True)]
                ),
                "ssim": result["ssim"],
                "ssim_change": result["ssim"] - results[0]["ssim"],
                "final_loss": timed[-1]["logs"].get("loss"),
            }
        )
    return rows


COLUMNS = (
    ("arm", "arm", "<"),
    ("onednn", "oneDNN", ""),
    ("threads", "intra/inter", ""),
    ("images_per_s", "images/s", ".1f"),
    ("range", "range", ""),
    ("cpu_s_per_100", "CPU s/100 img", ".2f"),
    ("speedup", "x ref (wall)", ".2f"),
    ("cpu_speedup", "x ref (CPU)", ".2f"),
    ("ssim", "val SSIM", ".3f"),
    ("ssim_change", "dSSIM", "+.3f"),
)


def print_profile(results: list[dict]) -> None:
    profiled = [result for result in results if "profile_ms" in result]
    if not profiled:
        return
    names = list(profiled[0]["profile_ms"])
    rows = [
        {"part": name, **{r["arm"]["name"]: r["profile_ms"][name] for r in profiled}}
        for name in names
    ]
    print(f"\nwhere a step of ours goes (median ms, batch of {BATCH_SIZE}; layers fwd+bwd):")
    names = [result["arm"]["name"] for result in profiled]
    print_table(rows, [("part", "part", "<"), *((name, name, ".1f") for name in names)])


def choose_arms(arguments: argparse.Namespace) -> list[Arm]:
    """The main arms (and the variants with --variants), or the --arms after the reference
    with TensorFlow's defaults unless the first of them is a reference."""
    if not arguments.arms:
        return [*MAIN_ARMS, *(VARIANT_ARMS if arguments.variants else ())]
    by_name = {arm.name: arm for arm in (*MAIN_ARMS, *VARIANT_ARMS)}
    unknown = sorted(set(arguments.arms) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {list(by_name)}")
    chosen = [by_name[name] for name in dict.fromkeys(arguments.arms)]
    if chosen[0].model == "reference":
        return chosen
    return [MAIN_ARMS[0], *(arm for arm in chosen if arm != MAIN_ARMS[0])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEMO_DATA_DIR, help="a PNG tree or any data")
    parser.add_argument("--images", type=int, default=2048, help="training slices per epoch")
    parser.add_argument("--validate-images", type=int, default=256, help="slices scored")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per arm")
    parser.add_argument("--variants", action="store_true", help="add XLA, bf16, thread arms")
    parser.add_argument("--profile", action="store_true", help="add a per-part step profile")
    parser.add_argument("--arms", nargs="+", metavar="NAME", help="only these arms, by name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=BENCH_DIR / "cache")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.worker:
        run_worker(json.loads(arguments.worker))
        return 0
    if arguments.quick:
        arguments.images, arguments.validate_images, arguments.repeats = 64, 32, 1
    arms = choose_arms(arguments)
    settings = {
        "data": str(arguments.data),
        "cache_dir": str(arguments.cache_dir),
        "images": arguments.images,
        "validate_images": arguments.validate_images,
        "epochs": 1 + arguments.repeats,
        "seed": arguments.seed,
        "profile": arguments.profile,
    }
    machine = machine_summary()
    print(describe_machine(machine))
    results = run_arms(arms, settings)
    images = results[0]["images"]
    rows = summarise(results, images)
    print(
        f"\nVQ-VAE training, batch {BATCH_SIZE}, {images} images per epoch, "
        f"median of {arguments.repeats} epochs after 1 warm-up, interleaved; val SSIM after "
        f"{settings['epochs']} epochs on {arguments.validate_images} validation slices"
    )
    print_table(rows, COLUMNS)
    print_profile(results)
    write_json(
        arguments.json,
        {"machine": machine, "settings": settings, "rows": rows, "results": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
