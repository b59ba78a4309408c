"""The LSTM recurrence with a hand-written backward pass, for devices without cuDNN.

Differentiating a ``tf.scan`` of LSTM steps gives a backward loop that, at
every time step, computes its own small ``h_{t-1}^T dz_t`` gradient of the
recurrent matrix and adds it to a running (H, 4H) sum, and keeps each step's
intermediates in TensorArrays. This module does what cuDNN does instead:

- the input projection of all time steps is one matmul (outside the loop);
- the forward loop keeps only the gate activations and cell states;
- the backward loop does one matmul per step (``dz_t W_hh^T``, the gradient
  flowing to ``h_{t-1}``, on a ``W_hh^T`` transposed once per call) and a few
  elementwise ops: the gate derivatives it multiplies by are computed for all
  steps before it;
- the gradients of the recurrent matrix and of the projected inputs come out
  of it as whole sequences: ``dW_hh`` is one ``(T*B, H)^T (T*B, 4H)`` matmul
  after the loop.

The maths is the LSTM of PyTorch and Keras, gates in the order input, forget,
cell, output; tests/test_fast_lstm.py checks values and gradients against
``keras.layers.LSTM`` on the same weights.
"""

import tensorflow as tf


@tf.custom_gradient
def lstm_recurrence(projected, h0, c0, recurrent):
    """Run the recurrence over projected inputs.

    Args:
        projected: ``(T, B, 4H)``, ``x_t W_ih + b`` for every step.
        h0, c0: ``(B, H)`` initial state.
        recurrent: ``(H, 4H)``, the hidden-to-hidden matrix (already dropped,
            for weight drop).

    Returns:
        ``(hs, h_T, c_T)``: every step's output ``(T, B, H)`` and the final state.
    """

    def forward(carry, z_in):
        h, c, _ = carry
        i, f, g, o = tf.split(z_in + tf.matmul(h, recurrent), 4, axis=-1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c = f * c + i * g
        # the activations are kept for the backward pass, as one (B, 4H) block per step
        return o * tf.tanh(c), c, tf.concat([i, f, g, o], axis=-1)

    zero_act = tf.zeros_like(projected[0])
    hs, cs, acts = tf.scan(forward, projected, initializer=(h0, c0, zero_act))

    def backward(d_hs, d_h_last, d_c_last):
        d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
        d_h_last = tf.zeros_like(h0) if d_h_last is None else d_h_last
        d_c_last = tf.zeros_like(c0) if d_c_last is None else d_c_last
        # Everything that does not depend on the gradient flowing back is computed for
        # all steps at once, outside the loop: per step, the loop then runs 7 small ops.
        c_prev = tf.concat([c0[None], cs[:-1]], axis=0)
        i, f, g, o = tf.split(acts, 4, axis=-1)
        tanh_c = tf.tanh(cs)
        d_c_from_h = o * (1.0 - tanh_c * tanh_c)  # dc_t/dh_t through h = o tanh(c)
        # dz = [dc, dc, dc, dh] * d_gates: the gates' derivatives times their partners
        d_gates = tf.concat([g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g),
                             tanh_c * o * (1.0 - o)], axis=-1)
        # Transposed once per call: oneDNN's small-batch matmul with transpose_b ran at a
        # quarter of the speed of the same product on a row-major operand (70 per-step calls).
        recurrent_t = tf.transpose(recurrent)

        def step(carry, elems):
            dh_next, dc_next, _ = carry
            d_out, dc_dh, d_gate, forget = elems
            dh = d_out + dh_next
            dc = dc_next + dh * dc_dh
            dz = tf.concat([dc, dc, dc, dh], axis=-1) * d_gate
            return tf.matmul(dz, recurrent_t), dc * forget, dz

        # The last step also receives the gradient of the returned final state.
        d_hs = tf.tensor_scatter_nd_add(d_hs, [[tf.shape(hs)[0] - 1]], d_h_last[None])
        # Reverse scan: index 0 of each stacked carry is the value after step 0.
        dhs_prev, dcs_prev, dzs = tf.scan(step, (d_hs, d_c_from_h, d_gates, f),
                                          initializer=(tf.zeros_like(h0), d_c_last, zero_act),
                                          reverse=True)
        h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
        units = tf.shape(h0)[-1]
        d_recurrent = tf.matmul(tf.reshape(h_prev, (-1, units)),
                                tf.reshape(dzs, (-1, 4 * units)), transpose_a=True)
        return dzs, dhs_prev[0], dcs_prev[0], d_recurrent

    return (hs, hs[-1], cs[-1]), backward


def lstm_sequence(inputs, h0, c0, kernel, recurrent, bias):
    """A whole LSTM layer on batch-major inputs: ``(B, T, D)`` -> ``(B, T, H), (h, c)``.

    The input projection of every step is one matmul; the recurrence is
    :func:`lstm_recurrence`. ``bias`` is the (summed) gate bias ``(4H,)``.
    The layer computes in the inputs' dtype (bfloat16 under a mixed policy);
    the returned state keeps the dtype of the state passed in.
    """
    state_dtype, dtype = h0.dtype, inputs.dtype
    # Tensors, not variables: the custom gradient must see no variable reads.
    kernel, recurrent, bias, h0, c0 = (tf.cast(t, dtype)
                                       for t in (kernel, recurrent, bias, h0, c0))
    projected = tf.einsum("btd,dg->tbg", inputs, kernel) + bias  # (T, B, 4H)
    hs, h, c = lstm_recurrence(projected, h0, c0, recurrent)
    return tf.transpose(hs, (1, 0, 2)), (tf.cast(h, state_dtype), tf.cast(c, state_dtype))
