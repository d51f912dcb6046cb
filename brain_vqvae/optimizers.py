"""The optimizer every training stage takes: Adam at the stage's learning rate, constant or
decayed along a cosine over the stage's steps. Free of TensorFlow, so that `bench/gpu.py` trains
each stage as `train.py` does on Keras' JAX backend.
"""

from __future__ import annotations

import keras

COSINE_FINAL_FRACTION = 0.05  # a cosine schedule ends at this fraction of the learning rate


def adam(
    learning_rate: float, schedule: str, total_steps: int, beta_1: float = 0.9
) -> keras.optimizers.Adam:
    """Adam at a constant `learning_rate`, or with "cosine" decay over `total_steps` steps:
    lr(t) = lr (0.05 + 0.95 (1 + cos(pi min(t, T) / T)) / 2). The schedule is saved with the
    optimizer, so a resumed run continues it from its step count."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(total_steps, 1), alpha=COSINE_FINAL_FRACTION
        )
    return keras.optimizers.Adam(learning_rate, beta_1=beta_1)
