"""What a conditional PixelCNN prior is told about the map it draws, and how it reads it.

A prior trained with conditions (`Hyperparameters.prior_conditions`, names of
`PRIOR_CONDITIONS`) takes, beside the code maps [N, h, w], for each map and condition c a value
and whether it is known:

    slice_position   the slice's level in its volume, 0 (lowest) .. 1 (highest)    x = v
    age              the subject's age in years                                     x = v / 100
    sex              "F" or "M"                                                     x = 1, 0
    cdr              the clinical dementia rating, 0, 0.5, 1, 2                     x = v / 2
    previous_slice   the code map [h, w] of the slice just below, in the same volume

The scaled values x of the scalar conditions and their known flags m (1 known, 0 not) enter an
MLP, and the previous slice's codes as features e(k) (one-hot vectors of K, or learned
embeddings of E dimensions when the prior embeds its codes), times its flag, with the flag as
one more channel, enter two 3x3 convolutions (the whole map below is known: no mask):

    c = MLP([x * m, m]) [N, 1, 1, W]  +  Conv(Conv([e(k_prev) m_prev, m_prev])) [N, h, w, W]

A prior told the positions (`pixelcnn_position_features`) gives the MLP each code's place too,
its row and column scaled to (i + 1/2) / h and (j + 1/2) / w, so that the MLP's features vary
over the map and can depend on the level and the place together (where the brain ends at a
level); with no scalar condition it reads the place alone:

    c = MLP([x * m, m, (i + 1/2) / h, (j + 1/2) / w]) [N, h, w, W]  +  ...

The fine level of a two-level prior (`coarse`) also reads its whole coarse map u [N, h/f, w/f]
(always known): learned embeddings of its codes, each repeated over its f x f block, through
two 3x3 convolutions, added to c as Conv(Conv(repeat_f(a(u)))) [N, h, w, W].

An unknown condition reads as zeros and a zero flag, so the network's biases are its learned
"unknown" (training hides conditions at random, `PixelCNN._hide_conditions`). Every
gated layer adds 1x1 projections of c to both stacks' pre-activations (`GatedLayer`), as the
conditional PixelCNN of van den Oord et al. 2016 (eq. 4-5) adds V^T h. The condition features
do not depend on the map being drawn, so the prior stays causal in its codes.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from hyperparameters import COARSE_FACTOR, PRIOR_CONDITIONS, SCALAR_CONDITIONS

SEXES = ("M", "F")  # encoded as their index: M = 0, F = 1
CONDITION_SCALES = {"slice_position": 1.0, "age": 100.0, "sex": 1.0, "cdr": 2.0}
CONDITION_UNITS = {"slice_position": "", "age": " years", "sex": "", "cdr": ""}


def encode_condition(name: str, value) -> float:
    """A scalar condition's raw value (a float, or "F"/"M" for sex) -> its network input x."""
    if name == "sex":
        text = str(value).strip().upper()
        if text not in SEXES:
            raise ValueError(f"sex must be one of {', '.join(SEXES)}, got {value!r}")
        return float(SEXES.index(text))
    return float(value) / CONDITION_SCALES[name]


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ConditionEncoder(keras.layers.Layer):
    """The condition features c of the module docstring: inputs (values [N, C], known [N, C],
    previous codes [N, h, w] or None) for the C = len(`names`) conditions in `names`' order
    (the previous slice's value column is unused) -> c [N, 1, 1, W] without "previous_slice",
    [N, h, w, W] with it. With `embedding_dim` E > 0 the previous slice's codes are embedded
    (E learned dimensions per code), else one-hot (K = `num_embeddings` channels). With
    `coarse_codes` C > 0 it also takes the coarse map [N, h / f, w / f] (f = `coarse_factor`;
    `names` may then be empty) and c is [N, h, w, W]. With `map_size` h > 0 the MLP also
    reads each position's place in an h x h map (`names` may then be empty) and c is
    [N, h, h, W]."""

    def __init__(
        self,
        names,
        num_embeddings: int,
        width: int,
        embedding_dim: int = 0,
        coarse_codes: int = 0,
        coarse_factor: int = COARSE_FACTOR,
        map_size: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.names = tuple(names)
        unknown = [name for name in self.names if name not in PRIOR_CONDITIONS]
        if unknown or not (self.names or coarse_codes or map_size):
            raise ValueError(f"names must be some of {PRIOR_CONDITIONS}, got {self.names}")
        self.num_embeddings, self.width = int(num_embeddings), int(width)
        self.embedding_dim = int(embedding_dim)
        self.coarse_codes, self.coarse_factor = int(coarse_codes), int(coarse_factor)
        self.map_size = int(map_size)
        self.coarse_embedding = self.coarse_hidden = self.coarse_out = None
        if self.coarse_codes:
            self.coarse_embedding = keras.layers.Embedding(
                self.coarse_codes, width, name="coarse_embedding"
            )
            self.coarse_hidden = keras.layers.Conv2D(
                width, 3, padding="same", activation="swish", name="coarse_hidden"
            )
            self.coarse_out = keras.layers.Conv2D(width, 3, padding="same", name="coarse_out")
        self.scalar_columns = [i for i, name in enumerate(self.names) if name in SCALAR_CONDITIONS]
        self.previous_column = (
            self.names.index("previous_slice") if "previous_slice" in self.names else None
        )
        self.scalar_hidden = self.scalar_out = self.previous_hidden = self.previous_out = None
        self.previous_embedding = None
        if self.scalar_columns or self.map_size:
            self.scalar_hidden = keras.layers.Dense(width, activation="swish", name="scalar_hidden")
            self.scalar_out = keras.layers.Dense(width, name="scalar_out")
        if self.previous_column is not None:
            if self.embedding_dim:
                self.previous_embedding = keras.layers.Embedding(
                    self.num_embeddings, self.embedding_dim, name="previous_embedding"
                )
            self.previous_hidden = keras.layers.Conv2D(
                width, 3, padding="same", activation="swish", name="previous_hidden"
            )
            self.previous_out = keras.layers.Conv2D(width, 3, padding="same", name="previous_out")

    def build(self, input_shape=None) -> None:
        if self.scalar_hidden is not None:
            places = 2 if self.map_size else 0
            self.scalar_hidden.build((None, 2 * len(self.scalar_columns) + places))
            self.scalar_out.build((None, self.width))
        if self.previous_column is not None:
            if self.previous_embedding is not None:
                self.previous_embedding.build()
            channels = self.embedding_dim or self.num_embeddings
            self.previous_hidden.build((None, None, None, channels + 1))
            self.previous_out.build((None, None, None, self.width))
        if self.coarse_codes:
            self.coarse_embedding.build()
            self.coarse_hidden.build((None, None, None, self.width))
            self.coarse_out.build((None, None, None, self.width))
        self.built = True

    def call(self, values, known, previous=None, coarse=None):
        known = ops.cast(known, "float32")
        features = 0.0
        if self.scalar_hidden is not None:
            columns = np.array(self.scalar_columns, dtype="int32")
            scalar_known = ops.take(known, columns, axis=1)
            scalars = ops.take(ops.cast(values, "float32"), columns, axis=1) * scalar_known
            inputs = ops.concatenate([scalars, scalar_known], axis=-1)[:, None, None, :]
            if self.map_size:
                inputs = self.with_places(inputs)
            features = self.scalar_out(self.scalar_hidden(inputs))
        if self.previous_column is not None:
            flag = known[:, self.previous_column][:, None, None, None]
            previous = ops.cast(previous, "int32")
            if self.previous_embedding is None:
                codes = ops.one_hot(previous, self.num_embeddings) * flag
            else:
                codes = self.previous_embedding(previous) * flag
            flags = ops.ones_like(codes[..., :1]) * flag
            hidden = self.previous_hidden(ops.concatenate([codes, flags], axis=-1))
            features = features + self.previous_out(hidden)
        if self.coarse_codes:
            blocks = self.coarse_embedding(ops.cast(coarse, "int32"))
            factor = self.coarse_factor
            blocks = ops.repeat(ops.repeat(blocks, factor, axis=1), factor, axis=2)
            features = features + self.coarse_out(self.coarse_hidden(blocks))
        return features

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "names": list(self.names),
            "num_embeddings": self.num_embeddings,
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            "coarse_codes": self.coarse_codes,
            "coarse_factor": self.coarse_factor,
            "map_size": self.map_size,
        }

    def with_places(self, inputs):
        """Scalar inputs [N, 1, 1, S] (S may be 0) -> [N, h, h, S + 2]: each position's
        (row, column) as ((i + 1/2) / h, (j + 1/2) / h) after its S inputs."""
        size = self.map_size
        centres = (np.arange(size, dtype="float32") + 0.5) / size
        rows, columns = np.meshgrid(centres, centres, indexing="ij")
        places = np.stack([rows, columns], axis=-1)[None]  # [1, h, h, 2]
        batch = ops.shape(inputs)[0]
        inputs = ops.broadcast_to(inputs, (batch, size, size, inputs.shape[-1]))
        return ops.concatenate([inputs, ops.broadcast_to(places, (batch, size, size, 2))], -1)


def condition_batch(
    names: tuple[str, ...],
    ranges: dict,
    count: int,
    requested: dict | None,
    code_map_size: int,
    num_embeddings: int | None = None,
) -> dict[str, np.ndarray]:
    """The prior's condition inputs for `count` maps from the conditions a user asks for.

    `requested` maps condition names to one value for every map or a sequence of `count`
    values (`previous_slice`: code maps [count, h, w] or one [h, w], codes below
    `num_embeddings` when given); a condition left out is
    unknown. A name the prior was not trained with, a value outside the training `ranges`
    ({name: [low, high]}, or the sexes seen) or of the wrong shape raises `ValueError` naming
    it. Returns {"values": [count, C] float32, "known": [count, C] float32, "previous":
    [count, h, w] int32 (zeros where unknown)} for the C = len(`names`) conditions.
    """
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(names))
    if unknown:
        trained = ", ".join(names) if names else "none"
        raise ValueError(
            f"the prior was not trained with condition(s) {', '.join(unknown)} "
            f"(its conditions: {trained})"
        )
    values = np.zeros((count, len(names)), dtype="float32")
    known = np.zeros((count, len(names)), dtype="float32")
    previous = np.zeros((count, code_map_size, code_map_size), dtype="int32")
    for column, name in enumerate(names):
        if name not in requested or requested[name] is None:
            continue
        known[:, column] = 1.0
        if name == "previous_slice":
            previous[:] = _previous_maps(requested[name], count, code_map_size, num_embeddings)
            continue
        raw = np.asarray(requested[name], dtype=object).reshape(-1)
        if len(raw) not in (1, count):
            raise ValueError(f"{name} needs one value or {count}, got {len(raw)}")
        for value in set(raw.tolist()):
            check_in_range(name, value, ranges.get(name))
        values[:, column] = [encode_condition(name, value) for value in raw]
    return {"values": values, "known": known, "previous": previous}


def guidance_stages(
    known: np.ndarray, names: tuple[str, ...], guidance: float | dict[str, float]
) -> tuple[list[np.ndarray], list[float]]:
    """The "known" flags [count, C] of each pass of a guided draw and the weight of each step
    between passes (`sampler.guided_logits`).

    Every scalar condition asked (known in `known`, the "known" of a `condition_batch` for the
    prior's `names`) has a weight w_c: `guidance` itself, or `guidance[c]` from a dict (1 for
    a condition it does not name). With the distinct weights in ascending order w_1 < ... <
    w_S, pass 0 hides every asked scalar condition (the slice below stays known, so guidance
    strengthens the asked values, not the copying of the slice below), pass s shows those with
    w_c <= w_s, and pass S is `known` itself. When w_1 = 1 the first step, l_0 + (l_1 - l_0),
    is l_1 itself: pass 1 becomes the first and that step goes, one pass fewer for the
    same logits. Returns ([known], []) for a plain draw: nothing asked, or every asked weight
    1."""
    asked = {
        column: guidance.get(name, 1.0) if isinstance(guidance, dict) else guidance
        for column, name in enumerate(names)
        if name in SCALAR_CONDITIONS and known[:, column].any()
    }
    weights = sorted(set(asked.values()))
    limits = [-np.inf, *weights]
    if weights[:1] == [1.0]:
        limits, weights = limits[1:], weights[1:]
    if not weights:
        return [known], []
    passes = []
    for limit in limits:
        hidden = [column for column, weight in asked.items() if weight > limit]
        flags = known.copy()
        flags[:, hidden] = 0.0
        passes.append(flags)
    return passes, [float(weight) for weight in weights]


def check_in_range(name: str, value, seen) -> None:
    """`ValueError` unless `value` lies within what the training data held for `name`."""
    if name == "sex":
        encode_condition(name, value)
        if seen and str(value).strip().upper() not in seen:
            raise ValueError(f"sex {value!r}: the run was trained only on {', '.join(seen)}")
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    low, high = seen if seen else (-np.inf, np.inf)
    if not np.isfinite(number) or not low <= number <= high:
        unit = CONDITION_UNITS[name]
        raise ValueError(
            f"{name} {value}{unit} is outside what the run was trained on: "
            f"{low:g} to {high:g}{unit}"
        )


def _previous_maps(maps, count: int, size: int, codes: int | None) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.shape == (size, size):
        maps = np.broadcast_to(maps, (count, size, size))
    if maps.shape != (count, size, size) or not np.issubdtype(maps.dtype, np.integer):
        raise ValueError(
            f"previous_slice must be integer code maps ({count}, {size}, {size}) or one "
            f"({size}, {size}), got {maps.dtype} {maps.shape}"
        )
    if maps.size and (maps.min() < 0 or (codes is not None and maps.max() >= codes)):
        raise ValueError(
            f"previous_slice codes must be in [0, {codes}), got [{maps.min()}, {maps.max()}]"
        )
    return maps.astype("int32")
