"""Non-monotonically triggered averaged SGD (NT-ASGD, Merity et al. 2018).

Train with plain SGD; once validation stops improving by the non-monotone
rule, keep taking SGD steps but also keep the uniform average of the iterates
from that point on, and validate and checkpoint with the average. Keras 3 has
no averaged SGD, so the average lives here: one shadow variable per weight.
"""

import contextlib

import tensorflow as tf


def nonmono_triggered(previous_losses, loss, nonmono):
    """The reference's switch rule.

    Fires when more than ``nonmono`` validation losses came before this one
    and this one is worse than the best of all but the last ``nonmono``.
    """
    return len(previous_losses) > nonmono and loss > min(previous_losses[:-nonmono])


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
