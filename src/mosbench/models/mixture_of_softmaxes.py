"""Mixture of Softmaxes (MoS): the high-rank output layer of Yang et al. (2018)."""

from keras import ops

from mosbench.models.expert_contexts import MixtureHead


def mixture_log_probs(expert_logits, log_prior):
    """``log sum_k prior_k softmax(logits_k)``, computed in log space in float32.

    ``logsumexp_k(log_softmax(logits_k) + log prior_k)`` equals the reference's
    ``log(sum_k prior_k softmax(logits_k))`` exactly, but never underflows: the
    probability-space version returns -inf (or needs the reference's +1e-8
    fudge) once a word's mixed probability falls below the dtype's smallest
    number, which happens quickly in float16.

    Args:
        expert_logits: ``(..., K, vocab)``.
        log_prior: ``(..., K)`` log mixture weights.

    Returns:
        ``(..., vocab)`` log-probabilities, float32.
    """
    expert_log_probs = ops.log_softmax(ops.cast(expert_logits, "float32"), axis=-1)
    weighted = expert_log_probs + ops.expand_dims(ops.cast(log_prior, "float32"), -1)
    return ops.logsumexp(weighted, axis=-2)


class MixtureOfSoftmaxes(MixtureHead):
    """``p(w|h) = sum_k prior_k(h) softmax(latent_k(h) E^T + b)(w)``.

    Semantics: K softmaxes over the tied embedding E, each on its own latent
    context, mixed with context-dependent weights. The mixture is non-linear
    in the logits, so the log-probability matrix over contexts is not limited
    to rank d+1. Everything after the context projection runs in float32.

    Args:
        vocab_size: number of word types.
        n_experts: K (15 in the reference presets).
        emsize: tied embedding size.
        latent_dropout: locked dropout on the latent contexts (``dropoutl``).
        seed: seed of the dropout mask.

    Call arguments:
        hidden: ``(batch, time, nhidlast)``.
        embeddings: ``(vocab, emsize)``.

    Returns:
        ``(batch, time, vocab)`` log-probabilities.

    Reference: Yang, Dai, Salakhutdinov, Cohen, "Breaking the Softmax
    Bottleneck: A High-Rank RNN Language Model", ICLR 2018.
    """

    def call(self, hidden, embeddings, training=False):
        log_prior, latent = self.contexts(hidden, training=training)  # (B,T,K), (B,T,K,E)
        logits = ops.einsum("btke,ve->btkv", latent, embeddings) + self.bias  # (B, T, K, V)
        return mixture_log_probs(logits, log_prior)
