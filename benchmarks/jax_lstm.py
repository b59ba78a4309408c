"""The JAX engine's LSTM against the other JAX LSTMs, on a preset's layer shapes (issue 26).

One whole stack of a preset's LSTM layers (the AWD models' ``emsize -> nhid ->
... -> nhidlast``, the plain LSTM's ``emsize -> nhid -> nhid``) at the rows one
LSTM call of a training step takes (``small_batch_size``) and ``bptt`` steps,
float32, matmul precision ``highest``: forward and backward, the loss the sum
of the last layer's outputs, ``jax.value_and_grad`` with respect to every
layer's weights and the input (the embedding's gradient in training), jitted,
timed to ``block_until_ready``. Implementations (``--implementations``):

- ``engine``: ``recurrence.lstm_layer`` as the models call it on the CPU, so
  ``scan_lstm.lstm_layer`` at its default unroll: the input projection of all
  steps one matmul before a ``lax.scan`` of the recurrence, whose backward is
  written by hand (``jax.custom_vjp``, since issue 26: the ``hand-vjp`` below
  with the input projection left to autodiff);
- ``scan-autodiff``: ``scan_lstm.autodiff_lstm_layer``, the engine's layer
  before issue 26: the same forward, the scan differentiated by JAX;
- ``lstm_ref``: ``jax.experimental.rnn.lstm_ref``, JAX's own LSTM where cuDNN is
  absent (one layer per call, as the engine's cuDNN layer calls cuDNN, fed the
  packed cuDNN vector of ``cudnn_lstm.pack_weights`` through
  ``rnn.unpack_lstm_weights``): a scan whose step makes eight gate matmuls;
- ``textbook``: the plain ``lax.scan`` cell, both fused 4-gate matmuls inside the
  step (``x_t W_ih^T + h W_hh^T + b``, as Flax's ``OptimizedLSTMCell`` does);
- ``unrolled``: the engine's layer with the scan replaced by a Python loop over
  time under ``jit`` (fully unrolled: compile seconds grow with ``bptt``);
- ``hand-vjp``: the engine's forward with a backward written here
  (``jax.custom_vjp``): the reverse loop holds only the per-step ``dz W_hh``
  product and the gate derivatives; the weight gradients are one matmul each
  over all steps afterwards, where autodiff of a scan adds a ``(4H, H)``
  ``dW_hh`` into its carry at every step. It found the engine's backward; kept
  as a row because its custom_vjp also covers the input projection (``dW_ih``,
  ``db`` and ``dx`` written too), where the engine's leaves that to autodiff.

Before anything is timed, every implementation's first call is checked against
the engine's: the loss, the outputs, the final states and every gradient within
``--tolerance`` (1e-4) relative to the largest entry of the engine's tensor; an
implementation that disagrees stops the benchmark (nothing is timed). Then
``--rounds`` rounds interleave blocks of ``--repeats`` timed calls of each
implementation; the table gives the trace-and-compile seconds, the median and
p90 call, tokens (rows x steps) per second and the speed relative to the
engine's (its median over this one's). Run it alone: on 2 busy cores the
numbers move by up to 2x.

    .venv/bin/python benchmarks/jax_lstm.py --preset mos-ptb
    .venv/bin/python benchmarks/jax_lstm.py --preset awd-ptb --implementations engine,scan-autodiff
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import jax  # noqa: E402  (imported, not started: the XLA flags of --threads come first)
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import rnn  # noqa: E402

from mosbench.engines.jax.models import recurrence, scan_lstm  # noqa: E402
from mosbench.engines.jax.models.cudnn_lstm import pack_weights  # noqa: E402

# name -> (config dataset, project model); the MoC models share the MoS presets' shapes
PRESETS = {
    "mos-ptb": ("ptb", "awd-lstm-mos"),
    "awd-ptb": ("ptb", "awd-lstm"),
    "lstm-ptb": ("ptb", "lstm"),
    "mos-wt2": ("wikitext2", "awd-lstm-mos"),
    "awd-wt2": ("wikitext2", "awd-lstm"),
    "lstm-wt2": ("wikitext2", "lstm"),
}
TOLERANCE = 1e-4


class Disagreement(SystemExit):
    """An implementation computes something else than the engine's: nothing is timed."""


def preset_shapes(name):
    """``([(inputs, hidden) per layer], rows per LSTM call, bptt)`` of a preset in config.yaml."""
    from mosbench.config import load_config, preset

    dataset, model = PRESETS[name]
    hp = preset(load_config(REPO / "config" / "config.yaml"), dataset, model)
    layers = hp["nlayers"]
    hidden = [hp["nhid"]] * (layers - 1) + [hp.get("nhidlast", hp["nhid"])]
    inputs = [hp["emsize"]] + hidden[:-1]
    # a training step runs the LSTM once per chunk of small_batch_size rows (steps.py)
    rows = min(hp.get("small_batch_size") or hp["batch_size"], hp["batch_size"])
    return list(zip(inputs, hidden, strict=True)), rows, hp["bptt"]


# --- the implementations: (x (time, batch, in), (h, c), w_ih, w_hh, b_ih, b_hh) ---

def engine_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """The engine's CPU layer, called as the AWD models call it (two biases, no padding)."""
    return recurrence.lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh, None, cudnn=False)


def scan_autodiff_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """The engine's layer before issue 26: its scan differentiated by JAX's autodiff."""
    return scan_lstm.autodiff_lstm_layer(x, state, w_ih, w_hh, b_ih + b_hh)


def lstm_ref_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """``jax.experimental.rnn.lstm_ref`` on the packed cuDNN vector, batch-major as its API is."""
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    weights = rnn.unpack_lstm_weights(pack_weights(w_ih, w_hh, b_ih, b_hh), inputs, hidden,
                                      1, False)
    lengths = jnp.full((x.shape[1],), x.shape[0], jnp.int32)
    y, h, c = rnn.lstm_ref(x.swapaxes(0, 1), state[0][None], state[1][None], *weights,
                           lengths, input_size=inputs, hidden_size=hidden, num_layers=1,
                           dropout=0.0, bidirectional=False)
    return y.swapaxes(0, 1), (h[0], c[0])


def _gates(z, c):
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_new), c_new


def textbook_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """The plain scan: both fused 4-gate matmuls inside the step."""
    w_ih_t, w_hh_t, bias = w_ih.T, w_hh.T, b_ih + b_hh

    def step(carry, x_t):
        h, c = carry
        h, c = _gates(x_t @ w_ih_t + h @ w_hh_t + bias, c)
        return (h, c), h

    (h, c), ys = lax.scan(step, state, x)
    return ys, (h, c)


def unrolled_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """The engine's layer with a Python loop over time in place of the scan."""
    gates_in = jnp.einsum("tbi,gi->tbg", x, w_ih) + (b_ih + b_hh)
    w_hh_t = w_hh.T
    h, c = state
    ys = []
    for t in range(x.shape[0]):
        h, c = _gates(gates_in[t] + h @ w_hh_t, c)
        ys.append(h)
    return jnp.stack(ys), (h, c)


@jax.custom_vjp
def _hand_vjp(x, h0, c0, w_ih, w_hh, bias):
    ys, (h, c), _ = _hand_forward(x, h0, c0, w_ih, w_hh, bias)
    return ys, h, c


def _hand_forward(x, h0, c0, w_ih, w_hh, bias):
    """The engine's forward, keeping the gate activations and cell states for the backward."""
    gates_in = jnp.einsum("tbi,gi->tbg", x, w_ih) + bias
    w_hh_t = w_hh.T

    def step(carry, gx):
        h, c = carry
        i, f, g, o = jnp.split(gx + h @ w_hh_t, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

    (h, c), (ys, cs, acts) = lax.scan(step, (h0, c0), gates_in, unroll=scan_lstm.UNROLL)
    return ys, (h, c), (cs, acts)


def _hand_fwd(x, h0, c0, w_ih, w_hh, bias):
    ys, (h, c), (cs, acts) = _hand_forward(x, h0, c0, w_ih, w_hh, bias)
    return (ys, h, c), (x, h0, c0, w_ih, w_hh, ys, cs, acts)


def _hand_bwd(residuals, cotangents):
    x, h0, c0, w_ih, w_hh, ys, cs, acts = residuals
    dys, dh_last, dc_last = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])

    def step(carry, inputs):
        dh, dc = carry
        dy, c, cp, act = inputs
        i, f, g, o = jnp.split(act, 4, axis=-1)
        dh = dh + dy
        tanh_c = jnp.tanh(c)
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f),
                              dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)
        return (dz @ w_hh, dc * f), dz

    (dh0, dc0), dzs = lax.scan(step, (dh_last, dc_last), (dys, cs, c_prev, acts),
                               reverse=True, unroll=scan_lstm.UNROLL)
    h_prev = jnp.concatenate([h0[None], ys[:-1]])
    return (jnp.einsum("tbg,gi->tbi", dzs, w_ih), dh0, dc0,
            jnp.einsum("tbg,tbi->gi", dzs, x), jnp.einsum("tbg,tbh->gh", dzs, h_prev),
            dzs.sum(axis=(0, 1)))


_hand_vjp.defvjp(_hand_fwd, _hand_bwd)


def hand_vjp_layer(x, state, w_ih, w_hh, b_ih, b_hh):
    """The engine's forward, the backward by hand: weight gradients after the reverse loop."""
    ys, h, c = _hand_vjp(x, state[0], state[1], w_ih, w_hh, b_ih + b_hh)
    return ys, (h, c)


IMPLEMENTATIONS = {"engine": engine_layer, "scan-autodiff": scan_autodiff_layer,
                   "lstm_ref": lstm_ref_layer,
                   "textbook": textbook_layer, "unrolled": unrolled_layer,
                   "hand-vjp": hand_vjp_layer}


# --- the stack, its inputs, the check and the timing ---

def stack_step(layer):
    """``(weights, x, states) -> ((loss, (outputs, states)), (d weights, d x))``, to jit."""
    def loss(weights, x, states):
        new_states = []
        for (w_ih, w_hh, b_ih, b_hh), state in zip(weights, states, strict=True):
            x, state = layer(x, state, w_ih, w_hh, b_ih, b_hh)
            new_states.append(state)
        return jnp.sum(x), (x, new_states)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def inputs(shapes, rows, steps, seed=0):
    """Weights uniform(+-1/sqrt(H)) as the models' init, an input and nonzero carried states."""
    rng = np.random.default_rng(seed)

    def uniform(scale, *shape):
        return jnp.asarray(rng.uniform(-scale, scale, shape).astype(np.float32))

    weights = [tuple(uniform(h ** -0.5, *s) for s in ((4 * h, i), (4 * h, h), (4 * h,), (4 * h,)))
               for i, h in shapes]
    states = [(uniform(0.5, rows, h), uniform(0.5, rows, h)) for _, h in shapes]
    return weights, uniform(1.0, steps, rows, shapes[0][0]), states


def named_leaves(result, shapes):
    """The checked tensors of a first call: loss, outputs, final states, every gradient."""
    (loss, (outputs, states)), (d_weights, d_x) = result
    named = {"loss": loss, "outputs": outputs, "d x": d_x}
    for layer, ((h, c), grads) in enumerate(zip(states, d_weights, strict=True)):
        named |= {f"layer {layer} h": h, f"layer {layer} c": c}
        named |= {f"layer {layer} d {w}": g
                  for w, g in zip(("w_ih", "w_hh", "b_ih", "b_hh"), grads, strict=True)}
    return {k: np.asarray(v, np.float64) for k, v in named.items()}


def relative_difference(value, reference):
    """max |value - reference| over max |reference| (the tensor's scale, not its entries')."""
    if value.shape != reference.shape:
        return np.inf
    scale = max(float(np.max(np.abs(reference))), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(value - reference))) / scale


@functools.cache
def _compiled(layer, shapes, rows, steps):
    """``(compiled stack step, trace-and-compile seconds)``, once per layer and shapes."""
    args = inputs(shapes, rows, steps)
    start = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        program = jax.jit(stack_step(layer)).lower(*args).compile()
    return program, time.perf_counter() - start


def compile_and_check(implementations, shapes, rows, steps, tolerance=TOLERANCE, seed=0,
                      reference="engine"):
    """Compile each implementation's stack step and check its first call against ``reference``.

    Returns ``({name: compiled}, {name: compile s}, {name: (worst relative difference,
    its tensor)}, arguments)``; raises :class:`Disagreement`, naming every implementation
    and tensor out of ``tolerance``, before anything could be timed.
    """
    args = inputs(shapes, rows, steps, seed)
    compiled, compile_s, first = {}, {}, {}
    for name, layer in implementations.items():
        compiled[name], compile_s[name] = _compiled(layer, tuple(shapes), rows, steps)
        first[name] = named_leaves(jax.block_until_ready(compiled[name](*args)), shapes)
    worst, wrong = {}, []
    for name, leaves in first.items():
        diffs = {k: relative_difference(v, first[reference][k]) for k, v in leaves.items()}
        tensor = max(diffs, key=diffs.get)
        worst[name] = (diffs[tensor], tensor)
        if not diffs[tensor] <= tolerance:  # NaN fails too
            bad = [f"{k} {d:.1e}" for k, d in diffs.items() if not d <= tolerance]
            wrong.append(f"{name}: {', '.join(bad)}")
    if wrong:
        raise Disagreement(
            f"not timed: these implementations disagree with {reference}'s first call by more "
            f"than {tolerance:g} relative (max |difference| / max |{reference}|):\n  "
            + "\n  ".join(wrong))
    return compiled, compile_s, worst, args


def time_calls(compiled, args, rounds, repeats):
    """Per implementation, the seconds of each timed call (blocks interleaved A B C, A B C)."""
    times = {name: [] for name in compiled}
    for fn in compiled.values():  # one untimed call each: first touch of the buffers
        jax.block_until_ready(fn(*args))
    for _ in range(rounds):
        for name, fn in compiled.items():
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
    return times


def set_threads(threads):
    """Before XLA starts: one thread (the engine's flag), else the first ``threads`` cores."""
    from mosbench.engines.jax import runtime

    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])  # XLA's pool: one thread per usable core
    runtime.configure(threads=threads, precision="float32")  # and precision highest


def machine_lines(threads):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import cpu_description, runtime_settings

    return [f"cpu: {cpu_description()}; {threads} threads",
            f"python {platform.python_version()}, {runtime_settings('jax')}"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mos-ptb")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per block")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads (default: the usable cores)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    names = ["engine"] + [n for n in args.implementations.split(",") if n and n != "engine"]
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown:
        parser.error(f"unknown implementations {unknown}: choose from {list(IMPLEMENTATIONS)}")
    set_threads(args.threads)
    shapes, rows, steps = preset_shapes(args.preset)
    print(f"preset {args.preset}: LSTM layers (inputs -> units) "
          + ", ".join(f"{i} -> {h}" for i, h in shapes)
          + f"; {rows} rows x {steps} steps; float32, matmul precision highest; "
          f"engine unroll {scan_lstm.UNROLL}")
    for line in machine_lines(args.threads):
        print(line)
    compiled, compile_s, worst, call_args = compile_and_check(
        {n: IMPLEMENTATIONS[n] for n in names}, shapes, rows, steps, args.tolerance)
    print("agreement with engine (first call, max relative difference): "
          + ", ".join(f"{n} {d:.1e} ({t})" for n, (d, t) in worst.items() if n != "engine"))
    times = time_calls(compiled, call_args, args.rounds, args.repeats)
    print(f"\n{args.rounds} rounds x {args.repeats} calls each, after one untimed call\n")
    print("| implementation | compile s | median ms | p90 ms | tokens/s | speed vs engine |")
    print("|---|---:|---:|---:|---:|---:|")
    engine_median = statistics.median(times["engine"])
    for name in names:
        median = statistics.median(times[name])
        p90 = float(np.percentile(times[name], 90))
        print(f"| {name} | {compile_s[name]:.1f} | {median * 1e3:.1f} | {p90 * 1e3:.1f} | "
              f"{rows * steps / median:,.0f} | {engine_median / median:.2f}x |")


if __name__ == "__main__":
    main()
