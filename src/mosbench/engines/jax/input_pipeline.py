"""The training windows the way JAX users feed them: NumPy, streamed or cached.

JAX has no input pipeline of its own (its documentation points to
tf.data, Grain or plain NumPy); the windows are NumPy views of the batched
streams, which ``jax.device_put`` takes as they are. ``stream`` reads the
Parquet split with PyArrow on every pass; ``cache_memory`` keeps the batched
streams after the first pass; ``cache_file`` saves them with ``np.save`` on
the first pass and memory-maps the file after.
"""

import numpy as np

from mosbench.data.batching import batchify, read_ids, windows


def _one_pass(streams, bptt):
    """Every window of one pass: (input tokens, sum of the target ids)."""
    tokens, checksum = 0, 0
    for inputs, targets in windows(streams, bptt):
        tokens += inputs.size
        checksum += int(targets.sum(dtype=np.int64))
    return tokens, checksum


def input_pipelines(train_path, batch_size, bptt, cache_file):
    """One whole pass of each pipeline, as ``Engine.input_pipelines`` wants."""
    cache_file = cache_file.with_suffix(".npy")
    memory = {}

    def streamed():
        return batchify(read_ids(train_path), batch_size)

    def in_memory():
        if "streams" not in memory:
            memory["streams"] = streamed()
        return memory["streams"]

    def in_file():
        if cache_file.exists():
            return np.load(cache_file, mmap_mode="r")
        streams = streamed()
        np.save(cache_file, streams)
        return streams

    return {name: (lambda make=make: _one_pass(make(), bptt))
            for name, make in (("stream", streamed), ("cache_memory", in_memory),
                               ("cache_file", in_file))}
