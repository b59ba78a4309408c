"""The K context vectors and mixture weights shared by the MoS and MoC heads."""

import dataclasses

import jax
import jax.numpy as jnp

from mosbench.engines.jax.models import masks
from mosbench.engines.jax.models.tied_softmax import project


@dataclasses.dataclass(frozen=True)
class ExpertContexts:
    """MoS' and MoC's K contexts: ``log_softmax(W_p h)`` and ``tanh(W_l h + b)`` as K vectors.

    The latent units get locked dropout ``dropoutl`` in training (one mask per
    sequence over all K*emsize units), as the reference.
    """

    n_experts: int
    emsize: int
    dropoutl: float

    def __call__(self, params, hidden, key, compute):
        log_prior = jax.nn.log_softmax(project(hidden, params["prior.w"], compute), axis=-1)
        latent = jnp.tanh(project(hidden, params["latent.w"], compute) + params["latent.b"])
        if key is not None:
            latent = masks.locked(latent, masks.site_key(key, masks.LATENT), self.dropoutl)
        return log_prior, latent.reshape(*latent.shape[:-1], self.n_experts, self.emsize)
