"""Activation regularisation (AR) and temporal activation regularisation (TAR).

Merity et al. (2017, "Revisiting Activation Regularization for Language RNNs")
penalise large activations and fast-changing ones of the last LSTM layer. As in
the reference code, AR uses the *dropped* output and TAR the *raw* output,
both averaged over every element, in float32 (the loss' dtype under a mixed
policy).
"""

from keras import ops


def activation_penalty(dropped_output, alpha):
    """AR: ``alpha * mean(h**2)`` over the dropped last-layer output ``(batch, time, H)``."""
    return alpha * ops.mean(ops.square(ops.cast(dropped_output, "float32")))


def temporal_activation_penalty(raw_output, beta):
    """TAR: ``beta * mean((h_t - h_{t-1})**2)`` over the raw last-layer output ``(B, T, H)``."""
    raw = ops.cast(raw_output, "float32")
    return beta * ops.mean(ops.square(raw[:, 1:] - raw[:, :-1]))
