"""The JAX engine's CPU LSTM layer: the hand-written backward against JAX's autodiff (issue 26).

``scan_lstm.lstm_layer`` differentiates its recurrence by hand (a
``jax.custom_vjp``); ``scan_lstm.autodiff_lstm_layer`` is the same forward left
to JAX's autodiff (the engine's layer before). Outputs, final states and the
gradients with respect to the input, both states, both weights and the bias
must agree within 1e-5 of each tensor's largest entry, with and without
padding, at several unrolls; a planted break in the backward must be caught.
"""

import inspect
import types

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from mosbench.engines.jax.models import scan_lstm  # noqa: E402

TIME, BATCH, INPUTS, HIDDEN = 7, 3, 5, 4
TOLERANCE = 1e-5


def _arguments(seed=0):
    rng = np.random.default_rng(seed)

    def uniform(*shape):
        return jnp.asarray(rng.uniform(-0.8, 0.8, shape).astype(np.float32))

    return (uniform(TIME, BATCH, INPUTS), uniform(BATCH, HIDDEN), uniform(BATCH, HIDDEN),
            uniform(4 * HIDDEN, INPUTS), uniform(4 * HIDDEN, HIDDEN), uniform(4 * HIDDEN))


def _results(layer, length, unroll):
    """Outputs, final states and the gradient of a loss that weighs every output by its step."""
    def loss(x, h0, c0, w_ih, w_hh, bias, length):
        outputs, (h, c) = layer(x, (h0, c0), w_ih, w_hh, bias, length, unroll)
        weights = jnp.arange(1.0, TIME + 1)[:, None, None] * jnp.linspace(-1, 1, HIDDEN)
        return (outputs * weights).sum() + (2 * h).sum() - (3 * c).sum(), (outputs, h, c)

    step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))
    with jax.default_matmul_precision("highest"):
        (_, (outputs, h, c)), grads = step(*_arguments(), length)
    names = ("d x", "d h0", "d c0", "d w_ih", "d w_hh", "d bias")
    return {"outputs": outputs, "h": h, "c": c} | dict(zip(names, grads, strict=True))


def _worst(layer, length, unroll):
    """``(max relative difference, tensor)`` of ``layer`` against the autodiffed scan."""
    ours = _results(layer, length, unroll)
    reference = _results(scan_lstm.autodiff_lstm_layer, length, unroll)
    diffs = {}
    for k in reference:  # a gradient all zero (length 0's d x) must be zero here too
        scale = max(float(jnp.max(jnp.abs(reference[k]))), np.finfo(np.float32).tiny)
        diff = float(jnp.max(jnp.abs(ours[k] - reference[k]))) / scale
        diffs[k] = diff if np.isfinite(diff) else np.inf
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


LENGTHS = [None, TIME, 4, 1, 0]


@pytest.mark.parametrize("unroll", [1, 2, 3])
@pytest.mark.parametrize("length", LENGTHS)
def test_the_hand_written_backward_agrees_with_autodiff(length, unroll):
    length = None if length is None else jnp.int32(length)
    difference, tensor = _worst(scan_lstm.lstm_layer, length, unroll)
    assert difference <= TOLERANCE, (tensor, difference)


def test_padded_steps_output_the_carried_state_and_pass_no_gradient_to_their_gates():
    x, h0, c0, w_ih, w_hh, bias = _arguments()
    outputs, (h, c) = scan_lstm.lstm_layer(x, (h0, c0), w_ih, w_hh, bias, jnp.int32(4))
    exact, (h4, c4) = scan_lstm.lstm_layer(x[:4], (h0, c0), w_ih, w_hh, bias)
    np.testing.assert_allclose(outputs[:4], exact, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs[4:], jnp.broadcast_to(outputs[3], outputs[4:].shape))
    np.testing.assert_array_equal(h, outputs[3])
    np.testing.assert_allclose(c, c4, rtol=1e-6, atol=1e-6)
    d_x = jax.grad(lambda x: scan_lstm.lstm_layer(x, (h0, c0), w_ih, w_hh, bias,
                                                  jnp.int32(4))[0].sum())(x)
    assert not np.any(np.asarray(d_x[4:])) and np.all(np.any(np.asarray(d_x[:4]), axis=-1))


def _planted(old, new):
    """``scan_lstm`` rebuilt from its source with ``old`` replaced by ``new``."""
    source = inspect.getsource(scan_lstm)
    assert source.count(old) == 1, old
    module = types.ModuleType("planted_scan_lstm")
    exec(compile(source.replace(old, new), "planted_scan_lstm", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("old,new", [
    ("dh_prev, dc_prev = dz @ w_hh, dc_t * f", "dh_prev, dc_prev = dz @ w_hh, dc_t"),
    ("jnp.where(real_t, dz, jnp.zeros_like(dz))", "dz"),
], ids=["dropped dc*f", "gradient into padded gates"])
def test_a_planted_break_in_the_backward_is_caught(old, new):
    difference, _ = _worst(_planted(old, new).lstm_layer, jnp.int32(4), 2)
    assert difference > 100 * TOLERANCE
