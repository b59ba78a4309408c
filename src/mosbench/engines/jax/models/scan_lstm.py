"""One LSTM layer as a ``lax.scan``, its input projection hoisted out of the loop.

JAX has no LSTM layer for the CPU (``jax.experimental.rnn.lstm`` is cuDNN's,
GPU only: ``cudnn_lstm.py``, chosen in ``recurrence.py``). The input-to-hidden
product of every time step is one matmul before the scan, so the loop body
holds only the ``(batch, hidden) x (hidden, 4 hidden)`` recurrence and the
gates. Gates are stacked i, f, g, o as in the canonical
weights (``(out, in)`` matrices: ``x @ w.T``).
"""

import jax
import jax.numpy as jnp
from jax import lax

# Steps unrolled into one loop iteration. benchmarks/jax_bptt.py, the demo's awd-lstm-mos
# on 2 shared (noisy) cores, unroll 1/2/4/8: compile 10/12/19/21 s, step 0.23/0.16/0.18/
# 0.11 s. 2 takes a good part of the gain for little compile time, and a compile is paid
# per window shape; remeasure on the GPU, where the loop overhead is per kernel launch.
UNROLL = 2


def lstm_layer(x, state, w_ih, w_hh, bias, length=None, unroll=None):
    """Run one layer over time-major ``x`` ``(time, batch, input)`` from ``(h, c)``.

    ``bias`` is the sum of the layer's biases. ``length`` (a traced scalar):
    only the first ``length`` steps are real, the rest padding that leaves the
    state as it is, so windows padded to one bucket share a compiled program.
    Returns ``(outputs (time, batch, hidden), (h, c))``. The recurrence stays
    in float32 whatever the policy.
    """
    h0, c0 = state
    gates_in = jnp.einsum("tbi,gi->tbg", x.astype(w_ih.dtype), w_ih) + bias
    w_hh_t = w_hh.T

    def step(carry, inputs):
        h, c = carry
        gates_x, real = inputs
        i, f, g, o = jnp.split(gates_x + h @ w_hh_t, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        if real is not None:
            h_new, c_new = jnp.where(real, h_new, h), jnp.where(real, c_new, c)
        return (h_new, c_new), h_new

    real = None if length is None else jnp.arange(x.shape[0]) < length
    (h, c), outputs = lax.scan(step, (h0, c0), (gates_in, real),
                               unroll=min(unroll or UNROLL, x.shape[0]))
    return outputs, (h, c)
