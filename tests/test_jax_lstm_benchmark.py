"""benchmarks/jax_lstm.py's agreement check on tiny shapes (issue 26): the comparison stays honest.

Every implementation the benchmark times must give the engine's loss, outputs,
final states and gradients on its first call; one that does not (a wrong
forward, or a right forward with a wrong gradient) is refused before anything
is timed. One layer whose input and hidden sizes differ, so a transposed or
mis-sized weight cannot agree by accident.
"""

import importlib.util

import pytest

from conftest import REPO

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

SPEC = importlib.util.spec_from_file_location("jax_lstm", REPO / "benchmarks" / "jax_lstm.py")
jax_lstm = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(jax_lstm)

SHAPES, ROWS, STEPS = [(4, 3)], 2, 5


def test_every_implementation_agrees_with_the_engine():
    _, _, worst, _ = jax_lstm.compile_and_check(jax_lstm.IMPLEMENTATIONS, SHAPES, ROWS, STEPS)
    assert set(worst) == set(jax_lstm.IMPLEMENTATIONS)
    for name, (difference, tensor) in worst.items():
        assert difference <= 1e-5, (name, tensor, difference)


def forget_bias_shifted(x, state, w_ih, w_hh, b_ih, b_hh):
    """A wrong forward: the forget gate's bias moved by 1 (a common port slip)."""
    hidden = w_hh.shape[1]
    return jax_lstm.engine_layer(x, state, w_ih, w_hh, b_ih.at[hidden:2 * hidden].add(1.0), b_hh)


def w_hh_gradient_stopped(x, state, w_ih, w_hh, b_ih, b_hh):
    """The right forward, a wrong backward: no gradient reaches W_hh."""
    return jax_lstm.engine_layer(x, state, w_ih, lax.stop_gradient(w_hh), b_ih, b_hh)


def test_a_wrong_implementation_is_refused_before_timing():
    planted = {"engine": jax_lstm.engine_layer, "forget-bias": forget_bias_shifted,
               "no-dW_hh": w_hh_gradient_stopped}
    with pytest.raises(jax_lstm.Disagreement) as refused:
        jax_lstm.compile_and_check(planted, SHAPES, ROWS, STEPS)
    message = str(refused.value)
    assert message.startswith("not timed")
    assert "forget-bias: " in message and "layer 0 c" in message
    no_dw = next(line for line in message.splitlines() if "no-dW_hh:" in line)
    assert "layer 0 d w_hh" in no_dw and "outputs" not in no_dw  # only the gradient is off


def test_the_tolerance_is_relative_to_the_tensor_scale():
    reference = jnp.array([100.0, 0.0])
    assert jax_lstm.relative_difference(jnp.array([100.0, 1e-3]), reference) == pytest.approx(1e-5)
    assert jax_lstm.relative_difference(jnp.array([100.0, jnp.nan]), reference) != 0.0
    assert not jax_lstm.relative_difference(jnp.array([100.0, jnp.nan]), reference) <= 1e-4
