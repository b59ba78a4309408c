"""The hand-differentiated LSTM recurrence against keras.layers.LSTM on the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mosbench.engines.tensorflow.models.fast_lstm import lstm_sequence


@pytest.fixture
def keras_lstm():
    """A built keras.layers.LSTM (H=7) and a random batch, initial state and output weights."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 9, 5)), tf.float32)
    h0, c0 = (tf.constant(rng.normal(size=(4, 7)), tf.float32) for _ in range(2))
    layer = keras.layers.LSTM(7, return_sequences=True, return_state=True,
                              bias_initializer="random_uniform")
    layer(x, initial_state=[h0, c0])
    # Weights on the outputs and final state, so every gradient path is exercised.
    w_out, w_h, w_c = (tf.constant(rng.normal(size=s), tf.float32)
                       for s in [(4, 9, 7), (4, 7), (4, 7)])
    return layer, x, h0, c0, (w_out, w_h, w_c)


def _loss_and_grads(run, x, h0, c0, variables, weights):
    w_out, w_h, w_c = weights
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        outputs, h, c = run(x, h0, c0)
        loss = (tf.reduce_sum(outputs * w_out) + tf.reduce_sum(h * w_h)
                + tf.reduce_sum(c * w_c))
    return (outputs, h, c), tape.gradient(loss, [x, h0, c0, *variables])


def test_fast_lstm_equals_the_keras_layer_in_values_and_gradients(keras_lstm):
    layer, x, h0, c0, weights = keras_lstm
    cell = layer.cell
    variables = [cell.kernel, cell.recurrent_kernel, cell.bias]

    def plain(x, h0, c0):
        return layer(x, initial_state=[h0, c0])

    def fast(x, h0, c0):
        outputs, (h, c) = lstm_sequence(x, h0, c0, cell.kernel, cell.recurrent_kernel,
                                        cell.bias)
        return outputs, h, c

    expected, expected_grads = _loss_and_grads(plain, x, h0, c0, variables, weights)
    for run in (fast, tf.function(fast)):  # eager and compiled
        got, grads = _loss_and_grads(run, x, h0, c0, variables, weights)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        names = ["x", "h0", "c0", "kernel", "recurrent_kernel", "bias"]
        for name, a, b in zip(names, grads, expected_grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fast_lstm_gradient_when_only_the_outputs_are_used(keras_lstm):
    layer, x, h0, c0, _ = keras_lstm
    cell = layer.cell
    variables = [cell.recurrent_kernel]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, initial_state=[h0, c0])[0] ** 2)
    expected = tape.gradient(loss, variables)
    with tf.GradientTape() as tape:
        outputs, _ = lstm_sequence(x, h0, c0, cell.kernel, cell.recurrent_kernel, cell.bias)
        loss = tf.reduce_sum(outputs ** 2)
    np.testing.assert_allclose(tape.gradient(loss, variables)[0], expected[0], rtol=1e-4,
                               atol=1e-5)
