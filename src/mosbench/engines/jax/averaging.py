"""The NT-ASGD iterate average of a parameter pytree.

optax has no uniform average from a restart point (``optax.ema`` is
exponential), so it is a tree of shadow arrays and a jitted lerp: after
``n`` updates the average is ``mean(w_1..w_n)``, as PyTorch's ASGD with
``t0=0, lambd=0`` (the reference's).
"""

import jax
import numpy as np


@jax.jit
def _folded(average, params, count):
    return jax.tree.map(lambda a, p: a + (p - a) / count, average, params)


class IterateAverage:
    """Uniform running average of the parameters from its (re)start on; a host count."""

    def __init__(self, params):
        self.average = params
        self.count = 0

    def update(self, params):
        """Fold the weights after a step into the average."""
        self.count += 1
        self.average = _folded(self.average, params, np.float32(self.count))

    def restart(self, params):
        """Restart from ``params`` with a count of 0 (NT-ASGD's switch)."""
        self.average, self.count = params, 0
