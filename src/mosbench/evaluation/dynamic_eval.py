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

A pass can stop after any segment and go on later (:func:`adaptive_pass`
asks ``stop()`` after each one and returns a :class:`PassState`): evaluate
saves it on SIGTERM or when its time is up and resumes from it
(:mod:`mosbench.evaluation.resume`), with the result of an uninterrupted pass.
"""

import dataclasses
import itertools
import math

import numpy as np

from mosbench import faults
from mosbench.data.batching import batchify, windows
from mosbench.engines.interface import AdaptiveCarry
from mosbench.progress import Progress, reporting

# The preset's dynamic_eval keys that each part takes.
STATISTICS_OPTIONS = ("bptt", "stat_batch_size", "stat_max_batches")
PASS_OPTIONS = ("lr", "lamb", "epsilon", "bptt", "batch_size")


def _tokens(window):
    return window[1].size


def decay_rates(statistics, lamb):
    """Each weight's decay rate: its statistic over the sum of the tensors' means, <= 1/lamb."""
    total = sum(float(s.mean()) for s in statistics)
    rates = [s / total for s in statistics]
    return [np.minimum(r, 1.0 / lamb) for r in rates] if lamb > 0 else rates


@dataclasses.dataclass
class PassState:
    """Where a pass is after some segments: what it needs to go on.

    ``losses``: each scored segment's mean NLL, in order; ``weights``: the
    adapted weights after them (``Engine.weights`` names); ``states``: the
    LSTM states carried into the next segment (``Engine.state_arrays``).
    """

    losses: list = dataclasses.field(default_factory=list)
    weights: dict | None = None
    states: list | None = None


def options_for(part, options):
    """The preset's ``dynamic_eval`` options that ``part`` (STATISTICS_OPTIONS or
    PASS_OPTIONS) takes; absent ones keep the functions' defaults."""
    return {key: options[key] for key in part if key in options}


def gradient_statistics(engine, train_ids, *, bptt=5, stat_batch_size=100,
                        stat_max_batches=None):
    """Each trained weight's statistic over the training windows (``ms`` above)."""
    stat_streams = batchify(train_ids, stat_batch_size)
    stat_count = math.ceil((stat_streams.shape[1] - 1) / bptt)
    if stat_max_batches is not None:
        stat_count = min(stat_count, stat_max_batches)
    return engine.gradient_statistics(
        reporting(itertools.islice(windows(stat_streams, bptt), stat_max_batches),
                  "dynamic evaluation: gradient statistics", stat_count,
                  tokens_per_item=_tokens),
        stat_batch_size)


def _segments(segments, start, stop, what):
    """Yield ``segments[start:]`` to the engine, reporting; end early once ``stop()`` is true.

    A segment is done (scored, its update made) when the engine asks for the
    next one: there the pass may stop. Never before the first segment, so
    every call moves on.
    """
    left = len(segments) - start
    progress = Progress(f"dynamic evaluation ({what})" + (f" from segment {start + 1}"
                                                          if start else ""), left, unit="segment")
    tokens = 0
    try:
        for done, segment in enumerate(segments[start:]):
            if done:
                progress.update(done, tokens=tokens)
                faults.point("dynamic-segment")
                if stop is not None and stop():
                    return
            yield segment
            tokens += _tokens(segment)
        if left:
            progress.update(left, tokens=tokens)
    finally:
        progress.close()


def adaptive_pass(engine, ids, statistics, *, lr, lamb, epsilon, bptt=5, batch_size=1,
                  what="test", resume=None, stop=None):
    """Score ``ids`` under dynamic evaluation, or as much as ``stop()`` allows.

    Returns ``(mean NLL in nats per token, None)`` once every segment is
    scored, else ``(None, PassState)``; ``resume`` (a saved PassState) goes
    on from there with the same result as a pass never stopped. The engine
    holds the trained weights when it is called and again when it returns.
    ``what`` names the scored split in the progress reports.
    """
    segments = list(windows(batchify(ids, batch_size), bptt))
    resume = resume or PassState()
    carry = AdaptiveCarry(trained=engine.weights(), states=resume.states)
    with engine.weights_restored():
        if resume.weights is not None:
            engine.load_weights(resume.weights)
        losses = resume.losses + engine.adaptive_losses(
            _segments(segments, len(resume.losses), stop, what), statistics,
            decay_rates(statistics, lamb), lr=lr, lamb=lamb, epsilon=epsilon, carry=carry)
        if len(losses) < len(segments):
            return None, PassState(losses, engine.weights(), carry.states)
    tokens = np.array([targets.size for _, targets in segments])
    return float((np.array(losses) * tokens).sum() / tokens.sum()), None


def dynamic_evaluation(engine, train_ids, ids, *, lr, lamb, epsilon, bptt=5, batch_size=1,
                       stat_batch_size=100, stat_max_batches=None, what="test"):
    """Mean NLL (nats per token) of ``ids`` under dynamic evaluation, in one go.

    ``what`` names the scored split in the progress reports.
    """
    statistics = gradient_statistics(engine, train_ids, bptt=bptt,
                                     stat_batch_size=stat_batch_size,
                                     stat_max_batches=stat_max_batches)
    return adaptive_pass(engine, ids, statistics, lr=lr, lamb=lamb, epsilon=epsilon, bptt=bptt,
                         batch_size=batch_size, what=what)[0]
