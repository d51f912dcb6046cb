"""The gated PixelCNN network (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders", https://arxiv.org/abs/1606.05328): a vertical and a horizontal stack of
gated layers, without the blind spot of a stack of masked convolutions.

With p = k // 2 for the kernel size k and d a layer's dilation, on features [N, h, w, C]:

    vertical     v' = gate(V * v)          V: (p + 1) x k taps, rows i - p d .. i (d apart),
                                           columns j - p d .. j + p d
    horizontal   h' = h + R gate(H * h + U shift(V * v))
                                           H: 1 x (p + 1) taps, columns j - s - p d .. j - s
                                           (d apart), s = 1 in the first layer, else 0;
                                           shift moves the vertical pre-activations one row
                                           down; U and R are 1x1 (the first layer has no h +)
    gate(a) = tanh(a_f) * sigmoid(a_g)     a = [a_f, a_g] split in two halves of F channels

Row i of the vertical stack sees rows <= i, all columns in reach; the horizontal stack at
(i, j) gets it only from row i - 1 (the shift), and row i only left of j: so the logits at
(i, j) see exactly the codes before (i, j) in raster order that are in reach, with no blind
spot. The dilations cycle through 1, 2, 4, ... (`Hyperparameters.pixelcnn_dilations`), which
puts every earlier position in reach. The logits are a 1x1 convolution of relu(h) to K.

A conditional layer (`conditioned`) adds 1x1 projections of the condition features c
[N, 1 or h, 1 or w, W] (`conditions.ConditionEncoder`) to both pre-activations, as eq. 4-5 of
the paper add V^T h: v' = gate(V * v + C_v c), and H * h + U shift(V * v) + C_h c inside the
horizontal gate. c does not depend on the codes, so the causal structure is unchanged.
"""

from __future__ import annotations

import keras
from keras import ops

from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE
from hyperparameters import Hyperparameters, check_at_least, check_odd_kernel


def gated_activation(preactivations):
    """tanh(a_f) * sigmoid(a_g) for preactivations [..., 2F] = [a_f, a_g] -> [..., F]."""
    filters = ops.shape(preactivations)[-1] // 2
    return ops.tanh(preactivations[..., :filters]) * ops.sigmoid(preactivations[..., filters:])


def shift_down(features):
    """[N, h, w, C] -> the same shape, row i holding row i - 1 and row 0 zeros."""
    return ops.pad(features, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GatedLayer(keras.layers.Layer):
    """One gated layer of both stacks: (v [N, h, w, C], h [N, h, w, C]) -> (v', h'), both
    [N, h, w, filters] (see the module docstring for the maths).

    `first` makes the horizontal convolution exclude the current position (the first layer
    reads the codes themselves) and drops the residual h + (C may differ from `filters`).
    Its convolutions are plain "valid" `Conv2D`s behind explicit causal padding
    (`vertical_padding`, `horizontal_padding`), which the cached sampler reuses on one row.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        dilation: int,
        first: bool,
        conditioned: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_at_least("filters", filters, 1)
        check_at_least("kernel_size", kernel_size, 3)
        check_odd_kernel("kernel_size", kernel_size)
        check_at_least("dilation", dilation, 1)
        self.filters, self.kernel_size = filters, kernel_size
        self.dilation, self.first, self.conditioned = dilation, first, conditioned
        self.reach = kernel_size // 2  # p
        self.vertical = keras.layers.Conv2D(
            2 * filters, (self.reach + 1, kernel_size), dilation_rate=dilation, name="vertical"
        )
        self.horizontal = keras.layers.Conv2D(
            2 * filters, (1, self.reach + 1), dilation_rate=dilation, name="horizontal"
        )
        self.vertical_to_horizontal = keras.layers.Conv2D(2 * filters, 1, name="v_to_h")
        self.residual = keras.layers.Conv2D(filters, 1, name="residual")
        self.condition_to_vertical = self.condition_to_horizontal = None
        if conditioned:
            self.condition_to_vertical = keras.layers.Conv2D(2 * filters, 1, name="c_to_v")
            self.condition_to_horizontal = keras.layers.Conv2D(2 * filters, 1, name="c_to_h")

    @property
    def shift(self) -> int:
        """s: how far left of the current position the horizontal taps start."""
        return 1 if self.first else 0

    def vertical_padding(self, rows: bool = True):
        """ops.pad widths before `vertical`: p d rows on top (`rows`), p d columns each side."""
        span = self.reach * self.dilation
        return ((0, 0), (span if rows else 0, 0), (span, span), (0, 0))

    def horizontal_padding(self):
        """ops.pad widths before `horizontal`: s + p d columns on the left."""
        return ((0, 0), (0, 0), (self.shift + self.reach * self.dilation, 0), (0, 0))

    def build(self, input_shape) -> None:
        channels = input_shape[0][-1]
        self.vertical.build((None, None, None, channels))
        self.horizontal.build((None, None, None, channels))
        self.vertical_to_horizontal.build((None, None, None, 2 * self.filters))
        self.residual.build((None, None, None, self.filters))
        if self.conditioned:
            condition_width = input_shape[2][-1]
            self.condition_to_vertical.build((None, None, None, condition_width))
            self.condition_to_horizontal.build((None, None, None, condition_width))

    def call(self, inputs):
        vertical, horizontal = inputs[:2]
        vertical_pre = self.vertical(ops.pad(vertical, self.vertical_padding()))
        if self.conditioned:
            vertical_pre = vertical_pre + self.condition_to_vertical(inputs[2])
        horizontal_pre = self.horizontal(ops.pad(horizontal, self.horizontal_padding()))
        if self.shift:
            horizontal_pre = horizontal_pre[:, :, : -self.shift]
        horizontal_pre = horizontal_pre + self.vertical_to_horizontal(shift_down(vertical_pre))
        if self.conditioned:
            horizontal_pre = horizontal_pre + self.condition_to_horizontal(inputs[2])
        update = self.residual(gated_activation(horizontal_pre))
        return gated_activation(vertical_pre), update if self.first else horizontal + update

    def compute_output_shape(self, input_shape):
        shape = (*input_shape[0][:-1], self.filters)
        return shape, shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "dilation": self.dilation,
            "first": self.first,
            "conditioned": self.conditioned,
        }


def build_gated_network(hyperparameters: Hyperparameters) -> keras.Model:
    """Code maps as features [N, h, h, C] -> logits [N, h, h, K] (C as in the masked network):
    `pixelcnn_gated_layers` `GatedLayer`s "gated_0", "gated_1", ... of `pixelcnn_filters`
    channels and dilations `pixelcnn_dilations`, both stacks starting from the features; ReLU
    ("relu") and a 1x1 convolution ("logits") of the horizontal stack to K logits.

    With `prior_conditions`, a coarse map (`pixelcnn_coarse_codes`) or the positions
    (`pixelcnn_position_features`), the network takes [code features, condition features c
    [N, 1 or h, 1 or w, `pixelcnn_filters`]] and every layer is conditioned on c."""
    codes, filters = hyperparameters.num_embeddings, hyperparameters.pixelcnn_filters
    code_features = keras.Input(
        (None, None, hyperparameters.pixelcnn_embedding_dim or codes), name="code_features"
    )
    conditioned = bool(
        hyperparameters.condition_names
        or hyperparameters.pixelcnn_coarse_codes
        or hyperparameters.prior_told_positions
    )
    inputs = [code_features]
    if conditioned:
        inputs.append(keras.Input((None, None, filters), name="condition_features"))
    vertical = horizontal = code_features
    for index, dilation in enumerate(hyperparameters.pixelcnn_dilations):
        vertical, horizontal = GatedLayer(
            filters,
            hyperparameters.pixelcnn_gated_kernel,
            dilation,
            first=index == 0,
            conditioned=conditioned,
            name=f"gated_{index}",
        )((vertical, horizontal, *inputs[1:]))
    features = keras.layers.ReLU(name="relu")(horizontal)
    logits = keras.layers.Conv2D(codes, 1, name="logits")(features)
    return keras.Model(inputs if conditioned else code_features, logits, name="pixelcnn_network")
