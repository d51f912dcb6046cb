"""Stage 2 of the model: the PixelCNN prior over code maps (van den Oord et al. 2016), whose
network is built from causally masked convolutions (here) or from gated vertical and horizontal
stacks (`gated_prior`), as `pixelcnn_architecture` says (see `modules` for the maths).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from brain_vqvae.model.coarse import CoarseMap
from brain_vqvae.model.conditions import ConditionEncoder
from brain_vqvae.model.distribute import (
    apply_to_rows,
    batch_share,
    replica_sum,
    step_logs,
    weighted_by_share,
)
from brain_vqvae.model.gated_prior import build_gated_network
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from brain_vqvae.model.steps import TrainingStepModel
from hyperparameters import (
    COARSE_FACTOR,
    Hyperparameters,
    check_odd_kernel,
    coarse_prior_hyperparameters,
)

PIXELCNN_METRICS = ("loss", "accuracy")
COARSE_METRICS = ("coarse_loss", "coarse_accuracy")  # a two-level prior's coarse prior
BLOCK_PARTS = ("reduce", "masked", "expand")  # the layers of `pixelcnn_residual_block`, in order


def causal_mask(
    kernel_size: tuple[int, int], in_channels: int, out_channels: int, mask_type: str
) -> np.ndarray:
    """The [kh, kw, in, out] 0/1 mask of a masked convolution, for raster order.

    Ones on every row above the centre and left of the centre on its row; the centre itself is
    1 for type "B" and 0 for type "A". All channels at one position belong to the same code, so
    the mask is the same for every (in, out) pair. For a 3x3 kernel, type A is
    [[1, 1, 1], [1, 0, 0], [0, 0, 0]] and type B [[1, 1, 1], [1, 1, 0], [0, 0, 0]].
    """
    rows, columns = kernel_size
    centre_row, centre_column = rows // 2, columns // 2
    mask = np.zeros((rows, columns, in_channels, out_channels), dtype="float32")
    mask[:centre_row] = 1.0
    mask[centre_row, :centre_column] = 1.0
    if mask_type == "B":
        mask[centre_row, centre_column] = 1.0
    return mask


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MaskedConv2D(keras.layers.Conv2D):
    """A 'same'-padded, stride-1 `Conv2D` whose kernel is multiplied by `causal_mask` in every
    call (the stored kernel itself is never masked), so the output at (i, j) sees only inputs
    before (i, j) in raster order (type "A") or at and before it (type "B").
    """

    def __init__(self, mask_type: str, filters: int, kernel_size, **kwargs):
        if mask_type not in ("A", "B"):
            raise ValueError(f'mask_type must be "A" or "B", got {mask_type!r}')
        super().__init__(filters, kernel_size, **{"padding": "same", **kwargs})
        if (
            self.padding != "same"
            or self.strides != (1, 1)
            or self.dilation_rate != (1, 1)
            or self.groups != 1
            or self.data_format != "channels_last"
        ):
            raise ValueError(
                "MaskedConv2D needs padding='same', strides 1, dilation 1, groups 1 and "
                "channels_last data, so that output (i, j) is aligned with input (i, j)"
            )
        check_odd_kernel("kernel_size", self.kernel_size)
        self.mask_type = mask_type

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.mask = causal_mask(self.kernel_size, input_shape[-1], self.filters, self.mask_type)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * self.mask)

    def get_config(self) -> dict:
        return {**super().get_config(), "mask_type": self.mask_type}


def pixelcnn_residual_block(features, name: str):
    """van den Oord et al. 2016 (fig. 5): x + relu(1x1(relu(3x3 mask B(relu(1x1(x)))))), with
    the hidden width half of x's."""
    filters = features.shape[-1]
    reduce, masked, expand = (f"{name}_{part}" for part in BLOCK_PARTS)
    hidden = keras.layers.Conv2D(filters // 2, 1, activation="relu", name=reduce)(features)
    hidden = MaskedConv2D("B", filters // 2, 3, activation="relu", name=masked)(hidden)
    hidden = keras.layers.Conv2D(filters, 1, activation="relu", name=expand)(hidden)
    return keras.layers.Add(name=f"{name}_add")([features, hidden])


def build_masked_network(hyperparameters: Hyperparameters) -> keras.Model:
    """Code maps as features [N, h, h, C] -> logits [N, h, h, K], where C = K for one-hot codes
    and C = `pixelcnn_embedding_dim` for embedded ones (`PixelCNN.code_features`).

    7x7 mask-A convolution (ReLU), `pixelcnn_residual_blocks` residual blocks with a 1x1
    mask-B convolution (ReLU) between each pair (R, B, R, B, R, B, R for 4 blocks), ReLU, and a
    1x1 convolution to K logits.
    """
    codes, filters = hyperparameters.num_embeddings, hyperparameters.pixelcnn_filters
    code_features = keras.Input(
        (None, None, hyperparameters.pixelcnn_embedding_dim or codes), name="code_features"
    )
    features = MaskedConv2D(
        "A", filters, hyperparameters.pixelcnn_first_kernel, activation="relu", name="mask_a"
    )(code_features)
    for index in range(hyperparameters.pixelcnn_residual_blocks):
        if index > 0:
            features = MaskedConv2D("B", filters, 1, activation="relu", name=f"mask_b_{index}")(
                features
            )
        features = pixelcnn_residual_block(features, name=f"residual_{index}")
    features = keras.layers.ReLU(name="relu")(features)
    logits = keras.layers.Conv2D(codes, 1, name="logits")(features)
    return keras.Model(code_features, logits, name="pixelcnn_network")


NETWORK_BUILDERS = {"masked": build_masked_network, "gated": build_gated_network}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class PixelCNN(TrainingStepModel):
    """Autoregressive prior over code maps: int code maps [N, h, h] -> logits [N, h, h, K].

    `PixelCNN(hyperparameters)` takes the plain dict of `Hyperparameters.to_dict()` (the whole
    config); its network is `build_masked_network` or `build_gated_network`, as
    `pixelcnn_architecture` says (a config without that key is masked: `from_dict`). Either
    makes the logits at (i, j) depend only on the codes before (i, j) in raster order.

    A prior with `prior_conditions` (gated only) takes a dict instead of the maps: {"codes":
    [N, h, h] int, "values": [N, C] float, "known": [N, C] 0/1 float, and with "previous_slice"
    "previous": [N, h, h] int} for its C conditions (`conditions.condition_batch` makes one;
    `conditions` has the maths). `condition_ranges` ({name: [low, high]}, for sex the values
    seen) records what the training data held, so that a request outside it can be refused.
    A configuration still saying "auto" (resolved from the data only when training,
    `conditioning.resolve_prior_conditions`) builds an unconditional prior.

    It is trained by its own training step (`step_loss`, `record`): compile it with an
    optimizer and `fit` it on batches of code maps (a conditional prior: of `pack_prior_inputs`
    rows), whose codes are also the targets (a y given is ignored); a conditional prior hides
    known conditions at random (`_hide_conditions`), and with `prior_input_noise` any prior reads
    its own maps blurred (`_blur_own_codes`). The loss is the mean over every position
    of every map of the cross-entropy -log softmax(logits(i, j))[k(i, j)] (nats per code);
    "accuracy" is the share of positions whose most likely code is k(i, j). Under a
    `tf.distribute` strategy both are weighted by each replica's share of the global batch, as
    in `VQVAE`. (A batch of maps alone, not (maps, maps), is also what Keras 3 can hand to
    several workers of a `MultiWorkerMirroredStrategy`: it fails to reduce (x, y) batches.)

    A two-level prior (`pixelcnn_coarse_codes` C > 0, `coarse`) holds its coarse level:
    `coarse_map` (a `CoarseMap`) summarises a map as a coarse map u = coarse(z), `coarse_prior`
    (a `PixelCNN` of `coarse_prior_hyperparameters`, with the same conditions, the slice below
    coarsened too) models p(u | conditions), and this prior models p(z | u, conditions): u is
    one more input of its condition features, "coarse" in the dict (computed from the codes
    when absent, as in training). Both are trained together on the sum of their cross-entropies
    per fine code, -log p(u) / f^2 - log p(z | u) averaged over the h h codes of a map, an upper
    bound of -log p(z) per code since u is a function of z ("loss"); "accuracy" is the fine
    level's, "coarse_loss" and "coarse_accuracy" the coarse prior's own (per coarse code).
    """

    def __init__(self, hyperparameters: dict, condition_ranges: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = Hyperparameters.from_dict(hyperparameters)
        if self.hyperparameters.prior_conditions == "auto":  # no data to resolve it: none
            self.hyperparameters = self.hyperparameters.replace(prior_conditions="none")
        self.condition_ranges = dict(condition_ranges or {})
        self.network = NETWORK_BUILDERS[self.hyperparameters.pixelcnn_architecture](
            self.hyperparameters
        )
        embedding_dim = self.hyperparameters.pixelcnn_embedding_dim
        self.code_embedding = None
        if embedding_dim:
            self.code_embedding = keras.layers.Embedding(
                self.num_embeddings, embedding_dim, name="code_embedding"
            )
            self.code_embedding.build()
        coarse_codes = self.hyperparameters.pixelcnn_coarse_codes
        self.coarse_map = self.coarse_prior = self.condition_encoder = None
        if coarse_codes:
            latent_dim = self.hyperparameters.latent_dim
            self.coarse_map = CoarseMap(
                self.num_embeddings, latent_dim, coarse_codes, name="coarse_map"
            )
            self.coarse_map.build()
            coarse = coarse_prior_hyperparameters(self.hyperparameters)
            self.coarse_prior = PixelCNN(coarse.to_dict(), condition_ranges, name="coarse_prior")
            self.coarse_prior(np.zeros((1, coarse.code_map_size, coarse.code_map_size), "int32"))
        positions = self.hyperparameters.prior_told_positions
        if self.condition_names or coarse_codes or positions:
            self.condition_encoder = ConditionEncoder(
                self.condition_names,
                self.num_embeddings,
                self.hyperparameters.pixelcnn_filters,
                embedding_dim=(
                    embedding_dim if self.hyperparameters.pixelcnn_embed_previous_slice else 0
                ),
                coarse_codes=coarse_codes,
                map_size=self.code_map_size if positions else 0,
                name="condition_encoder",
            )
            self.condition_encoder.build()
            self.condition_dropout_seed = keras.random.SeedGenerator(self.hyperparameters.seed)
        self.input_noise_seed = None  # a variable of its own only where the maps are blurred
        if self.hyperparameters.prior_input_noise:
            self.input_noise_seed = keras.random.SeedGenerator(self.hyperparameters.seed + 1)
        metrics = PIXELCNN_METRICS + (COARSE_METRICS if coarse_codes else ())
        self.trackers = [keras.metrics.Mean(name=name) for name in metrics]
        self.built = True  # every weight exists once the network is made

    @property
    def metrics(self) -> list:
        return self.trackers

    @property
    def code_map_size(self) -> int:
        return self.hyperparameters.code_map_size

    @property
    def num_embeddings(self) -> int:
        return self.hyperparameters.num_embeddings

    @property
    def condition_names(self) -> tuple[str, ...]:
        return self.hyperparameters.condition_names

    def code_features(self, codes):
        """Integer codes [...] -> the network's input features [..., C]: one-hot vectors
        (C = K) or, with `pixelcnn_embedding_dim` E, learned embeddings (C = E)."""
        codes = ops.cast(codes, "int32")
        if self.code_embedding is None:
            return ops.one_hot(codes, self.num_embeddings)
        return self.code_embedding(codes)

    def condition_features(self, inputs):
        """The condition features c [N, 1 or h, 1 or w, F] of a conditional prior's dict
        `inputs` (`ConditionEncoder`); a two-level prior's are [N, h, w, F] and read the
        coarse map `inputs["coarse"]`."""
        return self.condition_encoder(
            inputs["values"], inputs["known"], inputs.get("previous"), inputs.get("coarse")
        )

    def with_coarse_map(self, inputs) -> dict:
        """A conditional or two-level prior's dict of `inputs` (code maps alone: every
        condition unknown), with a two-level prior's coarse map of its codes ("coarse",
        unless given) and of the slice below ("coarse_previous")."""
        if not isinstance(inputs, dict):
            inputs = unknown_conditions(inputs, len(self.condition_names))
        if self.coarse_map is None:
            return inputs
        inputs = dict(inputs)
        if "coarse" not in inputs:
            inputs["coarse"] = self.coarse_map(inputs["codes"])
        if "previous_slice" in self.condition_names and "coarse_previous" not in inputs:
            inputs["coarse_previous"] = self.coarse_map(inputs["previous"])
        return inputs

    def coarse_inputs(self, inputs: dict):
        """The coarse prior's inputs for a two-level prior's (`with_coarse_map`): the coarse
        maps, with the same conditions and the slice below coarsened when it has any."""
        if self.coarse_prior.condition_encoder is None:
            return inputs["coarse"]
        coarse = {"codes": inputs["coarse"], "values": inputs["values"], "known": inputs["known"]}
        if "coarse_previous" in inputs:
            coarse["previous"] = inputs["coarse_previous"]
        return coarse

    def call(self, inputs):
        if self.condition_encoder is None:
            return apply_to_rows(self.network, self.code_features(inputs))
        inputs = self.with_coarse_map(inputs)
        code_features = self.code_features(inputs["codes"])
        return apply_to_rows(self.network, [code_features, self.condition_features(inputs)])

    def _hide_conditions(self, inputs):
        """`inputs` with conditions hidden (known = 0): with probability p =
        `condition_dropout` all of a map's, otherwise each scalar one with probability p and
        the slice below with q = `previous_slice_dropout`, so that the prior learns p(z) with
        nothing known (on about p of the maps) as well as any subset, among them the level
        without the slice below (as a slice asked for at a level is drawn: (1 - p)^2 q of the
        maps);
        and each code of a known previous slice replaced by a random code with probability
        `previous_slice_noise`, so that the prior learns to draw a slice that fits the one
        below without copying it (a volume drawn slice by slice would otherwise repeat its
        own small errors up the stack). A two-level prior whose `fine_previous_slice_noise`
        differs gives its coarse level the coarse map of the slice below so blurred
        ("coarse_previous") and its fine level the slice below blurred with that probability
        instead."""
        hyperparameters = self.hyperparameters
        rate = hyperparameters.condition_dropout
        known = inputs["known"]
        rows = ops.shape(known)[0]
        seed = self.condition_dropout_seed
        keep_map = keras.random.uniform((rows, 1), seed=seed) >= rate
        rates = [
            hyperparameters.previous_slice_dropout if name == "previous_slice" else rate
            for name in self.condition_names
        ]
        keep_each = keras.random.uniform(ops.shape(known), seed=seed) >= np.array(
            rates, dtype="float32"
        )
        inputs = {**inputs, "known": known * ops.cast(keep_map & keep_each, "float32")}
        if "previous_slice" not in self.condition_names:
            return inputs
        below, noise = inputs["previous"], hyperparameters.previous_slice_noise
        inputs["previous"] = randomize_codes(below, noise, self.num_embeddings, seed)
        fine_noise = hyperparameters.fine_previous_slice_noise
        if self.coarse_map is not None and fine_noise != noise:
            inputs["coarse_previous"] = self.coarse_map(inputs["previous"])
            inputs["previous"] = randomize_codes(below, fine_noise, self.num_embeddings, seed)
        return inputs

    def _blur_own_codes(self, inputs):
        """`inputs` with each code of the maps the prior reads replaced by a random code with
        probability r = `prior_input_noise` (`randomize_codes`). The targets stay the clean
        codes k(i, j), so the prior learns p(k(i, j) | the codes before it, each a stray code
        with probability r): to go on drawing what the map should hold after a code that does
        not belong, as it must when it draws each code after its own earlier draws. A
        two-level prior's coarse map is made from the clean codes before (`with_coarse_map`),
        as the coarse level is drawn first."""
        rate, seed = self.hyperparameters.prior_input_noise, self.input_noise_seed
        if not isinstance(inputs, dict):
            return randomize_codes(inputs, rate, self.num_embeddings, seed)
        return {
            **inputs,
            "codes": randomize_codes(inputs["codes"], rate, self.num_embeddings, seed),
        }

    def _loss_and_accuracy(self, inputs, training: bool) -> dict:
        if self.condition_encoder is not None:
            if not isinstance(inputs, dict):
                inputs = unknown_conditions(inputs, len(self.condition_names))
            if training:
                inputs = self._hide_conditions(inputs)
            inputs = self.with_coarse_map(inputs)  # the slice below coarsened once blurred
        code_maps = ops.cast(_code_maps(inputs), "int32")
        read = inputs
        if training and self.input_noise_seed is not None:
            read = self._blur_own_codes(inputs)
        values = cross_entropy_and_accuracy(code_maps, self(read, training=training))
        if self.coarse_prior is not None:
            coarse = cross_entropy_and_accuracy(
                ops.cast(inputs["coarse"], "int32"),
                self.coarse_prior(self.coarse_inputs(inputs), training=training),
            )
            values = {
                "loss": values["loss"] + coarse["loss"] / COARSE_FACTOR**2,
                "accuracy": values["accuracy"],
                "coarse_loss": coarse["loss"],
                "coarse_accuracy": coarse["accuracy"],
            }
        return values

    def unpack(self, inputs):
        """A training batch as the model reads it: code maps as they are; a conditional
        prior's packed rows [B, 2 h h + 2 C] (`pack_prior_inputs`) as its dict."""
        if self.condition_encoder is None or len(inputs.shape) != 2:
            return inputs
        size, conditions = self.code_map_size, len(self.condition_names)
        maps = size * size

        def code_maps(columns):
            return ops.reshape(ops.cast(inputs[:, columns], "int32"), (-1, size, size))

        return {
            "codes": code_maps(slice(0, maps)),
            "previous": code_maps(slice(maps, 2 * maps)),
            "values": inputs[:, 2 * maps : 2 * maps + conditions],
            "known": inputs[:, 2 * maps + conditions :],
        }

    def step_loss(self, data, training: bool):
        """The loss of a batch of code maps (or packed rows) and the values `record` reports
        (`steps`): this replica's share of the global-batch means, as in `VQVAE.step_loss`."""
        inputs = self.unpack(keras.utils.unpack_x_y_sample_weight(data)[0])
        share = batch_share(_code_maps(inputs))
        values = self._loss_and_accuracy(inputs, training=training)
        weighted = {name: weighted_by_share(value, share) for name, value in values.items()}
        return weighted["loss"], weighted

    def record(self, report: dict) -> dict:
        """Track the step's loss and accuracy, summed over the replicas: global-batch means."""
        for tracker in self.trackers:
            tracker.update_state(replica_sum(report[tracker.name]))
        return step_logs({tracker.name: tracker.result() for tracker in self.trackers})

    def get_config(self) -> dict:
        config = {"name": self.name, "hyperparameters": self.hyperparameters.to_dict()}
        if self.condition_ranges:
            config["condition_ranges"] = self.condition_ranges
        return config


def cross_entropy_and_accuracy(code_maps, logits) -> dict:
    """{"loss": the mean over every position of -log softmax(logits)[k] (nats per code),
    "accuracy": the share of positions whose most likely code is k} for int code maps k
    [N, h, w] and logits [N, h, w, K]."""
    cross_entropy = keras.losses.sparse_categorical_crossentropy(
        code_maps, logits, from_logits=True
    )
    hits = ops.cast(ops.argmax(logits, axis=-1) == code_maps, "float32")
    return {"loss": ops.mean(cross_entropy), "accuracy": ops.mean(hits)}


def pack_prior_inputs(code_maps: np.ndarray, conditions: dict[str, np.ndarray]) -> np.ndarray:
    """Code maps [N, h, h] and their conditions ({"values", "known": [N, C], "previous":
    [N, h, h]}, `conditioning.slice_conditions`) as one float32 array [N, 2 h h + 2 C] of rows
    [codes, previous codes, values, known], what a conditional prior is `fit` on
    (`PixelCNN.unpack`): Keras 3 cannot hand a dict of tensors to the workers of a
    `MultiWorkerMirroredStrategy`, one tensor it can. Codes below 2**24 are exact in float32."""
    rows = len(code_maps)
    return np.concatenate(
        [
            np.reshape(code_maps, (rows, -1)),
            np.reshape(conditions["previous"], (rows, -1)),
            conditions["values"],
            conditions["known"],
        ],
        axis=1,
    ).astype("float32")


def randomize_codes(code_maps, rate: float, num_embeddings: int, seed):
    """`code_maps` [N, h, w] (int32) with each code replaced, with probability `rate`, by a
    code drawn uniformly from the `num_embeddings` (which is the old one 1 time in K):
    how the slice below is blurred when the prior trains (`PixelCNN._hide_conditions`), and
    when a volume is drawn on it (`generation.sample_volumes`). `seed`: a
    `keras.random.SeedGenerator` (an int seed would draw both from the same numbers)."""
    code_maps = ops.cast(code_maps, "int32")
    replaced = keras.random.uniform(ops.shape(code_maps), seed=seed) < rate
    random_codes = keras.random.randint(
        ops.shape(code_maps), 0, num_embeddings, seed=seed, dtype="int32"
    )
    return ops.where(replaced, random_codes, code_maps)


def _code_maps(inputs):
    """The code maps [N, h, h] of a prior's inputs: the maps, or a conditional dict's "codes"."""
    return inputs["codes"] if isinstance(inputs, dict) else inputs


def unknown_conditions(code_maps, conditions: int) -> dict:
    """A conditional prior's inputs for `code_maps` [N, h, h] with all of its `conditions`
    unknown: what it reads when called on code maps alone (the unconditional p(z))."""
    code_maps = ops.cast(code_maps, "int32")
    unknown = ops.zeros((ops.shape(code_maps)[0], conditions), dtype="float32")
    return {"codes": code_maps, "values": unknown, "known": unknown, "previous": code_maps * 0}


def build_pixelcnn(
    hyperparameters: Hyperparameters,
    condition_ranges: dict | None = None,
    training_maps: np.ndarray | None = None,
    code_vectors: np.ndarray | None = None,
) -> PixelCNN:
    """A `PixelCNN` for `hyperparameters` (and the training data's `condition_ranges`), its
    weights built by a call on a dummy batch. A two-level prior fits its `CoarseMap` to the
    `training_maps` [N, h, h] and the VQ-VAE's `code_vectors` [K, D] when both are given (as
    training does); without them every block reads as coarse code 0 (an untrained prior's
    speed is the same)."""
    model = PixelCNN(hyperparameters.to_dict(), condition_ranges, name="pixelcnn")
    size = hyperparameters.code_map_size
    model(np.zeros((1, size, size), dtype="int32"))
    if model.coarse_map is not None and training_maps is not None and code_vectors is not None:
        model.coarse_map.fit(training_maps, code_vectors, seed=hyperparameters.seed)
    return model
