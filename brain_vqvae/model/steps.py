"""One training step for both of Keras' backends: the models' maths is written once, in
`step_loss` and `record`, and `TrainingStepModel` runs it as TensorFlow's or JAX's `train_step`
and `test_step`, as `KERAS_BACKEND` says.

A model subclassing `TrainingStepModel` defines

    step_loss(data, training) -> (loss, report)
        the forward pass over one batch (the one `fit` or `evaluate` hands over) and its
        scalar loss, the value whose gradient trains the trainable variables (under a
        `tf.distribute` strategy: this replica's weighted share of the global-batch mean,
        `distribute`); `report` is a dict of tensors for `record`;
    record(report) -> logs
        updates the model's metric trackers from a `report` and returns the step's logs.

The layers update their own non-trainable state in the forward pass, by assigning to their
variables (the vector quantizer's EMA codebook, restarts and k-means initialisation, the seed
generators). On TensorFlow the step runs on the variables themselves: a `tf.GradientTape` over
`step_loss`, then the optimizer. On JAX, whose steps are pure functions of the state that
Keras passes in and takes back (trainable, non-trainable, optimizer and metric variables), the
same `step_loss` runs inside a `keras.StatelessScope` that maps every variable to its value in
that state and collects what was assigned, under `jax.value_and_grad`; the optimizer then
updates the trainable values as the forward pass left them, as it updates the variables on
TensorFlow (Keras' JAX trainer instead drops a forward pass's assignments to trainable
variables, such as a restarted code of a codebook trained by gradients).
"""

from __future__ import annotations

import keras

from brain_vqvae.model.distribute import TENSORFLOW

if TENSORFLOW:
    import tensorflow as tf
elif keras.backend.backend() != "jax":
    raise ImportError(
        f"the models train on Keras' tensorflow and jax backends, not on "
        f"{keras.backend.backend()!r}: set KERAS_BACKEND to tensorflow or jax"
    )


def run_stateless(variables: list, values: list, function):
    """`function()` with each of `variables` reading its value in `values`, and the values of
    the variables after it: the ones it assigned, the others as given. Returns (result, values)."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))) as scope:
        result = function()
    return result, [scope.get_current_value(variable) for variable in variables]


def _traced_as_written(step):
    """A TensorFlow `train_step` or `test_step` that Keras' `tf.function` traces without
    autograph (see `_TensorFlowSteps`); `step` itself on JAX."""
    return tf.autograph.experimental.do_not_convert(step) if TENSORFLOW else step


class _TensorFlowSteps(keras.Model):
    """`train_step` and `test_step` of Keras' TensorFlow trainer (`data` -> logs).

    Both are traced as they are written, without autograph: the models' steps are written in
    `keras.ops`, their branches as `ops.cond`, so autograph has nothing to convert, and not
    converting them traces the first training step about 1 s sooner on two cores
    (BENCHMARKS.md, "Whole training runs")."""

    @_traced_as_written
    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, report = self.step_loss(data, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        return self.record(report)

    @_traced_as_written
    def test_step(self, data):
        return self.record(self.step_loss(data, training=False)[1])


class _JaxSteps(keras.Model):
    """`train_step` and `test_step` of Keras' JAX trainer ((state, data) -> (logs, state))."""

    def train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values, metric_values = state
        model_variables = self.trainable_variables + self.non_trainable_variables
        read = model_variables + self.optimizer.variables  # the step count among them

        def loss(trainable_values):
            (value, report), after = run_stateless(
                read,
                [*trainable_values, *non_trainable, *optimizer_values],
                lambda: self.step_loss(data, training=True),
            )
            return value, (report, after[: len(model_variables)])

        differentiate = jax.value_and_grad(loss, has_aux=True)
        (_, (report, model_values)), gradients = differentiate(trainable)
        count = len(trainable)
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, gradients, model_values[:count]
        )
        logs, metric_values = run_stateless(
            self.metrics_variables, metric_values, lambda: self.record(report)
        )
        return logs, (trainable, model_values[count:], optimizer_values, metric_values)

    def test_step(self, state, data):
        trainable, non_trainable, metric_values = state
        (_, report), _ = run_stateless(
            self.trainable_variables + self.non_trainable_variables,
            [*trainable, *non_trainable],
            lambda: self.step_loss(data, training=False),
        )
        logs, metric_values = run_stateless(
            self.metrics_variables, metric_values, lambda: self.record(report)
        )
        return logs, (trainable, non_trainable, metric_values)


# A `keras.Model` trained by its own `step_loss` and `record`, on the backend Keras runs on.
TrainingStepModel = _TensorFlowSteps if TENSORFLOW else _JaxSteps
