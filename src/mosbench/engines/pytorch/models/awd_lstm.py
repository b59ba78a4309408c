"""AWD-LSTM language models with a softmax, MoC or MoS head, as the Keras engine's.

Embedding dropout -> locked dropout -> ``nlayers`` weight-dropped LSTMs with
locked dropout between them -> locked dropout -> output head tied to the
embedding. Dropout masks are drawn in the Keras model's order (embedding,
input, then per layer weight drop and the dropout after it, output, latent).
"""

from torch import nn

from mosbench.engines.pytorch.models.embedding_dropout import embedding_dropout
from mosbench.engines.pytorch.models.locked_dropout import LockedDropout
from mosbench.engines.pytorch.models.mixture_of_contexts import MixtureOfContexts
from mosbench.engines.pytorch.models.mixture_of_softmaxes import MixtureOfSoftmaxes
from mosbench.engines.pytorch.models.tied_softmax import TiedSoftmax
from mosbench.engines.pytorch.models.weight_drop_lstm import WeightDropLSTM

HEADS = ("softmax", "moc", "mos")


class AWDLanguageModel(nn.Module):
    """AWD-LSTM with a tied softmax, Mixture-of-Contexts or Mixture-of-Softmaxes head.

    Args: as the Keras ``AWDLanguageModel`` (``emsize``, ``nhid``,
    ``nhidlast``, ``nlayers``, the dropout rates ``dropout``, ``dropouth``,
    ``dropouti``, ``dropoute``, ``wdrop``, ``dropoutl``, ``head``,
    ``n_experts``, ``init_range``). ``nhidlast`` must equal ``emsize`` for the
    softmax head.

    :meth:`forward` and :meth:`nll` take ``tokens`` int ``(batch, time)`` and
    ``states``, a list of ``(h, c)`` per layer, each ``(batch, hidden)``;
    dropouts are active in training mode (``.train()``). Both return the new
    states and ``(raw_last, dropped_last)``, the last layer's output
    ``(batch, time, nhidlast)`` before and after its dropout (TAR and AR).
    Internally everything is time-major, the fused LSTM's layout; the outputs
    are batch-first views.
    """

    def __init__(self, vocab_size: int, emsize: int, nhid: int, nhidlast: int, nlayers: int,
                 dropout: float = 0.4, dropouth: float = 0.25, dropouti: float = 0.4,
                 dropoute: float = 0.1, wdrop: float = 0.5, head: str = "softmax",
                 n_experts: int = 1, dropoutl: float = 0.0, init_range: float = 0.1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "softmax" and nhidlast != emsize:
            raise ValueError(f"a tied softmax needs nhidlast == emsize, got {nhidlast} "
                             f"and {emsize}")
        self.embedding = nn.Embedding(vocab_size, emsize)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        self.dropoute = dropoute
        self.input_drop = LockedDropout(dropouti)
        self.hidden_drops = nn.ModuleList(LockedDropout(dropouth) for _ in range(nlayers - 1))
        self.output_drop = LockedDropout(dropout)
        self.sizes = [nhid] * (nlayers - 1) + [nhidlast]
        inputs = [emsize] + self.sizes[:-1]
        self.rnns = nn.ModuleList(WeightDropLSTM(i, h, wdrop)
                                  for i, h in zip(inputs, self.sizes, strict=True))
        if head == "softmax":
            self.head = TiedSoftmax(vocab_size)
        elif head == "moc":
            self.head = MixtureOfContexts(vocab_size, nhidlast, n_experts, emsize, dropoutl)
        else:
            self.head = MixtureOfSoftmaxes(vocab_size, nhidlast, n_experts, emsize, dropoutl)

    def initial_state(self, batch_size: int):
        """Zero ``(h, c)`` per layer, ``(batch, hidden)``, on the model's device and dtype."""
        w = self.embedding.weight
        return [(w.new_zeros(batch_size, units), w.new_zeros(batch_size, units))
                for units in self.sizes]

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def features(self, tokens, states):
        """Time-major ``(dropped_last, new_states, raw_last)`` for batch-first ``tokens``."""
        x = embedding_dropout(self.embedding.weight, tokens.t(), self.dropoute,
                              self.training)  # (T, B, E)
        x = self.input_drop(x)
        new_states = []
        last = len(self.rnns) - 1
        for layer, (rnn, state) in enumerate(zip(self.rnns, states, strict=True)):
            raw, state = rnn(x, state)  # (T, B, H_layer)
            new_states.append(state)
            if layer < last:
                x = self.hidden_drops[layer](raw)
        return self.output_drop(raw), new_states, raw

    def forward(self, tokens, states):
        """``(log_probs (B, T, V), new_states, (raw_last, dropped_last))``."""
        dropped, new_states, raw = self.features(tokens, states)
        log_probs = self.head(dropped, self.embedding.weight)
        return (log_probs.transpose(0, 1), new_states,
                (raw.transpose(0, 1), dropped.transpose(0, 1)))

    def nll(self, tokens, targets, states):
        """Per-token NLL ``(B, T)`` float32 of ``targets``; otherwise as :meth:`forward`.

        The fast path of training and evaluation: the head's fused loss, with
        no (tokens, vocab) log-probabilities.
        """
        dropped, new_states, raw = self.features(tokens, states)
        nll = self.head.nll(dropped, self.embedding.weight, targets.t())
        return nll.t(), new_states, (raw.transpose(0, 1), dropped.transpose(0, 1))
