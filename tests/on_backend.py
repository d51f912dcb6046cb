"""Tiny models trained, saved and loaded on the Keras backend of KERAS_BACKEND, in a fresh
process (run by test_backends.py: a process has one backend, chosen before Keras is imported).

    KERAS_BACKEND=jax python tests/on_backend.py train WORK_DIR
    KERAS_BACKEND=... python tests/on_backend.py save WORK_DIR
    KERAS_BACKEND=... python tests/on_backend.py load WORK_DIR
    KERAS_BACKEND=jax python tests/on_backend.py run WORK_DIR
    KERAS_BACKEND=jax python tests/on_backend.py sample WORK_DIR

"train" fits a VQ-VAE (EMA codebook, dead-code restarts, k-means initialisation), a masked, a
gated and a conditional gated PixelCNN, and a Gaussian VAE, then an adversarial decoder from
the VQ-VAE, and writes WORK_DIR/train.json:

    "backend"    the backend the models ran on
    "history"    {model: {metric: [value of each epoch]}}
    "quantizer_state_changed"  {variable: whether training changed it}
    "evaluate_changed_state"   whether `evaluate` changed any quantizer variable
    "adversarial_history"      {metric: [value of each epoch]} of the adversarial decoder
    "adversarial_moved"        {"encoder", "codebook", "decoder": whether its training changed
                               the part}

"save" fits a VQ-VAE, a masked and a conditional gated PixelCNN for one epoch, saves them
(with their optimizers) as WORK_DIR/{vqvae,masked,conditional}.keras and writes their outputs
on fixed inputs to WORK_DIR/saved.npz: "reconstructions", "code_indices", "masked_logits",
"conditional_logits". "load" loads the three models, writes the same outputs to
WORK_DIR/loaded.npz, and fits each loaded model for one more epoch with its saved optimizer
(WORK_DIR/resumed.json: the loss of that epoch, per model). It also samples code maps from
the loaded masked and conditional priors (`sampler_checks`) into WORK_DIR/loaded_samples.json.

"sample" draws code maps from a tiny masked, a gated, a conditional gated, a conditional
two-level prior and a conditional prior told the positions (plain and guided) and from a gated
prior trained on constant maps (its sampler compiled before it was trained), and writes
WORK_DIR/sample.json:
{prior: `sampler_checks`} and "constant_majority_share" (the mean share of each of 8 samples'
most common code, which is "constant_majority_codes").

"run" trains a whole run with `train.py --strategy mirrored` (every stage, augmented slices,
a conditional prior) on a tiny PNG tree in WORK_DIR, after trying it with a batch of 7, and
writes WORK_DIR/run.json: "devices" (the devices Keras sees), "refused" (the message that
refused the batch of 7, or ""), "metrics" (the run's metrics.json) and "losses"
({stage: [training loss of each epoch]}, from its histories).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
from keras import ops

import modules
from brain_vqvae.data import code_map_batches
from brain_vqvae.model.conditions import condition_batch
from brain_vqvae.model.prior import pack_prior_inputs
from brain_vqvae.model.sampler import raster_scan, sample_code_maps
from brain_vqvae.runs import RunError
from hyperparameters import Hyperparameters

TINY = Hyperparameters(
    image_size=32,
    encoder_filters=(8, 8, 16),
    downsample_stages=2,
    num_embeddings=8,
    latent_dim=4,
    pixelcnn_filters=16,
    pixelcnn_residual_blocks=2,
    pixelcnn_gated_layers=3,
    batch_size=8,
    mse_warmup_steps=8,
    vae_latent_dim=8,
)
CONDITIONS = "slice_position,previous_slice"
RANGES = {"slice_position": [0.0, 1.0]}


def wave_images(count: int = 32, size: int = 32, seed: int = 0) -> np.ndarray:
    """Plane waves of random frequency and phase, 0.5 +- 0.4: [count, size, size, 1]."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size] / size
    frequencies = rng.uniform(1.0, 3.0, (count, 2, 1, 1))
    phases = rng.uniform(0.0, 2 * np.pi, (count, 1, 1))
    angles = 2 * np.pi * (frequencies[:, 0] * rows + frequencies[:, 1] * columns) + phases
    return (0.5 + 0.4 * np.sin(angles))[..., None].astype("float32")


def code_maps(count: int = 64, seed: int = 1) -> np.ndarray:
    """Code maps [count, 8, 8] of two kinds with a structure a prior learns: rows of one code
    (1 or 5) with a few random codes among them."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(count) % 2 == 0, 1, 5)[:, None, None]
    maps = np.broadcast_to(base, (count, 8, 8)).copy()
    noise = rng.random(maps.shape) < 0.1
    maps[noise] = rng.integers(0, 8, noise.sum())
    return maps.astype("int32")


def conditional_rows(maps: np.ndarray) -> np.ndarray:
    """`maps` with their slice positions (0 for code 1 maps, 1 for code 5 maps) and the map
    itself as the slice below, packed as a conditional prior is fitted on."""
    levels = (maps[:, 0, 0] == 5).astype("float32")
    conditions = condition_batch(
        ("slice_position", "previous_slice"),
        RANGES,
        len(maps),
        {"slice_position": levels, "previous_slice": maps},
        8,
    )
    return pack_prior_inputs(maps, conditions)


def fitted(model, data, epochs: int, learning_rate: float = 3e-3):
    """Compile `model` with Adam and fit it on `data` (batches, or images in batches of 8);
    returns its history."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    batch_size = 8 if isinstance(data, np.ndarray) else None
    history = model.fit(data, batch_size=batch_size, epochs=epochs, verbose=0).history
    return {name: [float(value) for value in values] for name, values in history.items()}


def prior(architecture: str, conditions: str = "none", coarse_codes: int = 0, places: bool = False):
    """A tiny untrained prior; a two-level one (`coarse_codes`) has its coarse map fitted to
    `code_maps` and random code vectors; `places`: told the positions."""
    settings = TINY.replace(
        pixelcnn_architecture=architecture,
        prior_conditions=conditions,
        pixelcnn_coarse_codes=coarse_codes,
        pixelcnn_position_features=places,
    )
    ranges = RANGES if conditions != "none" else None
    vectors = np.random.default_rng(2).normal(size=(TINY.num_embeddings, TINY.latent_dim))
    return modules.build_pixelcnn(settings, ranges, code_maps(16), vectors)


def train(work: Path) -> None:
    keras.utils.set_random_seed(0)
    images, maps = wave_images(), code_maps()
    vqvae = modules.build_vqvae(
        TINY.replace(ema=True, dead_code_restart=True, kmeans_init=True), float(images.var())
    )
    quantizer = vqvae.quantizer
    state = {
        "codebook": quantizer.codebook,
        "ema_cluster_size": quantizer.ema_cluster_size,
        "usage_share": quantizer.usage_share,
        "initialized": quantizer.initialized,
    }
    before = {name: np.array(variable.numpy()) for name, variable in state.items()}
    history = {"vqvae": fitted(vqvae, images, epochs=6)}
    after = {name: np.array(variable.numpy()) for name, variable in state.items()}
    vqvae.evaluate(images, batch_size=8, verbose=0)
    evaluated = {name: np.array(variable.numpy()) for name, variable in state.items()}
    for name, model, data in (
        ("masked", prior("masked"), code_map_batches(maps, 8, shuffle=True)),
        ("gated", prior("gated"), code_map_batches(maps, 8, shuffle=True)),
        (
            "conditional",
            prior("gated", CONDITIONS),
            code_map_batches(conditional_rows(maps), 8, shuffle=True),
        ),
    ):
        history[name] = fitted(model, data, epochs=4, learning_rate=1e-2)
    vae = modules.build_vae(TINY.replace(model="vae"), float(images.var()))
    history["vae"] = fitted(vae, images, epochs=4)
    adversarial = modules.build_adversarial_decoder(vqvae, TINY)
    parts = {
        "encoder": lambda model: model.encoder.weights,
        "codebook": lambda model: [model.quantizer.codebook],
        "decoder": lambda model: model.decoder.weights,
    }
    start = {name: [np.array(w) for w in weights(vqvae)] for name, weights in parts.items()}
    adversarial_history = fitted(adversarial, images, epochs=12)
    moved = {
        name: any(
            not np.array_equal(np.array(after), before)
            for after, before in zip(weights(adversarial.vqvae), start[name], strict=True)
        )
        for name, weights in parts.items()
    }
    result = {
        "backend": keras.backend.backend(),
        "history": history,
        "quantizer_state_changed": {
            name: not np.array_equal(before[name], after[name]) for name in state
        },
        "evaluate_changed_state": any(
            not np.array_equal(after[name], evaluated[name]) for name in state
        ),
        "adversarial_history": adversarial_history,
        "adversarial_moved": moved,
    }
    (work / "train.json").write_text(json.dumps(result))


def outputs(vqvae, masked, conditional) -> dict:
    images, maps = wave_images(8, seed=5), code_maps(8, seed=6)
    rows = conditional_rows(maps)
    return {
        "reconstructions": np.asarray(vqvae(images)),
        "code_indices": np.asarray(vqvae.code_indices(images)),
        "masked_logits": np.asarray(masked(maps)),
        "conditional_logits": np.asarray(conditional(conditional.unpack(rows))),
    }


def save(work: Path) -> None:
    keras.utils.set_random_seed(0)
    images, maps = wave_images(), code_maps()
    vqvae = modules.build_vqvae(TINY.replace(ema=True), float(images.var()))
    masked, conditional = prior("masked"), prior("gated", CONDITIONS)
    fitted(vqvae, images, epochs=1)
    fitted(masked, code_map_batches(maps, 8), epochs=1)
    fitted(conditional, code_map_batches(conditional_rows(maps), 8), epochs=1)
    for name, model in (("vqvae", vqvae), ("masked", masked), ("conditional", conditional)):
        model.save(work / f"{name}.keras")
    np.savez(work / "saved.npz", **outputs(vqvae, masked, conditional))


def load(work: Path) -> None:
    models = {
        name: keras.saving.load_model(work / f"{name}.keras")
        for name in ("vqvae", "masked", "conditional")
    }
    np.savez(work / "loaded.npz", **outputs(*models.values()))
    images, maps = wave_images(), code_maps()
    data = {
        "vqvae": images,
        "masked": code_map_batches(maps, 8),
        "conditional": code_map_batches(conditional_rows(maps), 8),
    }
    resumed = {
        name: model.fit(
            data[name], batch_size=8 if name == "vqvae" else None, epochs=1, verbose=0
        ).history["loss"][-1]
        for name, model in models.items()
    }
    (work / "resumed.json").write_text(json.dumps(resumed))
    samples = {
        "masked": sampler_checks(models["masked"], False),
        "conditional": sampler_checks(models["conditional"], True),
    }
    (work / "loaded_samples.json").write_text(json.dumps(samples))


def scan_logits(pixelcnn, maps: np.ndarray, features=None) -> tuple[np.ndarray, np.ndarray]:
    """Replay `maps` [N, h, h] through the sampler's cached raster scan: the codes it returns and
    the logits [N, h*h, K] it computed at each position (compiled by `jax.jit` on JAX, where a
    `jax.debug.callback` reads them out of the loop; eager on TensorFlow)."""
    flat = ops.convert_to_tensor(maps.reshape(len(maps), -1))
    seen = {}

    def record(position, logits):
        seen[int(position)] = np.asarray(logits)

    def replay(position, logits):
        if keras.backend.backend() == "jax":
            import jax

            jax.debug.callback(record, position, logits)
        else:
            record(position, logits)
        return ops.take(flat, position, axis=1)

    def scan():
        return raster_scan(pixelcnn)(len(maps), replay, features)

    if keras.backend.backend() == "jax":
        import jax

        codes = jax.jit(scan)()
        jax.effects_barrier()
    else:
        codes = scan()
    return np.asarray(codes), np.stack([seen[t] for t in range(maps[0].size)], axis=1)


def sampler_checks(pixelcnn, conditional: bool) -> dict:
    """What `sample_code_maps` draws from `pixelcnn` (4 maps; a conditional prior given a slice
    position, the slice below and guidance 2): "shape", "low" and "high" (the codes' range),
    "same_seed_same_maps", "other_seed_other_maps", "filtered_shape" (top-k 3, top-p 0.9), and
    "replayed" (the cached scan, replaying a map, returns it) and "replay_logit_error" (the
    largest difference of the scan's logits from the whole-map call's, `scan_logits`)."""
    maps = code_maps(4, seed=9)
    options, whole_inputs, features = {}, maps, None
    if conditional:
        asked = {"slice_position": 0.3, "previous_slice": code_maps(4, seed=10)}
        conditions = condition_batch(("slice_position", "previous_slice"), RANGES, 4, asked, 8)
        if pixelcnn.coarse_map is not None:
            conditions["coarse"] = ops.convert_to_numpy(pixelcnn.coarse_map(maps))
        options = {"conditions": asked, "guidance": 2.0}
        whole_inputs = {"codes": maps, **conditions}
        features = pixelcnn.condition_features(conditions)
    drawn = sample_code_maps(pixelcnn, 4, seed=3, **options)
    filtered = sample_code_maps(pixelcnn, 4, seed=3, top_k=3, top_p=0.9, **options)
    replayed, logits = scan_logits(pixelcnn, maps, features)
    whole = np.asarray(pixelcnn(whole_inputs)).reshape(logits.shape)
    return {
        "shape": list(drawn.shape),
        "dtype": str(drawn.dtype),
        "low": int(drawn.min()),
        "high": int(drawn.max()),
        "same_seed_same_maps": bool(
            np.array_equal(sample_code_maps(pixelcnn, 4, seed=3, **options), drawn)
        ),
        "other_seed_other_maps": not np.array_equal(
            sample_code_maps(pixelcnn, 4, seed=4, **options), drawn
        ),
        "filtered_shape": list(filtered.shape),
        "replayed": bool(np.array_equal(replayed, maps)),
        "replay_logit_error": float(np.abs(logits - whole).max()),
    }


def sample(work: Path) -> None:
    keras.utils.set_random_seed(0)
    result = {
        "backend": keras.backend.backend(),
        "masked": sampler_checks(prior("masked"), False),
        "gated": sampler_checks(prior("gated"), False),
        "conditional": sampler_checks(prior("gated", CONDITIONS), True),
        "two_level": sampler_checks(prior("gated", CONDITIONS, coarse_codes=4), True),
        "places": sampler_checks(prior("gated", CONDITIONS, places=True), True),
    }
    constants = np.broadcast_to(np.array([2, 6] * 32)[:, None, None], (64, 8, 8)).copy()
    gated = prior("gated")
    sample_code_maps(gated, 8, seed=0)  # compiled before training: it must see the new weights
    fitted(gated, code_map_batches(constants.astype("int32"), 16, shuffle=True), epochs=30)
    samples = sample_code_maps(gated, 8, seed=0)
    majority = [int(np.bincount(maps.ravel(), minlength=8).argmax()) for maps in samples]
    result["constant_majority_codes"] = sorted(set(majority))
    result["constant_majority_share"] = float(
        np.mean([np.mean(maps == code) for maps, code in zip(samples, majority, strict=True)])
    )
    (work / "sample.json").write_text(json.dumps(result))


def run(work: Path) -> None:
    from conftest import tiny_argv, write_tiny_png_tree

    import train as train_script

    data = write_tiny_png_tree(work / "data")
    settings = TINY.replace(
        encoder_filters=(8, 16), epochs_vqvae=3, epochs_adversarial=2, epochs_pixelcnn=2
    )
    settings = settings.replace(augment=True)

    def mirrored(settings: Hyperparameters, out: str) -> dict:
        argv = tiny_argv(settings, data, work / out, "--strategy", "mirrored")
        return train_script.run_training(train_script.build_parser().parse_args(argv), verbose=0)

    try:  # batches of 7 images do not split over two devices
        mirrored(settings.replace(batch_size=7), "odd")
        refused = ""
    except RunError as error:
        refused = str(error)
    metrics = mirrored(settings, "run")
    losses = {}
    for stage in ("vqvae", "adversarial", "pixelcnn"):
        with open(work / "run" / f"history_{stage}.csv") as history:
            losses[stage] = [float(row["loss"]) for row in csv.DictReader(history)]
    result = {
        "devices": len(keras.distribution.list_devices()),
        "refused": refused,
        "metrics": metrics,
    }
    (work / "run.json").write_text(json.dumps({**result, "losses": losses}))


if __name__ == "__main__":
    command, work = sys.argv[1], Path(sys.argv[2])
    {"train": train, "save": save, "load": load, "run": run, "sample": sample}[command](work)
