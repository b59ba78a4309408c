"""The softmax output layer tied to the embedding, and the matmul every head uses.

Heads are small frozen objects holding their sizes; their parameters come in
the model's dict. ``nll`` gives per-token NLL ``(...)`` float32 of targets,
``log_probs`` the ``(..., vocab)`` log-probabilities. Matmuls run in
``compute`` (float32, or bfloat16 under ``mixed_bfloat16``) with float32
results; the softmaxes and mixtures are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp


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
