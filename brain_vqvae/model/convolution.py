"""`OneFilterConv2D`: the decoder's last convolution, to one channel, computed the way that is
fastest on the device that runs it.
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from brain_vqvae.devices import found_device
from brain_vqvae.model.serialization import SERIALIZATION_PACKAGE


@functools.cache
def _on_tensorflow_cpu() -> bool:
    """Whether Keras runs on TensorFlow with no accelerator (asked once per process)."""
    return keras.backend.backend() == "tensorflow" and found_device() == "cpu"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class OneFilterConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D(1, kernel_size, ...)`: the same layer, with the same weights (a
    [kh, kw, C, 1] kernel and a [1] bias) and the same outputs, computed faster on TensorFlow's
    CPU kernels.

    A convolution with one filter is a depthwise convolution summed over the input channels:

        y = b + sum_c (x_c * k_c),   x_c the c-th input channel, k_c = kernel[:, :, c, 0],

    with * the layer's 2-D cross-correlation of one channel. On a CPU TensorFlow runs the
    depthwise convolution and its gradients about twice as fast as its `Conv2D` kernels for a
    single output channel, whose forward and backward pass at 128x128 took a fifth of the
    card's training step (BENCHMARKS.md, "The decoder's output convolution computed
    depthwise"). Elsewhere the layer is a plain `Conv2D`: XLA's CPU depthwise convolution
    (Keras' JAX backend) is many times slower than its convolution, and on a GPU it is not
    measured.

    `OneFilterConv2D(kernel_size, **options)` takes `keras.layers.Conv2D`'s other options.
    """

    def __init__(self, kernel_size, **kwargs):
        super().__init__(1, kernel_size, **kwargs)

    def convolution_op(self, inputs, kernel):
        if not _on_tensorflow_cpu():
            return super().convolution_op(inputs, kernel)
        channels = ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        channel_axis = -1 if self.data_format == "channels_last" else 1
        return ops.sum(channels, axis=channel_axis, keepdims=True)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["filters"]
        return config
