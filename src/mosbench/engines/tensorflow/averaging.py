"""The NT-ASGD iterate average in TensorFlow: one shadow variable per weight.

Keras 3 has no averaged SGD (``use_ema`` keeps an exponential average), so
the uniform average of the iterates lives here.
"""

import contextlib

import tensorflow as tf


class IterateAverage:
    """Uniform running average of a model's trainable weights from its start on.

    After ``n`` updates the average equals ``mean(w_1..w_n)`` of the weights
    seen by :meth:`update` (as PyTorch's ASGD with ``t0=0, lambd=0``, which
    the reference uses). ``swapped_in`` temporarily puts the average into the
    model, for validation and checkpoints.
    """

    def __init__(self, variables):
        self.variables = list(variables)
        # Updated in every replica with the same values: keep the first replica's.
        once = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.averages = [tf.Variable(v, trainable=False, aggregation=once)
                         for v in self.variables]
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=once)

    def update(self):
        """Fold the current weights into the average (call after each optimiser step)."""
        self.count.assign_add(1)
        weight = 1.0 / tf.cast(self.count, tf.float32)
        for average, variable in zip(self.averages, self.variables, strict=True):
            average.assign_add((tf.convert_to_tensor(variable) - average) * weight)

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the model holds the averaged weights; the iterates come back after."""
        saved = [tf.identity(v) for v in self.variables]
        for variable, average in zip(self.variables, self.averages, strict=True):
            variable.assign(average)
        try:
            yield
        finally:
            for variable, value in zip(self.variables, saved, strict=True):
                variable.assign(value)

    def state(self):
        return [a.numpy() for a in self.averages], int(self.count.numpy())

    def restore(self, averages, count):
        for average, value in zip(self.averages, averages, strict=True):
            average.assign(value)
        self.count.assign(count)
