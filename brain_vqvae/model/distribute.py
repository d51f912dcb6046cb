"""Running the models under a `tf.distribute` strategy: sums over the replicas, each replica's
share of the global batch, batches of any size (an empty one included), and step logs Keras can
reduce over several workers.

Under a strategy each replica gets its part of the global batch, n_r of N rows. A replica's
mean weighted by n_r / N and summed over the replicas is the global-batch mean, however unevenly
the batch was split; the models' training steps differentiate and report such weighted means.

Replicas exist only on Keras' TensorFlow backend. On the JAX backend a step sees the whole global
batch as one array (`keras.distribution.DataParallel` shards it over the devices, and JAX
computes its means over all of them), so there is one "replica" holding all N rows: every sum
over the replicas here is the value itself and every share is 1. TensorFlow is imported only on
its own backend.
"""

from __future__ import annotations

import keras
from keras import ops

TENSORFLOW = keras.backend.backend() == "tensorflow"
if TENSORFLOW:
    import tensorflow as tf


def replica_sum(value):
    """`value` summed over the replicas of a `tf.distribute` strategy (an all-reduce inside
    `strategy.run`, i.e. in a compiled `train_step`, `test_step` or `predict_step`); `value`
    itself without a strategy, with one replica, outside a replica context, or on JAX."""
    if not TENSORFLOW:
        return value
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_id():
    """This replica's index in its strategy's replicas (an int or a scalar int32 tensor); 0
    without a strategy, outside a replica context, or on JAX."""
    if not TENSORFLOW:
        return 0
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def batch_share(batch):
    """n / N: the share of the global batch this replica holds, with n its rows (the first axis
    of `batch`) and N = sum of n over the replicas; 1 without a strategy. Scalar float32."""
    count = ops.cast(ops.shape(batch)[0], "float32")
    return count / replica_sum(count)


def weighted_by_share(mean, share):
    """A replica's mean over its rows times its `batch_share`, 0 for a replica with an empty
    batch (whose mean is NaN). Summed over the replicas this is the mean over the global batch,
    sum_r (n_r / N) mean_r, however unevenly the batch was split."""
    return ops.where(share > 0, mean, 0.0) * share


def apply_to_rows(network, inputs, **options):
    """`network(inputs, **options)` for a batch of any size, 0 included; `inputs` is one tensor
    or a list of tensors with the same rows. An empty batch is run as one row of zeros and the
    output cut back to no rows. With oneDNN (on by default here) TensorFlow's CPU convolutions
    give an empty batch a wrongly shaped output, and a replica gets an empty batch when the last
    batch of an epoch has fewer rows than there are replicas. A batch whose size is known
    when the step is traced (always on JAX) and not 0 is run as it is."""
    tensors = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    rows = ops.shape(tensors[0])[0]

    def padded(tensor):
        padding = ops.zeros((ops.maximum(1 - rows, 0), *ops.shape(tensor)[1:]), dtype=tensor.dtype)
        return ops.concatenate([tensor, padding])

    if not (isinstance(rows, int) and rows > 0):
        tensors = [padded(tensor) for tensor in tensors]
    return network(tensors if len(tensors) > 1 else tensors[0], **options)[:rows]


def step_logs(logs: dict) -> dict:
    """The scalars a `train_step` or `test_step` returns, in a shape Keras 3 can reduce over
    the replicas. On several workers of a `MultiWorkerMirroredStrategy` Keras averages them with
    `strategy.reduce(MEAN, value, axis=0)`, which fails on scalars (tensorflow/tensorflow#72388),
    so there each becomes a [1] vector and the average is a scalar again; elsewhere `logs` is
    returned as it is (and always on JAX). The test is Keras' own
    (`_collective_all_reduce_multi_worker`)."""
    if not TENSORFLOW:
        return logs
    strategy = tf.distribute.get_strategy()
    if not (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return logs
    return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
