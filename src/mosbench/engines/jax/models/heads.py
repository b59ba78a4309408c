"""The output heads: tied softmax, Mixture of Contexts, Mixture of Softmaxes.

Each head is a small frozen object holding its sizes; its parameters come in
the model's dict. ``nll`` gives per-token NLL ``(...)`` float32 of targets;
``log_probs`` the ``(..., vocab)`` log-probabilities. Matmuls run in
``compute`` (float32, or bfloat16 under ``mixed_bfloat16``) with float32
results; the softmaxes and the mixture are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mosbench.engines.jax.models import masks


def project(x, w, compute=jnp.float32):
    """``x @ w.T`` for a canonical ``(out, in)`` matrix, float32 out."""
    return jnp.matmul(x.astype(compute), w.T.astype(compute), preferred_element_type=jnp.float32)


def softmax_nll(hidden, weight, bias, targets, compute=jnp.float32):
    """Per-token ``-log softmax(h W^T + b)[target]`` without keeping log-probabilities."""
    logits = project(hidden, weight, compute) + bias
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


@dataclasses.dataclass(frozen=True)
class TiedSoftmax:
    """``log_softmax(h E^T + b)``: the decoder is the embedding (or ``decoder.w`` untied)."""

    decoder: str = "embedding"

    def log_probs(self, params, hidden, key, compute):
        del key
        logits = project(hidden, params[self.decoder], compute) + params["decoder.b"]
        return jax.nn.log_softmax(logits, axis=-1)

    def nll(self, params, hidden, targets, key, compute):
        del key
        return softmax_nll(hidden, params[self.decoder], params["decoder.b"], targets, compute)


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
