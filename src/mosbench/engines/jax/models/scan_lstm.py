"""One LSTM layer as a ``lax.scan``, its input projection hoisted out of the loop.

JAX has no LSTM layer (``jax.experimental.rnn.lstm`` is cuDNN-only, GPU only).
The input-to-hidden product of every time step is one matmul before the scan,
so the loop body holds only the ``(batch, hidden) x (hidden, 4 hidden)``
recurrence and the gates. Gates are stacked i, f, g, o as in the canonical
weights (``(out, in)`` matrices: ``x @ w.T``).
"""

import jax
import jax.numpy as jnp
from jax import lax

# Steps unrolled into one loop iteration. Measured on the 2-core CPU with the demo's
# and PTB's layer sizes (benchmarks/jax_unroll.py): 1 -> 2 -> 4 gains ~10-20 % per step
# of the loop, 8 nothing more while compile time keeps growing.
UNROLL = 1


def lstm_layer(x, state, w_ih, w_hh, bias, unroll=UNROLL):
    """Run one layer over time-major ``x`` ``(time, batch, input)`` from ``(h, c)``.

    ``bias`` is the sum of the layer's biases. Returns ``(outputs (time, batch,
    hidden), (h, c))``. The recurrence stays in float32 whatever the policy.
    """
    h0, c0 = state
    gates_in = jnp.einsum("tbi,gi->tbg", x.astype(w_ih.dtype), w_ih) + bias
    w_hh_t = w_hh.T

    def step(carry, gates_x):
        h, c = carry
        i, f, g, o = jnp.split(gates_x + h @ w_hh_t, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), outputs = lax.scan(step, (h0, c0), gates_in, unroll=min(unroll, x.shape[0]))
    return outputs, (h, c)
