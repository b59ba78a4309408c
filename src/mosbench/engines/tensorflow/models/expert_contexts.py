"""The K context vectors and their mixture weights shared by MoS and MoC."""

import math

import keras
from keras import ops

from mosbench.engines.tensorflow.models.locked_dropout import LockedDropout


def _torch_linear_init(fan_in):
    """PyTorch's nn.Linear default: weights and bias uniform(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


class ExpertContexts(keras.layers.Layer):
    """Mixture weights and K latent contexts from the last LSTM output (Yang et al. 2018).

    Semantics:
        ``log_prior = log_softmax(W_p h)`` (K logits, no bias), in float32;
        ``latent = tanh(W_l h + b)`` of size K*emsize, with locked dropout
        (``latent_dropout``, the reference's ``dropoutl``: one mask per
        sequence, shared over time) in training, then reshaped to K vectors.

    Args:
        n_experts: K.
        emsize: size of each context (the tied embedding size).
        latent_dropout: locked-dropout rate on the latent contexts.
        seed: seed of the dropout mask.

    Call arguments:
        hidden: ``(batch, time, nhidlast)``.

    Returns:
        ``(log_prior, latent)``: ``(batch, time, K)`` and ``(batch, time, K, emsize)``.
    """

    def __init__(self, n_experts, emsize, latent_dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.n_experts, self.emsize = n_experts, emsize
        self.latent_dropout, self.seed = latent_dropout, seed
        self.drop = LockedDropout(latent_dropout, seed=seed)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.prior = keras.layers.Dense(self.n_experts, use_bias=False,
                                        kernel_initializer=_torch_linear_init(fan_in))
        self.latent = keras.layers.Dense(self.n_experts * self.emsize, activation="tanh",
                                         kernel_initializer=_torch_linear_init(fan_in),
                                         bias_initializer=_torch_linear_init(fan_in))
        self.prior.build(input_shape)
        self.latent.build(input_shape)

    def call(self, hidden, training=False):
        log_prior = ops.log_softmax(ops.cast(self.prior(hidden), "float32"), axis=-1)
        latent = self.drop(self.latent(hidden), training=training)  # (B, T, K*E)
        batch, time = ops.shape(hidden)[0], ops.shape(hidden)[1]
        return log_prior, ops.reshape(latent, (batch, time, self.n_experts, self.emsize))

    def get_config(self):
        return {**super().get_config(), "n_experts": self.n_experts, "emsize": self.emsize,
                "latent_dropout": self.latent_dropout, "seed": self.seed}


class MixtureHead(keras.layers.Layer):
    """What the MoS and MoC output layers share: K expert contexts and the decoder bias.

    Subclasses implement ``call(hidden, embeddings, training)``, the mixing.
    """

    def __init__(self, vocab_size, n_experts, emsize, latent_dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.contexts = ExpertContexts(n_experts, emsize, latent_dropout, seed=seed)
        self.bias = self.add_weight(shape=(vocab_size,), initializer="zeros", name="bias")

    def get_config(self):
        c = self.contexts
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "n_experts": c.n_experts, "emsize": c.emsize,
                "latent_dropout": c.latent_dropout, "seed": c.seed}
