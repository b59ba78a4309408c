"""Dynamic evaluation: adapt the weights to the test stream while scoring it.

Krause et al. (2018, "Dynamic Evaluation of Neural Sequence Models"), as Yang
et al. use it for their MoS results: score a short segment, then take one
gradient step on it before scoring the next, so recent text shapes the next
predictions. The step is RMS-normalised by gradient statistics gathered once
on the training data, and every weight decays back towards its trained value
at a rate proportional to that RMS ("global prior"):

    w <- w - lr * g / (rms + epsilon) + lamb * decay * (w_trained - w)

with ``decay = rms / mean(rms)`` (the mean taken over parameter tensors). The
model runs without dropout throughout; the trained weights are restored after.
"""

import numpy as np
import tensorflow as tf

from mosbench.data.batching import batchify, windows


def _gradient_step(model):
    @tf.function(reduce_retracing=True)
    def step(inputs, targets, states):
        with tf.GradientTape() as tape:
            nll, states, _ = model.nll(inputs, targets, states, training=False)
            loss = tf.reduce_mean(nll)
        return tf.reduce_sum(nll), tape.gradient(loss, model.trainable_variables), states

    return step


def gradient_rms(model, train_ids, batch_size, bptt, max_batches=None):
    """Root mean square of each weight's gradient over windows of the training data."""
    step = _gradient_step(model)
    squares = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    states, count = model.initial_state(batch_size), 0
    for inputs, targets in windows(batchify(train_ids, batch_size), bptt):
        _, grads, states = step(tf.constant(inputs), tf.constant(targets), states)
        for square, grad in zip(squares, grads, strict=True):
            square += np.square(tf.convert_to_tensor(grad).numpy())
        count += 1
        if max_batches and count >= max_batches:
            break
    return [np.sqrt(square / count).astype(np.float32) for square in squares]


def dynamic_evaluation(model, train_ids, ids, *, lr, lamb, epsilon, bptt=5, batch_size=1,
                       stat_batch_size=100, stat_max_batches=None):
    """Mean NLL (nats per token) of ``ids`` under dynamic evaluation."""
    rms = gradient_rms(model, train_ids, stat_batch_size, bptt, stat_max_batches)
    mean_rms = np.mean([r.mean() for r in rms])
    decay = [tf.constant(lamb * r / mean_rms) for r in rms]
    scale = [tf.constant(lr / (r + epsilon)) for r in rms]
    variables = model.trainable_variables
    trained = [tf.identity(v) for v in variables]
    step = _gradient_step(model)

    @tf.function
    def adapt(grads):
        for v, g, s, d, w0 in zip(variables, grads, scale, decay, trained, strict=True):
            v.assign_add(d * (w0 - v) - s * tf.convert_to_tensor(g))

    states, total, count = model.initial_state(batch_size), 0.0, 0
    try:
        for inputs, targets in windows(batchify(ids, batch_size), bptt):
            nll, grads, states = step(tf.constant(inputs), tf.constant(targets), states)
            total += float(nll)  # scored before the weights see these targets
            count += targets.size
            adapt(grads)
    finally:
        for v, w0 in zip(variables, trained, strict=True):
            v.assign(w0)
    return total / count
