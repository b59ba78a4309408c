"""The softmax output layer tied to the input embedding."""

import keras
from keras import ops


class TiedSoftmax(keras.layers.Layer):
    """``log_softmax(h E^T + b)`` with E the embedding matrix (Press & Wolf 2017).

    Semantics: the decoder weight *is* the embedding (no copy, one gradient
    sum); only the bias ``b`` (zeros at init, as the reference) belongs here.
    Log-probabilities are computed in float32 whatever the input dtype. The
    log-probability matrix over contexts has rank at most d+1 (d = hidden
    size): the softmax bottleneck.

    Args:
        vocab_size: number of word types.

    Call arguments:
        hidden: ``(batch, time, emsize)``.
        embeddings: ``(vocab, emsize)``.

    Returns:
        ``(batch, time, vocab)`` log-probabilities.
    """

    def __init__(self, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.bias = self.add_weight(shape=(vocab_size,), initializer="zeros", name="bias")

    def call(self, hidden, embeddings, training=False):
        logits = ops.matmul(hidden, ops.transpose(embeddings)) + self.bias  # (B, T, V)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}
