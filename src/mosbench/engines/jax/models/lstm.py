"""The plain LSTM baseline (Zaremba et al. 2014), one bias per layer as the Keras model.

Embedding -> dropout -> ``nlayers`` LSTMs, each followed by dropout ->
softmax decoder (the embedding when tied, else ``decoder.w``). Dropout is
ordinary, a fresh draw per element, on the non-recurrent connections only.
"""

import dataclasses

import jax.numpy as jnp

from mosbench.engines.jax.models import masks
from mosbench.engines.jax.models.init import initialise, uniform
from mosbench.engines.jax.models.language_model import LanguageModel
from mosbench.engines.jax.models.recurrence import lstm_layer
from mosbench.engines.jax.models.tied_softmax import TiedSoftmax


@dataclasses.dataclass(frozen=True)
class LSTMLanguageModel(LanguageModel):
    """Sizes and rate of one baseline; ``shapes`` are its canonical weights.

    ``cudnn``: its LSTM layers run on cuDNN (its one bias as ``b_ih``, ``b_hh`` zero).
    """

    shapes: dict
    nhid: int
    nlayers: int
    dropout: float
    init_range: float
    head: object
    cudnn: bool = False

    @classmethod
    def create(cls, shapes, *, emsize, nhid, nlayers, dropout, tie_weights, init_range,
               cudnn=False):
        if tie_weights and emsize != nhid:
            raise ValueError(f"tied weights need emsize == nhid, got {emsize} and {nhid}")
        head = TiedSoftmax("embedding" if tie_weights else "decoder.w")
        return cls(shapes, nhid, nlayers, dropout, init_range, head, cudnn)

    def __hash__(self):
        return hash((tuple(self.shapes.items()), self.nhid, self.nlayers, self.head, self.cudnn))

    def init(self, key):
        """Embedding uniform(+-init_range), LSTM tensors uniform(+-1/sqrt(nhid)), an untied
        decoder Glorot-uniform (Keras' Dense), the decoder bias zero."""
        def rule(name):
            if name == "embedding":
                return lambda k, s: uniform(k, s, self.init_range)
            if name == "decoder.b":
                return lambda k, s: jnp.zeros(s, jnp.float32)
            if name == "decoder.w":
                return lambda k, s: uniform(k, s, (6 / (s[0] + s[1])) ** 0.5)
            return lambda k, s: uniform(k, s, self.nhid ** -0.5)

        return initialise(key, self.shapes, {name: rule(name) for name in self.shapes})

    def initial_state(self, batch):
        return [(jnp.zeros((batch, self.nhid), jnp.float32),
                 jnp.zeros((batch, self.nhid), jnp.float32)) for _ in range(self.nlayers)]

    def features(self, params, tokens, states, key, compute, length=None):
        def site(number):
            return None if key is None else masks.site_key(key, masks.PLAIN + number)

        x = masks.plain(jnp.take(params["embedding"], tokens.T, axis=0), site(0), self.dropout)
        new_states = []
        for layer, state in enumerate(states):
            p = f"rnn.{layer}."
            raw, state = lstm_layer(x, state, params[p + "w_ih"], params[p + "w_hh"],
                                    params[p + "b"], None, length, cudnn=self.cudnn)
            new_states.append(state)
            x = masks.plain(raw, site(layer + 1), self.dropout)
        return x, new_states, raw
