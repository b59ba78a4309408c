"""Plain LSTM language model: the baseline (Zaremba et al. 2014), as the Keras engine's.

Embedding -> dropout -> ``nlayers`` LSTM layers, each followed by dropout ->
softmax decoder, tied to the embedding by default. Dropout is ordinary (a
fresh mask per element) on the non-recurrent connections only. The Keras
model's LSTM (``keras.layers.LSTM``) has one bias per layer, so this one does
too: the fused kernel's second bias is a zero buffer, not a parameter, and
parameter counts agree with Keras.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mosbench.engines.pytorch.models import masks
from mosbench.engines.pytorch.models.fused_lstm import LSTMLayer
from mosbench.engines.pytorch.models.tied_softmax import decoder_logits, decoder_nll


class SingleBiasLSTM(LSTMLayer):
    """An LSTM layer with one bias vector, as Keras': ``weight_ih``, ``weight_hh``, ``bias``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias = nn.Parameter(torch.empty(gates))
        self.register_buffer("zero_bias", torch.zeros(gates), persistent=False)
        self.reset_parameters()

    def weights(self):
        return self.weight_ih, self.weight_hh, self.bias, self.zero_bias


class LSTMLanguageModel(nn.Module):
    """Next-word model whose recurrent state the caller carries between windows.

    Args:
        vocab_size, emsize, nhid, nlayers: sizes (``emsize == nhid`` when tied).
        dropout: rate on the embedding output and after every layer.
        tie_weights: decode with the embedding matrix; otherwise a bias-free
            ``decoder`` (Glorot-uniform, as Keras' ``Dense``).
        init_range: embedding initialised uniform(-init_range, init_range);
            LSTM weights uniform(+-1/sqrt(nhid)); decoder bias zero.

    :meth:`forward` and :meth:`nll` take ``tokens`` int ``(batch, time)`` and
    ``states``, a list of ``(h, c)`` per layer, each ``(batch, nhid)``;
    dropout is active in training mode (``.train()``). Internally everything
    is time-major; outputs are batch-first views.
    """

    def __init__(self, vocab_size: int, emsize: int, nhid: int, nlayers: int,
                 dropout: float = 0.5, tie_weights: bool = True, init_range: float = 0.1):
        super().__init__()
        if tie_weights and emsize != nhid:
            raise ValueError(f"tied weights need emsize == nhid, got {emsize} and {nhid}")
        self.nhid, self.nlayers, self.dropout = nhid, nlayers, dropout
        self.embedding = nn.Embedding(vocab_size, emsize)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        self.rnns = nn.ModuleList(SingleBiasLSTM(emsize if layer == 0 else nhid, nhid)
                                  for layer in range(nlayers))
        self.decoder = None
        if not tie_weights:
            self.decoder = nn.Linear(nhid, vocab_size, bias=False)
            nn.init.xavier_uniform_(self.decoder.weight)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))

    def initial_state(self, batch_size: int):
        """Zero ``(h, c)`` per layer, ``(batch, nhid)``, on the model's device and dtype."""
        w = self.embedding.weight
        return [(w.new_zeros(batch_size, self.nhid), w.new_zeros(batch_size, self.nhid))
                for _ in range(self.nlayers)]

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _drop(self, x):
        if not self.training or self.dropout == 0:
            return x
        return x * masks.dropout_mask(x, x.shape, self.dropout)

    def features(self, tokens, states):
        """Time-major ``(dropped_last, new_states, raw_last)`` for batch-first ``tokens``."""
        x = self._drop(self.embedding(tokens.t()))  # (T, B, E)
        new_states = []
        for rnn, state in zip(self.rnns, states, strict=True):
            raw, state = rnn(x, state)
            new_states.append(state)
            x = self._drop(raw)
        return x, new_states, raw

    def decoder_matrix(self):
        """``(vocab, nhid)``: the embedding when tied, else the decoder's weight."""
        return self.embedding.weight if self.decoder is None else self.decoder.weight

    def forward(self, tokens, states):
        """``(log_probs (B, T, V), new_states, (raw_last, dropped_last))``."""
        x, new_states, raw = self.features(tokens, states)
        logits = decoder_logits(x, self.decoder_matrix(), self.decoder_bias)
        log_probs = F.log_softmax(logits, dim=-1)
        return log_probs.transpose(0, 1), new_states, (raw.transpose(0, 1), x.transpose(0, 1))

    def nll(self, tokens, targets, states):
        """Per-token NLL ``(B, T)`` float32 of ``targets``; otherwise as :meth:`forward`."""
        x, new_states, raw = self.features(tokens, states)
        nll = decoder_nll(x, self.decoder_matrix(), self.decoder_bias, targets.t())
        return nll.t(), new_states, (raw.transpose(0, 1), x.transpose(0, 1))
