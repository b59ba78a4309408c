"""The training windows as ``tf.data`` pipelines: streamed, cached in memory, cached in a file."""

import tensorflow as tf

from mosbench.data.batching import batchify, read_ids


def _cut_windows(streams, bptt):
    """The windows of ``batching.windows`` as a dataset: bptt steps, the last one shorter."""
    steps = tf.shape(streams, out_type=tf.int64)[1]

    def cut(start):
        end = tf.minimum(start + bptt, steps - 1)
        return streams[:, start:end], streams[:, start + 1 : end + 1]

    return tf.data.Dataset.range(0, steps - 1, bptt).map(cut)


def train_datasets(train_path, batch_size, bptt, cache_file):
    """The ``stream``, ``cache_memory``, ``cache_file`` datasets over one split's Parquet file.

    Each yields int32 ``(inputs, targets)`` of shape ``(batch_size, <= bptt)``
    in the training loop's order. ``stream`` reads the Parquet file again on
    every pass; the cached ones fill their cache on the first full pass.
    """

    # batchify lays contiguous streams side by side, so the first window already needs
    # tokens from across the whole file: each pass reads it all and yields the streams
    # once. TF ops cut the windows: a Python yield per window costs ~0.5 ms, more than
    # reading PTB's train split.
    def generate():
        yield batchify(read_ids(train_path), batch_size)

    streams = tf.TensorSpec((batch_size, None), tf.int32)
    stream = tf.data.Dataset.from_generator(generate, output_signature=streams)
    stream = stream.flat_map(lambda s: _cut_windows(s, bptt))
    return {"stream": stream, "cache_memory": stream.cache(),
            "cache_file": stream.cache(str(cache_file))}


def input_pipelines(train_path, batch_size, bptt, cache_file):
    """One whole pass of each of :func:`train_datasets`, as ``Engine.input_pipelines`` wants."""
    datasets = train_datasets(train_path, batch_size, bptt, cache_file)
    return {name: (lambda d=dataset: _consume(d)) for name, dataset in datasets.items()}


def _consume(dataset):
    """Iterate ``dataset`` to its end; (input tokens, checksum of the target ids)."""
    def add(totals, window):
        inputs, targets = window
        return (totals[0] + tf.size(inputs, tf.int64),
                totals[1] + tf.reduce_sum(tf.cast(targets, tf.int64)))

    tokens, checksum = dataset.reduce((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), add)
    return int(tokens), int(checksum)
