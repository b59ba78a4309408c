"""Dynamic evaluation: adapt the weights to the test stream while scoring it.

Krause et al. (2018, "Dynamic Evaluation of Neural Sequence Models"), as Yang
et al. run it for their MoS results (zihangdai/mos ``dynamiceval.py`` with the
settings of its README). Score a short segment, then take one gradient step on
it before scoring the next, so recent text shapes the next predictions:

    w <- w + lamb * rate * (w_trained - w) - lr * g / (ms + epsilon)

* ``ms`` is a per-weight gradient statistic gathered once on the training
  data: the square root of the *sum* of squared gradients over all statistic
  windows (the reference's default; its ``--ms`` flag, which its README never
  uses, takes the root mean square instead);
* ``rate = ms / sum_tensors(mean(ms))``: the normaliser is the *sum* over the
  parameter tensors of each tensor's mean statistic;
* ``rate`` is capped at ``1 / lamb``, so the decay never overshoots the
  trained weights.

The model runs without dropout throughout (the reference keeps its weight
drop's DropConnect active here, an artefact of its ``use_dropout`` switch not
reaching the wrapper; not inherited). The trained weights are restored after.
The rules are here; the gradient passes are the engine's
(``Engine.gradient_statistics``, ``Engine.adaptive_losses``), since one
update per five tokens must stay on the device.
"""

import itertools
import math

import numpy as np

from mosbench.data.batching import batchify, windows
from mosbench.progress import reporting


def _tokens(window):
    return window[1].size


def decay_rates(statistics, lamb):
    """Each weight's decay rate: its statistic over the sum of the tensors' means, <= 1/lamb."""
    total = sum(float(s.mean()) for s in statistics)
    rates = [s / total for s in statistics]
    return [np.minimum(r, 1.0 / lamb) for r in rates] if lamb > 0 else rates


def dynamic_evaluation(engine, train_ids, ids, *, lr, lamb, epsilon, bptt=5, batch_size=1,
                       stat_batch_size=100, stat_max_batches=None, what="test"):
    """Mean NLL (nats per token) of ``ids`` under dynamic evaluation.

    ``what`` names the scored split in the progress reports.
    """
    stat_streams = batchify(train_ids, stat_batch_size)
    stat_count = math.ceil((stat_streams.shape[1] - 1) / bptt)
    if stat_max_batches is not None:
        stat_count = min(stat_count, stat_max_batches)
    statistics = engine.gradient_statistics(
        reporting(itertools.islice(windows(stat_streams, bptt), stat_max_batches),
                  f"dynamic evaluation: gradient statistics ({what})", stat_count,
                  tokens_per_item=_tokens),
        stat_batch_size)
    segments = list(windows(batchify(ids, batch_size), bptt))
    with engine.weights_restored():
        losses = engine.adaptive_losses(
            reporting(segments, f"dynamic evaluation ({what})", len(segments),
                      tokens_per_item=_tokens, unit="segment"),
            statistics, decay_rates(statistics, lamb), lr=lr, lamb=lamb, epsilon=epsilon)
    tokens = np.array([targets.size for _, targets in segments])
    return float((np.array(losses) * tokens).sum() / tokens.sum())
