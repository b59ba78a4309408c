"""Mixture of Contexts (MoC): the paper's low-rank ablation of MoS."""

import torch
import torch.nn.functional as F

from mosbench.engines.pytorch.models.expert_contexts import MixtureHead
from mosbench.engines.pytorch.models.tied_softmax import decoder_logits, decoder_nll


class MixtureOfContexts(MixtureHead):
    """``p(w|h) = softmax(sum_k prior_k(h) (latent_k(h) E^T + b))(w)``.

    Because the priors sum to one this is a single softmax over the mixed
    context ``sum_k prior_k latent_k``: MoS's parameters, rank at most emsize+1.
    """

    def mixed_context(self, hidden):
        log_prior, latent = self.contexts(hidden)  # (..., K), (..., K, E)
        prior = log_prior.exp().to(latent.dtype)
        return (prior.unsqueeze(-2) @ latent).squeeze(-2)  # (..., E)

    def forward(self, hidden, embedding):
        logits = decoder_logits(self.mixed_context(hidden), embedding, self.decoder_bias)
        return F.log_softmax(logits, dim=-1)

    def nll(self, hidden, embedding, targets) -> torch.Tensor:
        """Per-token NLL of ``targets`` through the fused softmax loss."""
        return decoder_nll(self.mixed_context(hidden), embedding, self.decoder_bias, targets)
