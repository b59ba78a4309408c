"""AWD-LSTM with a tied softmax, MoC or MoS head (Merity et al. 2018; Yang et al. 2018).

Embedding dropout -> locked dropout -> ``nlayers`` weight-dropped LSTMs with
locked dropout between them -> locked dropout -> head tied to the embedding.
A model is a frozen description; its parameters are the canonical dict of
:func:`mosbench.workload.weight_shapes`, passed to every call. ``key`` is the
forward's mask key (None: no dropout, evaluation).
"""

import dataclasses

import jax.numpy as jnp

from mosbench.engines.jax.models import masks
from mosbench.engines.jax.models.expert_contexts import ExpertContexts
from mosbench.engines.jax.models.init import initialise, uniform
from mosbench.engines.jax.models.language_model import LanguageModel
from mosbench.engines.jax.models.mixture_of_contexts import MixtureOfContexts
from mosbench.engines.jax.models.mixture_of_softmaxes import MixtureOfSoftmaxes
from mosbench.engines.jax.models.recurrence import lstm_layer
from mosbench.engines.jax.models.tied_softmax import TiedSoftmax


@dataclasses.dataclass(frozen=True)
class AWDLanguageModel(LanguageModel):
    """Sizes, rates and head of one AWD model; ``shapes`` are its canonical weights.

    ``cudnn``: its LSTM layers run on cuDNN (``recurrence.choose_cudnn``), else scan.
    """

    shapes: dict
    sizes: tuple
    dropout: float
    dropouth: float
    dropouti: float
    dropoute: float
    wdrop: float
    init_range: float
    head: object
    cudnn: bool = False

    @classmethod
    def create(cls, shapes, *, head, emsize, nhid, nhidlast, nlayers, dropout, dropouth,
               dropouti, dropoute, wdrop, init_range, n_experts=1, dropoutl=0.0, cudnn=False):
        if head == "softmax" and nhidlast != emsize:
            raise ValueError(f"a tied softmax needs nhidlast == emsize, got {nhidlast} "
                             f"and {emsize}")
        contexts = ExpertContexts(n_experts, emsize, dropoutl)
        out = {"softmax": TiedSoftmax(), "moc": MixtureOfContexts(contexts),
               "mos": MixtureOfSoftmaxes(contexts)}[head]
        return cls(shapes, (nhid,) * (nlayers - 1) + (nhidlast,), dropout, dropouth, dropouti,
                   dropoute, wdrop, init_range, out, cudnn)

    def __hash__(self):  # the jitted steps close over a model: hash what defines it
        return hash((tuple(self.shapes.items()), self.sizes, self.head, self.cudnn))

    def init(self, key):
        """Embedding uniform(+-init_range), each LSTM tensor uniform(+-1/sqrt(its units)),
        the head's maps uniform(+-1/sqrt(nhidlast)), the decoder bias zero."""
        def rule(name):
            if name == "embedding":
                return lambda k, s: uniform(k, s, self.init_range)
            if name == "decoder.b":
                return lambda k, s: jnp.zeros(s, jnp.float32)
            if name.startswith("rnn."):
                units = self.sizes[int(name.split(".")[1])]
                return lambda k, s: uniform(k, s, units ** -0.5)
            return lambda k, s: uniform(k, s, self.sizes[-1] ** -0.5)

        return initialise(key, self.shapes, {name: rule(name) for name in self.shapes})

    def initial_state(self, batch):
        return [(jnp.zeros((batch, u), jnp.float32), jnp.zeros((batch, u), jnp.float32))
                for u in self.sizes]

    def features(self, params, tokens, states, key, compute, length=None):
        """Time-major ``(dropped_last, new_states, raw_last)`` for batch-first ``tokens``."""
        def site(number):
            return None if key is None else masks.site_key(key, number)

        x = masks.embedding_lookup(params["embedding"], tokens.T, site(masks.EMBEDDING),
                                   self.dropoute)
        x = masks.locked(x, site(masks.INPUT), self.dropouti)
        new_states = []
        for layer, state in enumerate(states):
            p = f"rnn.{layer}."
            w_hh = masks.weight_drop(params[p + "w_hh"], site(masks.WEIGHT_DROP + layer),
                                     self.wdrop)
            raw, state = lstm_layer(x, state, params[p + "w_ih"], w_hh, params[p + "b_ih"],
                                    params[p + "b_hh"], length, cudnn=self.cudnn)
            new_states.append(state)
            if layer < len(states) - 1:
                x = masks.locked(raw, site(masks.HIDDEN + layer), self.dropouth)
        return masks.locked(raw, site(masks.OUTPUT), self.dropout), new_states, raw
