"""The K context vectors and mixture weights shared by the MoS and MoC heads."""

import torch
import torch.nn.functional as F
from torch import nn

from mosbench.engines.pytorch.models.locked_dropout import LockedDropout


class ExpertContexts(nn.Module):
    """Mixture weights and K latent contexts from the last LSTM output (Yang et al. 2018).

    ``log_prior = log_softmax(W_p h)`` (no bias) in float32; ``latent =
    tanh(W_l h + b)`` of size K*emsize with locked dropout ``dropoutl`` in
    training (one mask per sequence over all K*emsize units), then viewed as K
    vectors. ``nn.Linear``'s default initialisation is the Keras engine's
    uniform(+-1/sqrt(fan_in)) for weights and bias alike.

    Inputs are time-major ``(time, batch, nhidlast)``; returns
    ``(log_prior, latent)``: ``(time, batch, K)`` and ``(time, batch, K, emsize)``.
    """

    def __init__(self, nhidlast: int, n_experts: int, emsize: int, latent_dropout: float = 0.0):
        super().__init__()
        self.n_experts, self.emsize = n_experts, emsize
        self.prior = nn.Linear(nhidlast, n_experts, bias=False)
        self.latent = nn.Linear(nhidlast, n_experts * emsize)
        self.latent_drop = LockedDropout(latent_dropout)

    def forward(self, hidden):
        log_prior = F.log_softmax(self.prior(hidden).float(), dim=-1)
        latent = self.latent_drop(torch.tanh(self.latent(hidden)))
        return log_prior, latent.unflatten(-1, (self.n_experts, self.emsize))


class MixtureHead(nn.Module):
    """What MoS and MoC share: the expert contexts and the decoder bias (zeros at init)."""

    def __init__(self, vocab_size: int, nhidlast: int, n_experts: int, emsize: int,
                 latent_dropout: float = 0.0):
        super().__init__()
        self.contexts = ExpertContexts(nhidlast, n_experts, emsize, latent_dropout)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
