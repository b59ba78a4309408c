"""One LSTM layer as a ``lax.scan``, its input projection hoisted out of the loop,
its recurrence differentiated by hand.

JAX has no LSTM layer for the CPU (``jax.experimental.rnn.lstm`` is cuDNN's,
GPU only: ``cudnn_lstm.py``, chosen in ``recurrence.py``). The input-to-hidden
product of every time step is one matmul before the scan, so the loop body
holds only the ``(batch, hidden) x (hidden, 4 hidden)`` recurrence and the
gates. Gates are stacked i, f, g, o as in the canonical
weights (``(out, in)`` matrices: ``x @ w.T``).

The recurrence (:func:`recurrence`, over the precomputed input gates) is a
``jax.custom_vjp`` with a backward written here, as the TensorFlow engine's
``fast_lstm.py`` has: autodiff of the scan carries a full ``(4H, H)`` ``dW_hh``
accumulator through every reverse step and adds ``h_{t-1}^T dz_t`` into it
there; the written reverse scan carries only ``(dh, dc)`` and emits each step's
gate gradients ``dz``, and ``dW_hh = sum_t h_{t-1}^T dz_t`` is one matmul over
all steps after the loop. The input projection stays outside, so JAX's
autodiff gives ``dW_ih``, the bias and ``dx`` from ``d gates_in`` (= ``dz``),
also one matmul each. ``benchmarks/jax_lstm.py`` (README, "The JAX engine's
LSTM against JAX's other LSTMs"), 2 shared CPU cores, float32: the hand-written
backward was 1.26x and 1.48x the autodiffed scan's speed on mos-ptb's stack and
1.17x on lstm-wt2's, forward and backward; adopted here, 1.52x and 1.19-1.38x.
:func:`autodiff_lstm_layer` keeps the autodiffed scan as the reference of the
tests and the benchmark.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Steps unrolled into one loop iteration. benchmarks/jax_bptt.py, the demo's awd-lstm-mos
# on 2 shared (noisy) cores, unroll 1/2/4/8: compile 10/12/19/21 s, step 0.23/0.16/0.18/
# 0.11 s. 2 takes a good part of the gain for little compile time, and a compile is paid
# per window shape; remeasure on the GPU, where the loop overhead is per kernel launch.
# (Measured with the autodiffed scan; both loops of the hand-written backward take it.)
UNROLL = 2


def _unroll(unroll, steps):
    return max(1, min(unroll or UNROLL, steps))


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
    real = None if length is None else jnp.arange(x.shape[0]) < length
    gates_in, h0, c0, w_hh = _varying_alike(gates_in, h0, c0, w_hh)
    outputs, h, c = recurrence(gates_in, h0, c0, w_hh, real, _unroll(unroll, x.shape[0]))
    return outputs, (h, c)


def _varying_alike(*arrays):
    """``arrays``, each cast to vary over every ``shard_map`` axis any of them varies over.

    Inside the engine's data-parallel ``shard_map`` the weights are replicated and
    the rows are not; a custom_vjp's backward must give each cotangent its
    primal's type, and ``dW_hh`` (a sum over the replica's rows) varies. Casting
    the weight before the call, as autodiff of the scan does inside it, leaves
    the cast's transpose (the sum over replicas) to JAX, outside. Outside a
    ``shard_map`` nothing varies and nothing is cast.
    """
    axes = [jax.typeof(a).manual_axis_type.varying for a in arrays]
    every = frozenset().union(*axes)
    return [a if own == every else lax.pcast(a, tuple(sorted(every - own)), to="varying")
            for a, own in zip(arrays, axes, strict=True)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def recurrence(gates_in, h0, c0, w_hh, real, unroll):
    """The loop over precomputed ``gates_in`` ``(time, batch, 4 hidden)``: ``(outputs, h, c)``.

    ``real`` ``(time,)`` bool or None: where False, the step is padding, its
    state the carried one (its output the carried ``h``) and no gradient
    reaches its gates. Differentiated by :func:`_backward`.
    """
    outputs, h, c, _ = _forward(gates_in, h0, c0, w_hh, real, unroll)
    return outputs, h, c


def _forward(gates_in, h0, c0, w_hh, real, unroll):
    """The recurrence, also returning each step's cell state and gate activations."""
    w_hh_t = w_hh.T

    def step(carry, inputs):
        h, c = carry
        gates_x, real_t = inputs
        i, f, g, o = jnp.split(gates_x + h @ w_hh_t, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        if real_t is not None:
            h_new, c_new = jnp.where(real_t, h_new, h), jnp.where(real_t, c_new, c)
        return (h_new, c_new), (h_new, c_new, jnp.concatenate([i, f, g, o], axis=-1))

    (h, c), (outputs, cells, acts) = lax.scan(step, (h0, c0), (gates_in, real),
                                              unroll=unroll)
    return outputs, h, c, (cells, acts)


def _forward_rule(gates_in, h0, c0, w_hh, real, unroll):
    outputs, h, c, (cells, acts) = _forward(gates_in, h0, c0, w_hh, real, unroll)
    return (outputs, h, c), (h0, c0, w_hh, real, outputs, cells, acts)


def _backward(unroll, residuals, cotangents):
    """Reverse scan carrying ``(dh, dc)``, emitting ``dz``; ``dW_hh`` one matmul after it."""
    h0, c0, w_hh, real, outputs, cells, acts = residuals
    d_outputs, dh_last, dc_last = cotangents
    c_prev = jnp.concatenate([c0[None], cells[:-1]])

    def step(carry, inputs):
        dh, dc = carry
        d_out, c, cp, act, real_t = inputs
        i, f, g, o = jnp.split(act, 4, axis=-1)
        dh = dh + d_out
        tanh_c = jnp.tanh(c)
        dc_t = dc + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate([dc_t * g * i * (1 - i), dc_t * cp * f * (1 - f),
                              dc_t * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)
        dh_prev, dc_prev = dz @ w_hh, dc_t * f
        if real_t is not None:  # padding: the state passed through, its gates untouched
            dz = jnp.where(real_t, dz, jnp.zeros_like(dz))
            dh_prev, dc_prev = jnp.where(real_t, dh_prev, dh), jnp.where(real_t, dc_prev, dc)
        return (dh_prev, dc_prev), dz

    (dh0, dc0), dzs = lax.scan(step, (dh_last, dc_last),
                               (d_outputs, cells, c_prev, acts, real),
                               reverse=True, unroll=unroll)
    h_prev = jnp.concatenate([h0[None], outputs[:-1]])
    d_w_hh = jnp.einsum("tbg,tbh->gh", dzs, h_prev)
    return dzs, dh0, dc0, d_w_hh, None


recurrence.defvjp(_forward_rule, _backward)


def autodiff_lstm_layer(x, state, w_ih, w_hh, bias, length=None, unroll=None):
    """:func:`lstm_layer` as one ``lax.scan`` left to JAX's autodiff (the engine's until
    issue 26): the reference of ``tests/test_jax_scan_lstm.py`` and a benchmark row."""
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
                               unroll=_unroll(unroll, x.shape[0]))
    return outputs, (h, c)
