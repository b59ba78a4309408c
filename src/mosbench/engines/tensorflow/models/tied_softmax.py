"""The softmax output layer tied to the input embedding."""

import keras
import tensorflow as tf
from keras import ops


def _decoder_nll(hidden, embeddings, bias, targets):
    flat = tf.reshape(hidden, (-1, tf.shape(hidden)[-1]))
    logits = tf.matmul(flat, tf.cast(embeddings, flat.dtype), transpose_b=True)
    logits = tf.cast(logits, tf.float32) + bias  # the loss in float32 whatever the compute
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.reshape(targets, (-1,)), logits)
    return tf.reshape(nll, tf.shape(targets))


# XLA fuses the softmax passes into the matmul's output: on the CPUs measured, the
# forward pass ran 25-45% faster than TensorFlow's default kernels, but the compiled
# gradient ran 5-25% slower (benchmarks/README.md), so only passes without a gradient use
# it, and only in float32: in bfloat16 oneDNN's kernels beat it (AVX512-BF16: 71 against
# 81 ms per evaluation step of lstm-wt2). It compiles once per distinct input shape.
_decoder_nll_xla = tf.function(_decoder_nll, jit_compile=True, reduce_retracing=True)


def decoder_nll(hidden, embeddings, bias, targets, xla=False, training=False):
    """Per-token NLL of ``targets`` under ``softmax(h E^T + b)``, without the log-probabilities.

    The training and evaluation path: the same number as gathering the target
    from :class:`TiedSoftmax`'s output, but the matmul takes E as stored
    (``transpose_b``, no transposed copy of the vocabulary-sized matrix) and
    softmax, loss and its gradient are one fused kernel, so no (tokens, vocab)
    log-probability tensor or its gradient is written.

    Args:
        hidden: ``(batch, time, emsize)``; embeddings: ``(vocab, emsize)``;
        bias: ``(vocab,)``; targets: int ``(batch, time)``.
        xla: compile it with XLA (the ``xla_decoder`` hyperparameter) outside training:
            evaluation, testing and prediction in float32; a training step and bfloat16
            compute keep the default kernels.
        training: whether this is a training step's pass.

    Returns:
        ``(batch, time)`` float32.
    """
    use_xla = xla and not training and hidden.dtype == tf.float32
    run = _decoder_nll_xla if use_xla else _decoder_nll
    return run(hidden, tf.convert_to_tensor(embeddings), tf.convert_to_tensor(bias), targets)


class TiedSoftmax(keras.layers.Layer):
    """``log_softmax(h E^T + b)`` with E the embedding matrix (Press & Wolf 2017).

    Semantics: the decoder weight *is* the embedding (no copy, one gradient
    sum); only the bias ``b`` (zeros at init, as the reference) belongs here.
    Log-probabilities are computed in float32 whatever the input dtype. The
    log-probability matrix over contexts has rank at most d+1 (d = hidden
    size): the softmax bottleneck.

    Args:
        vocab_size: number of word types.
        xla_decoder: compile :meth:`nll` with XLA (:func:`decoder_nll`).

    Call arguments:
        hidden: ``(batch, time, emsize)``.
        embeddings: ``(vocab, emsize)``.

    Returns:
        ``(batch, time, vocab)`` log-probabilities.
    """

    def __init__(self, vocab_size, xla_decoder=False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.xla_decoder = xla_decoder
        self.bias = self.add_weight(shape=(vocab_size,), initializer="zeros", name="bias")

    def call(self, hidden, embeddings, training=False):
        logits = ops.matmul(hidden, ops.transpose(embeddings)) + self.bias  # (B, T, V)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def nll(self, hidden, embeddings, targets, training=False):
        """Per-token NLL of ``targets`` (batch, time): :func:`decoder_nll`."""
        return decoder_nll(hidden, embeddings, self.bias, targets, self.xla_decoder, training)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "xla_decoder": self.xla_decoder}
