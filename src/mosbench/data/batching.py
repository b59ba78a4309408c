"""Batching for truncated back-propagation through time, as in the reference.

The token stream is cut into ``batch_size`` contiguous streams (the tail that
does not fill a row is dropped, as ``batchify`` in the reference does), and
windows of ``bptt`` steps are read off left to right, so the hidden state at
the end of one window is the right start for the next.
"""

import numpy as np
import pyarrow.parquet as pq

from mosbench.errors import MosbenchError


def batchify(ids, batch_size):
    """``(N,)`` ids -> ``(batch_size, N // batch_size)``: row b is the b-th contiguous stream."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise MosbenchError(
            f"{len(ids)} tokens are too few for batch size {batch_size}: expected at least "
            f"{2 * batch_size} (two per stream); lower the preset's batch size or use more data"
        )
    return np.ascontiguousarray(ids[: steps * batch_size].reshape(batch_size, steps))


def windows(streams, bptt):
    """Yield ``(inputs, targets)`` windows of at most ``bptt`` steps, targets shifted by one."""
    steps = streams.shape[1]
    for start in range(0, steps - 1, bptt):
        length = min(bptt, steps - 1 - start)
        yield streams[:, start : start + length], streams[:, start + 1 : start + 1 + length]


def read_ids(path):
    """All ids of a tokenised Parquet file, read record batch by record batch."""
    parquet = pq.ParquetFile(path)
    ids = np.empty(parquet.metadata.num_rows, np.int32)
    filled = 0
    for batch in parquet.iter_batches(columns=["id"]):
        chunk = batch.column(0).to_numpy()
        ids[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return ids
