"""Perplexity of a model on a token stream, with the state carried across windows."""

import math
import time

import numpy as np
import tensorflow as tf

from mosbench.data.batching import batchify, windows


def make_eval_step(model):
    """A compiled step returning the summed loss of a window and the next state.

    The time dimension is left unknown in the signature, so the short last
    window reuses the same graph.
    """

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, states):
        nll, states, _ = model.nll(inputs, targets, states, training=False)
        return tf.reduce_sum(nll), states

    return step


def evaluate_loss(model, ids, batch_size, bptt, step=None):
    """Mean negative log-likelihood (nats per token) over the batchified stream."""
    step = step or make_eval_step(model)
    streams = batchify(ids, batch_size)
    states = model.initial_state(batch_size)
    total, count = 0.0, 0
    for inputs, targets in windows(streams, bptt):
        loss, states = step(tf.constant(inputs), tf.constant(targets), states)
        total += float(loss)
        count += targets.size
    return total / count


def eval_throughput(model, ids, batch_size, bptt, step):
    """Tokens per second of batched scoring: one timed pass over ``ids`` with ``step``.

    Call it after ``step`` has scored the same stream once, so tracing (full
    and short last window) is not in the time.
    """
    start = time.perf_counter()
    evaluate_loss(model, ids, batch_size, bptt, step)
    return len(ids) / (time.perf_counter() - start)


def perplexity(loss):
    """exp(loss), kept finite for logging when a model has diverged."""
    return math.exp(min(loss, 700.0))


def next_word_latency(model, ids, warmup=10, samples=100):
    """Median and p95 milliseconds to predict one next word at batch size 1.

    Each sample feeds one token and carries the state, as a live predictor
    would; ``warmup`` calls (tracing, allocation) are excluded.
    """
    import time

    @tf.function
    def predict(token, states):
        log_probs, states, _ = model(token, states, training=False)
        return tf.argmax(log_probs[:, -1], axis=-1), states

    states = model.initial_state(1)
    times = []
    for i in range(warmup + samples):
        token = tf.constant([[ids[i % len(ids)]]], dtype=tf.int32)
        start = time.perf_counter()
        word, states = predict(token, states)
        word.numpy()  # wait for the result before reading the clock
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times)), float(np.percentile(times, 95))
