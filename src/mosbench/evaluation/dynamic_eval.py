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
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        return loss, grads, states

    return step


def gradient_statistics(model, train_ids, batch_size, bptt, max_batches=None):
    """Per weight, the root of the summed squared gradients over the training windows.

    Each window's gradient is that of its mean NLL; the state is carried from
    window to window, as in training.
    """
    step = _gradient_step(model)
    squares = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    states, count = model.initial_state(batch_size), 0
    for inputs, targets in windows(batchify(train_ids, batch_size), bptt):
        _, grads, states = step(tf.constant(inputs), tf.constant(targets), states)
        for square, grad in zip(squares, grads, strict=True):
            square += np.square(grad.numpy(), dtype=np.float64)
        count += 1
        if max_batches and count >= max_batches:
            break
    return [np.sqrt(square) for square in squares]


def decay_rates(statistics, lamb):
    """Each weight's decay rate: its statistic over the sum of the tensors' means, <= 1/lamb."""
    total = sum(float(s.mean()) for s in statistics)
    rates = [s / total for s in statistics]
    return [np.minimum(r, 1.0 / lamb) for r in rates] if lamb > 0 else rates


def adaptive_losses(model, ids, statistics, *, lr, lamb, epsilon, bptt=5, batch_size=1):
    """Score ``ids`` segment by segment, adapting after each; leaves the weights adapted.

    Returns ``(losses, tokens)``: each segment's mean NLL, scored before the
    weights saw its targets, and its token count.
    """
    variables = model.trainable_variables
    rates = decay_rates(statistics, lamb)
    decay = [tf.constant(lamb * r, v.dtype) for r, v in zip(rates, variables, strict=True)]
    scale = [tf.constant(lr / (s + epsilon), v.dtype)
             for s, v in zip(statistics, variables, strict=True)]
    trained = [tf.identity(v) for v in variables]
    step = _gradient_step(model)

    @tf.function
    def adapt(grads):
        for v, g, s, d, w0 in zip(variables, grads, scale, decay, trained, strict=True):
            v.assign_add(d * (w0 - v) - s * g)

    states, losses, tokens = model.initial_state(batch_size), [], []
    for inputs, targets in windows(batchify(ids, batch_size), bptt):
        loss, grads, states = step(tf.constant(inputs), tf.constant(targets), states)
        losses.append(float(loss))
        tokens.append(targets.size)
        adapt(grads)
    return np.array(losses), np.array(tokens)


def dynamic_evaluation(model, train_ids, ids, *, lr, lamb, epsilon, bptt=5, batch_size=1,
                       stat_batch_size=100, stat_max_batches=None):
    """Mean NLL (nats per token) of ``ids`` under dynamic evaluation."""
    statistics = gradient_statistics(model, train_ids, stat_batch_size, bptt, stat_max_batches)
    trained = [v.numpy() for v in model.trainable_variables]
    try:
        losses, tokens = adaptive_losses(model, ids, statistics, lr=lr, lamb=lamb,
                                         epsilon=epsilon, bptt=bptt, batch_size=batch_size)
    finally:
        for v, w0 in zip(model.trainable_variables, trained, strict=True):
            v.assign(w0)
    return float((losses * tokens).sum() / tokens.sum())
