"""TensorFlow's embedding-dropout draw, for observing it (:mod:`mosbench.engines.mask_draws`)."""

import tensorflow as tf

from mosbench.engines.tensorflow.models.embedding_dropout import embedding_dropout


def embedding_rows(engine, tokens, rate):
    """Through the model's ``embedding_seed``, the seed generator its training forwards use."""
    m = engine.model
    ones = tf.ones(m.embedding.embeddings.shape)
    rate = m.dropoute if rate is None else rate
    return embedding_dropout(ones, tf.constant(tokens), rate, m.embedding_seed, True).numpy()
