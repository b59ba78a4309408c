"""Mixture of Softmaxes (MoS): the high-rank output layer of Yang et al. (2018)."""

import tensorflow as tf
from keras import ops

from mosbench.engines.tensorflow.models.expert_contexts import MixtureHead


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


@tf.custom_gradient
def _mixture_nll(latent, log_prior, embeddings, bias, targets):
    """``-log sum_k prior_k softmax(latent_k E^T + b)[target]`` for flat rows, hand-differentiated.

    ``latent`` ``(N, K, E)``, ``log_prior`` ``(N, K)``, ``targets`` ``(N,)``.
    Forward keeps one (N*K, V) tensor, the unnormalised softmaxes; backward
    turns it into the logits' gradient in one pass, using the responsibilities
    ``r_k = prior_k p_k(target) / p(target)``: ``dlogits_k = r_k (softmax_k -
    onehot(target))`` and ``dlog_prior_k = -r_k`` (times the upstream gradient).
    """
    rows, experts, size = tf.shape(latent)[0], tf.shape(latent)[1], tf.shape(latent)[2]
    flat = tf.reshape(latent, (-1, size))  # (N*K, E)
    logits = tf.cast(tf.matmul(flat, tf.cast(embeddings, flat.dtype), transpose_b=True),
                     tf.float32) + bias  # (N*K, V), float32 whatever the compute dtype
    shift = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
    unnormalised = tf.exp(logits - shift)
    total = tf.reduce_sum(unnormalised, axis=-1)  # (N*K,)
    expert_targets = tf.repeat(targets, experts)  # each row's target, once per expert
    at_target = tf.stack([tf.range(rows * experts), expert_targets], axis=1)
    target_log_probs = tf.gather_nd(logits, at_target) - shift[:, 0] - tf.math.log(total)
    joint = log_prior + tf.reshape(target_log_probs, (rows, experts))  # log prior_k p_k(y)
    log_mix = tf.reduce_logsumexp(joint, axis=-1)  # (N,)

    def backward(d_nll):
        resp = tf.exp(joint - log_mix[:, None]) * d_nll[:, None]  # r_k, times upstream
        coeff = tf.reshape(resp, (-1,))
        d_logits = unnormalised * (coeff / total)[:, None]
        d_logits = tf.tensor_scatter_nd_sub(d_logits, at_target, coeff)
        d_latent = tf.matmul(tf.cast(d_logits, flat.dtype), tf.cast(embeddings, flat.dtype))
        d_embeddings = tf.matmul(tf.cast(d_logits, flat.dtype), flat, transpose_a=True)
        return (tf.reshape(d_latent, tf.shape(latent)), -resp,
                tf.cast(d_embeddings, embeddings.dtype), tf.reduce_sum(d_logits, axis=0), None)

    return -log_mix, backward


def mixture_nll(latent, log_prior, embeddings, bias, targets):
    """Per-token NLL under the mixture, ``(batch, time)``, without the log-probabilities.

    The training and evaluation path: the same numbers as gathering the target
    from :func:`mixture_log_probs` of the expert logits, computed in log space
    in float32, but no (tokens, K, vocab) log-softmax, weighted sum or their
    gradients are written: the vocabulary-sized work is one matmul, one
    exp-and-sum, one scaling pass and the two gradient matmuls.

    Args:
        latent: ``(batch, time, K, emsize)``; log_prior: ``(batch, time, K)``;
        embeddings: ``(vocab, emsize)``; bias: ``(vocab,)``; targets: int ``(batch, time)``.
    """
    shape = tf.shape(targets)
    experts, size = tf.shape(latent)[-2], tf.shape(latent)[-1]
    nll = _mixture_nll(tf.reshape(latent, (-1, experts, size)),
                       tf.reshape(tf.cast(log_prior, tf.float32), (-1, experts)),
                       tf.convert_to_tensor(embeddings), tf.convert_to_tensor(bias),
                       tf.reshape(targets, (-1,)))
    return tf.reshape(nll, shape)


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
        logits = ops.einsum("btke,ve->btkv", latent, ops.cast(embeddings, latent.dtype))
        logits = ops.cast(logits, "float32") + ops.cast(self.bias, "float32")  # (B, T, K, V)
        return mixture_log_probs(logits, log_prior)

    def nll(self, hidden, embeddings, targets, training=False):
        """Per-token NLL of ``targets`` (batch, time): :func:`mixture_nll`."""
        log_prior, latent = self.contexts(hidden, training=training)
        return mixture_nll(latent, log_prior, embeddings, self.bias, targets)
