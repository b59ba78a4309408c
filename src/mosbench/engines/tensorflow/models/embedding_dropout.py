"""Embedding dropout: drop whole words, not single coordinates.

Gal & Ghahramani (2016) drop rows of the embedding matrix: a dropped word is
zero wherever it appears in the batch, and the surviving rows are scaled by
1/(1-p). Only the lookup uses the dropped matrix; a decoder tied to the
embedding keeps the full one, as in the reference.
"""

from keras import ops

from mosbench.engines.tensorflow.models.replica_dropout import dropout_mask


def embedding_dropout(embeddings, tokens, rate, seed_generator, training):
    """Look up ``tokens`` in ``embeddings`` with whole rows dropped.

    Args:
        embeddings: ``(vocab, emsize)`` matrix.
        tokens: int ``(batch, time)``.
        rate: probability of dropping a word type (the reference's ``dropoute``).
        seed_generator: a ``keras.random.SeedGenerator``.
        training: apply the mask only when true.

    Returns:
        ``(batch, time, emsize)``; in training every occurrence of a dropped
        word type is all zeros and the rest are scaled by 1/(1-rate).
    """
    if training and rate > 0:
        # (vocab, 1): one draw per word type; replicas draw their own.
        keep = dropout_mask((ops.shape(embeddings)[0], 1), rate, seed_generator,
                            embeddings.dtype)
        embeddings = embeddings * keep
    return ops.take(embeddings, tokens, axis=0)
