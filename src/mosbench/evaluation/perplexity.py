"""Perplexity of a model on a token stream, with the state carried across windows.

Framework-neutral: the engine scores each window (``Engine.eval_window``).
"""

import math
import time

import numpy as np

from mosbench.data.batching import batchify, windows
from mosbench.progress import Progress


def evaluate_loss(engine, ids, batch_size, bptt, what="evaluate"):
    """Mean negative log-likelihood (nats per token) over the batchified stream.

    ``what`` names the pass in its progress report (:mod:`mosbench.progress`).
    """
    streams = batchify(ids, batch_size)
    progress = Progress(what, math.ceil((streams.shape[1] - 1) / bptt))
    states = engine.initial_state(batch_size)
    total, count = 0.0, 0
    try:
        for done, (inputs, targets) in enumerate(windows(streams, bptt), start=1):
            loss, states = engine.eval_window(inputs, targets, states)
            total += loss
            count += targets.size
            progress.update(done, tokens=count,
                            fields=[("ppl", f"{perplexity(total / count):.2f}")])
    finally:
        progress.close()
    return total / count


def eval_throughput(engine, ids, batch_size, bptt, what="evaluate (timed)"):
    """Tokens per second of batched scoring: one timed pass over ``ids``.

    Call it after the engine has scored the same stream once, so tracing or
    compiling (full and short last window) is not in the time.
    """
    start = time.perf_counter()
    evaluate_loss(engine, ids, batch_size, bptt, what)
    return len(ids) / (time.perf_counter() - start)


def perplexity(loss):
    """exp(loss), kept finite for logging when a model has diverged."""
    return math.exp(min(loss, 700.0))


def next_word_latency(engine, ids, warmup=10, samples=100):
    """Median and p95 milliseconds to predict one next word at batch size 1.

    Each sample feeds one token and carries the state, as a live predictor
    would; ``warmup`` calls (tracing, allocation) are excluded.
    """
    states = engine.initial_state(1)
    times = []
    for i in range(warmup + samples):
        start = time.perf_counter()
        _, states = engine.predict_next(int(ids[i % len(ids)]), states)  # waits for the word
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times)), float(np.percentile(times, 95))
