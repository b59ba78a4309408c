"""Mixture of Contexts (MoC): the paper's low-rank ablation of MoS."""

from keras import ops

from mosbench.engines.tensorflow.models.expert_contexts import MixtureHead
from mosbench.engines.tensorflow.models.tied_softmax import decoder_nll


class MixtureOfContexts(MixtureHead):
    """``p(w|h) = softmax(sum_k prior_k(h) (latent_k(h) E^T + b))(w)``.

    Semantics: the same K latent contexts and mixture weights as MoS, but
    mixed *before* the softmax. Because sum_k prior_k = 1 that is one softmax
    on the mixed context ``sum_k prior_k latent_k``, so the log-probability
    matrix keeps rank at most emsize+1: MoC has MoS's parameters and
    non-linearity but not its rank (Yang et al. 2018, section 3.3).

    Args, call arguments and returns: as :class:`MixtureOfSoftmaxes`, plus
    ``xla_decoder`` (compile :meth:`nll` with XLA, :func:`decoder_nll`).
    """

    def __init__(self, vocab_size, n_experts, emsize, latent_dropout=0.0, seed=None,
                 xla_decoder=False, **kwargs):
        super().__init__(vocab_size, n_experts, emsize, latent_dropout, seed, **kwargs)
        self.xla_decoder = xla_decoder

    def mixed_context(self, hidden, training):
        log_prior, latent = self.contexts(hidden, training=training)  # (B,T,K), (B,T,K,E)
        prior = ops.exp(log_prior)
        return ops.einsum("btk,btke->bte", ops.cast(prior, latent.dtype), latent)  # (B, T, E)

    def call(self, hidden, embeddings, training=False):
        mixed = self.mixed_context(hidden, training)
        logits = ops.matmul(mixed, ops.transpose(embeddings)) + self.bias  # (B, T, V)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def nll(self, hidden, embeddings, targets, training=False):
        """Per-token NLL of ``targets`` (batch, time), through the fused softmax loss."""
        return decoder_nll(self.mixed_context(hidden, training), embeddings, self.bias, targets,
                           self.xla_decoder, training)

    def get_config(self):
        return {**super().get_config(), "xla_decoder": self.xla_decoder}
