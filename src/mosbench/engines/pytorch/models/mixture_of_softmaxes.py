"""Mixture of Softmaxes (MoS): the high-rank output layer of Yang et al. (2018)."""

import torch
import torch.nn.functional as F

from mosbench.engines.pytorch.models.expert_contexts import MixtureHead
from mosbench.engines.pytorch.models.softmax_nll import linear_softmax_nll
from mosbench.engines.pytorch.models.tied_softmax import decoder_logits


class MixtureOfSoftmaxes(MixtureHead):
    """``p(w|h) = sum_k prior_k(h) softmax(latent_k(h) E^T + b)(w)``, in log space.

    The mixture is ``logsumexp_k(log_softmax(logits_k) + log prior_k)`` in
    float32: exact, and free of the underflow (and the +1e-8) of mixing
    probabilities. Everything after the context projection runs in float32.
    """

    def forward(self, hidden, embedding):
        """``(..., nhidlast)`` -> ``(..., vocab)`` log-probabilities."""
        log_prior, latent = self.contexts(hidden)
        expert = F.log_softmax(decoder_logits(latent, embedding, self.decoder_bias), dim=-1)
        return torch.logsumexp(expert + log_prior.unsqueeze(-1), dim=-2)

    def nll(self, hidden, embedding, targets) -> torch.Tensor:
        """Per-token NLL of ``targets`` ``(...)``, float32.

        The target is gathered before mixing, which gives the same number as
        gathering it from :meth:`forward`: each expert's target log-probability
        comes from the fused softmax loss on the (tokens*K, vocab) logits
        (:func:`~.softmax_nll.linear_softmax_nll`: the largest tensor of the
        model, formed once in training and never in evaluation), then the K of
        them are mixed with the prior by a logsumexp over (tokens, K). The
        mixture over the vocabulary, (tokens, K, vocab) sums and their
        logsumexp, is never formed.
        """
        log_prior, latent = self.contexts(hidden)
        experts = log_prior.size(-1)
        expert_nll = linear_softmax_nll(latent.reshape(-1, latent.size(-1)), embedding,
                                        self.decoder_bias,
                                        targets.reshape(-1).long().repeat_interleave(experts))
        joint = log_prior.reshape(-1, experts) - expert_nll.view(-1, experts)
        return -torch.logsumexp(joint, dim=-1).view(targets.shape)
