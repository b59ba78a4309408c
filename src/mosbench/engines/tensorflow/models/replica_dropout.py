"""Dropout masks that differ between data-parallel replicas.

Under ``tf.distribute.MirroredStrategy`` every replica reads the same
``SeedGenerator`` state, so ``keras.random.dropout`` would draw the *same*
mask on every replica: the replicas' sequences would share their dropout
noise, unlike one device processing the whole batch. The masks here fold the
replica's index into the seed, so each replica draws its own. (Weight drop
deliberately keeps ``keras.random.dropout``: its mask is one per global
minibatch, shared by all replicas.)
"""

import tensorflow as tf


def replica_seed(seed_generator):
    """The generator's next seed, made distinct per replica (unchanged on one device)."""
    seed = tf.cast(seed_generator.next(), tf.int64)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    return seed + tf.stack([tf.constant(0, tf.int64), (replica + 1) * (1 << 40)])


def dropout_mask(shape, rate, seed_generator, dtype="float32"):
    """A mask of 0 and 1/(1-rate) entries, independent between replicas."""
    keep = tf.random.stateless_uniform(shape, seed=replica_seed(seed_generator)) >= rate
    return tf.cast(keep, dtype) / (1.0 - rate)
