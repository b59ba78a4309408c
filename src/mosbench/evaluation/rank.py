"""Rank of a model's log-probability matrix: the softmax bottleneck, measured.

Yang et al. (2018, Table 5) stack the log-probability rows ``log p(. | c)`` of
many contexts c into a (contexts x vocabulary) matrix A. A softmax over a
d-dimensional hidden state gives ``A = H E^T + 1 b^T - lse 1^T``, whose rank
is at most d+2 (d+1 up to the normaliser column), whatever is learnt; a mixture of
softmaxes has no such bound. The rank is estimated from singular values with
a float32-appropriate tolerance, since the rows come from float32 arithmetic.
"""

import numpy as np

from mosbench.data.batching import batchify, windows
from mosbench.progress import Progress

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def logprob_matrix(engine, ids, contexts, batch_size=10, bptt=35):
    """``(contexts, vocab)`` float64 log-probability rows of the first contexts of ``ids``.

    The stream is read as in evaluation (state carried, no dropout); rows are
    taken window by window until ``contexts`` rows are collected.
    """
    batch_size = max(1, min(batch_size, (len(ids) - 1) // 2))
    states = engine.initial_state(batch_size)
    collected, count = [], 0
    progress = Progress("rank: log-probability rows", contexts, unit="row")
    try:
        for inputs, _ in windows(batchify(ids, batch_size), bptt):
            block, states = engine.log_prob_rows(inputs, states)
            collected.append(block)
            count += block.shape[0]
            progress.update(min(count, contexts))
            if count >= contexts:
                break
    finally:
        progress.close()
    return np.concatenate(collected)[:contexts]


def numerical_rank(matrix, eps=FLOAT32_EPS):
    """Number of singular values above ``s_max * max(shape) * eps`` (NumPy's rule, float32 eps)."""
    singular = np.linalg.svd(matrix, compute_uv=False)
    return int((singular > singular.max() * max(matrix.shape) * eps).sum())


def logprob_rank(engine, ids, contexts, batch_size=10, bptt=35):
    """Estimated rank of the log-probability matrix over the first ``contexts`` contexts."""
    matrix = logprob_matrix(engine, ids, contexts, batch_size, bptt)
    return numerical_rank(matrix), matrix.shape[0]
