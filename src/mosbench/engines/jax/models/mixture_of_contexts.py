"""Mixture of Contexts (MoC): the paper's low-rank ablation of MoS."""

import dataclasses

import jax.numpy as jnp

from mosbench.engines.jax.models.expert_contexts import ExpertContexts
from mosbench.engines.jax.models.tied_softmax import TiedSoftmax, softmax_nll


@dataclasses.dataclass(frozen=True)
class MixtureOfContexts:
    """One softmax over the prior-weighted mean of the K contexts (rank <= emsize+1)."""

    contexts: ExpertContexts

    def mixed(self, params, hidden, key, compute):
        log_prior, latent = self.contexts(params, hidden, key, compute)
        return jnp.einsum("...k,...ke->...e", jnp.exp(log_prior), latent)

    def log_probs(self, params, hidden, key, compute):
        return TiedSoftmax().log_probs(params, self.mixed(params, hidden, key, compute), None,
                                       compute)

    def nll(self, params, hidden, targets, key, compute):
        return softmax_nll(self.mixed(params, hidden, key, compute), params["embedding"],
                           params["decoder.b"], targets, compute)
