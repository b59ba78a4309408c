"""Mixture of Softmaxes (MoS): the high-rank output layer of Yang et al. (2018)."""

import dataclasses

import jax
import jax.numpy as jnp

from mosbench.engines.jax.models.expert_contexts import ExpertContexts
from mosbench.engines.jax.models.tied_softmax import project, softmax_nll


@dataclasses.dataclass(frozen=True)
class MixtureOfSoftmaxes:
    """``log sum_k prior_k softmax(latent_k E^T + b)``, mixed in log space (no underflow)."""

    contexts: ExpertContexts

    def log_probs(self, params, hidden, key, compute):
        log_prior, latent = self.contexts(params, hidden, key, compute)
        expert = jax.nn.log_softmax(project(latent, params["embedding"], compute)
                                    + params["decoder.b"], axis=-1)
        return jax.nn.logsumexp(expert + log_prior[..., None], axis=-2)

    def nll(self, params, hidden, targets, key, compute):
        """Each expert's target NLL, then the K mixed with the prior by a logsumexp."""
        log_prior, latent = self.contexts(params, hidden, key, compute)
        experts = jnp.broadcast_to(targets[..., None], latent.shape[:-1])
        expert_nll = softmax_nll(latent, params["embedding"], params["decoder.b"], experts,
                                 compute)
        return -jax.nn.logsumexp(log_prior - expert_nll, axis=-1)
