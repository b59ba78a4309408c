"""Locked (variational) dropout: one mask per sequence, shared across time.

Gal & Ghahramani (2016) showed that dropping the same units at every time
step of a sequence is the Bayesian-consistent dropout for RNNs; AWD-LSTM uses
it on the embeddings, between LSTM layers and on the output.
"""

import keras
from keras import ops

from mosbench.engines.tensorflow.models.replica_dropout import dropout_mask


class LockedDropout(keras.layers.Layer):
    """Dropout whose mask is constant along the time axis.

    Semantics: for inputs ``(batch, time, features)`` a mask of shape
    ``(batch, 1, features)`` is drawn per call, so each sequence in the batch
    has its own mask, applied unchanged at every time step; kept units are
    scaled by 1/(1-rate). Identity outside training. Data-parallel replicas
    draw different masks (:mod:`mosbench.engines.tensorflow.models.replica_dropout`).

    Args:
        rate: fraction of units to drop.
        seed: seed of the mask generator.

    Example:
        >>> LockedDropout(0.4)(keras.ops.ones((2, 7, 3)), training=True)

    Reference: Gal & Ghahramani, "A Theoretically Grounded Application of
    Dropout in Recurrent Neural Networks", NeurIPS 2016.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        batch, features = ops.shape(inputs)[0], ops.shape(inputs)[-1]
        mask = dropout_mask((batch, 1, features), self.rate, self.seed_generator, inputs.dtype)
        return inputs * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
