"""One LSTM layer through cuDNN (``jax.experimental.rnn.lstm``), and the proof that it ran.

``jax.experimental.rnn.lstm`` runs a whole sequence in one cuDNN call, float32
only, on CUDA only: its lowering is registered for the ``cuda`` platform, and
on a machine without jaxlib's CUDA plugin it cannot even be traced (its shape
rule asks the plugin for cuDNN's workspace sizes). Each AWD layer has sizes of
its own, a weight-dropped W_hh of its own and locked dropout after it, so each
layer is one call with ``num_layers=1``, one direction and no dropout.

The call takes the weights as one flat vector in cuDNN's layout, which JAX
documents by its unpacking (``unpack_lstm_weights``) and gives no packing for:
the matrices of every layer, then the biases; for one unidirectional layer
``W_ih, W_hh, b_ih, b_hh``, each row-major in the shapes and gate order (i, f,
g, o) of the canonical weights. So packing is a concatenation of the canonical
tensors, W_hh after its weight-drop mask, rebuilt on every call (the mask is
new every forward) and differentiable, so each tensor gets its gradient back.

jaxlib's kernel copies ``seq_lengths`` to the host and waits for the stream
before every forward and every backward call (``jaxlib/gpu/rnn_kernels.cc``:
cuDNN's data descriptor takes host lengths), so the host cannot queue work
past an LSTM layer: 2 x layers x chunks waits per training step. Not measured
here.

jaxlib lowers the call to a custom call that names no operand or result
layouts (``jaxlib/gpu_rnn.py`` builds the op without ``operand_layouts``), so
XLA is free to give its input the layout that turns the transpose before it
into a bitcast, while the kernel reads every buffer as row-major. That fits
what an H200 (jax 0.11.2) did: the layer parted from the scan by 1.584834
after its first row, and reading the batch-major input as the time-major
buffer reproduces that figure and the last output row on the CPU exactly
(``tests/test_jax_cudnn_lstm.py``). :func:`pin_kernel_layouts` registers
jaxlib's own lowerings again, with every operand and result of the custom
call pinned to the row-major layout, so XLA materialises the transposes. On
the H200 (jax 0.11.2, cuDNN 9.19) the compiled layer then feeds the call a
transpose under ``operand_layout_constraints``, and the layer agrees with the
scan to 8e-7 (``benchmarks/README.md``, "JAX's cuDNN layer fixed").
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn
from jax.extend.mlir import ir
from jax.interpreters import mlir

from mosbench.errors import MosbenchError

# The custom-call targets of jaxlib's cuDNN RNN lowering (jaxlib/gpu_rnn.py names them
# f"{platform}dnn_rnn_ffi" and f"{platform}dnn_rnn_bwd_ffi", platform "cu" on CUDA).
FORWARD_TARGET = "cudnn_rnn_ffi"
BACKWARD_TARGET = "cudnn_rnn_bwd_ffi"
# HLO text writes custom_call_target="name"; StableHLO (a lowered, uncompiled program)
# writes stablehlo.custom_call @name(
_TARGET = re.compile(r'custom_call_target="([^"]+)"|custom_call @([\w.$-]+)\(')


def with_row_major_layouts(lowering):
    """``lowering`` (a rule that emits one custom call) with every operand and result of
    that call pinned to the row-major layout, the one the kernel reads and writes."""

    def lower(ctx, *args, **params):
        results = lowering(ctx, *args, **params)
        call = results[0].owner
        call = getattr(call, "operation", call)
        for name, values in (("operand_layouts", call.operands), ("result_layouts",
                                                                  call.results)):
            call.attributes[name] = ir.ArrayAttr.get([
                ir.DenseIntElementsAttr.get(np.arange(rank - 1, -1, -1, dtype=np.int64),
                                            type=ir.IndexType.get())
                for rank in (ir.ShapedType(value.type).rank for value in values)])
        return results

    return lower


def pin_kernel_layouts():
    """Register jaxlib's cuDNN RNN lowerings, forward and backward, with row-major
    layouts (:func:`with_row_major_layouts`); False where this jaxlib has none."""
    gpu_rnn = getattr(rnn, "gpu_rnn", None)
    rules = [getattr(gpu_rnn, name, None) for name in ("cudnn_rnn_lowering",
                                                       "cudnn_rnn_bwd_lowering")]
    primitives = [getattr(rnn, name, None) for name in ("rnn_fwd_p", "rnn_bwd_p")]
    if None in rules or None in primitives:
        return False
    for primitive, rule in zip(primitives, rules, strict=True):
        mlir.register_lowering(primitive, with_row_major_layouts(rule), platform="cuda")
    return True


KERNEL_LAYOUTS_PINNED = pin_kernel_layouts()


def pack_weights(w_ih, w_hh, b_ih, b_hh):
    """The flat cuDNN weight vector of one unidirectional layer from its canonical tensors.

    ``w_ih`` ``(4H, in)``, ``w_hh`` ``(4H, H)`` (weight-dropped already), ``b_ih``,
    ``b_hh`` ``(4H,)``; ``jax.experimental.rnn.unpack_lstm_weights`` gives them back.
    """
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    flat = jnp.concatenate([w_ih.reshape(-1), w_hh.reshape(-1), b_ih, b_hh]).astype(jnp.float32)
    expected = rnn.get_num_params_in_lstm(inputs, hidden, 1, False)
    if flat.shape[0] != expected:  # shapes are static: this fails when tracing, not later
        raise ValueError(f"{flat.shape[0]} weights for an LSTM layer of {inputs} inputs and "
                         f"{hidden} units, which cuDNN lays out in {expected}")
    return flat


def cudnn_lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh=None, length=None):
    """Run one layer over time-major ``x`` ``(time, batch, input)`` from ``(h, c)`` on cuDNN.

    The same contract as :func:`scan_lstm.lstm_layer`, with the two biases apart
    (``b_hh`` None: one bias, the plain LSTM's). ``length`` (a traced scalar):
    the real steps of a padded window, every row's ``seq_lengths``; cuDNN then
    returns the state after them and zeros after them in the outputs, which the
    loss masks. Float32 whatever the policy. The matmul precision is JAX's
    ``jax_default_matmul_precision``, as for every other matmul of the engine:
    ``highest`` (float32, mixed_bfloat16) makes cuDNN use FMA math, no TF32;
    ``tensorfloat32`` (tf32) its default math.
    """
    h0, c0 = state
    time, batch = x.shape[0], x.shape[1]
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    if b_hh is None:
        b_hh = jnp.zeros_like(b_ih)
    steps = time if length is None else length
    seq_lengths = jnp.full((batch,), steps, jnp.int32)
    # jax's call is batch-major, the models time-major: a transpose each way per layer
    y, h, c = rnn.lstm(x.astype(jnp.float32).swapaxes(0, 1), h0[None].astype(jnp.float32),
                       c0[None].astype(jnp.float32), pack_weights(w_ih, w_hh, b_ih, b_hh),
                       seq_lengths, input_size=inputs, hidden_size=hidden, num_layers=1,
                       dropout=0.0, bidirectional=False, precision=None)
    return y.swapaxes(0, 1), (h[0], c[0])


def custom_call_targets(program_text):
    """How often each custom-call target occurs in a program's text (HLO or StableHLO)."""
    return Counter(a or b for a, b in _TARGET.findall(program_text))


def assert_cudnn_lstm(program_text, calls, gradient=True, what="the training step"):
    """Raise MosbenchError unless the program runs cuDNN's LSTM ``calls`` times or more.

    ``program_text``: ``jitted.lower(...).compile().as_text()``; ``calls``: the
    LSTM layer calls the program makes (layers x chunks); with ``gradient``,
    as many backward calls too. This is the JAX engine's counterpart of the
    PyTorch engine's ``assert_fused_lstm``: a GPU job that silently traced the
    scan would time another kernel than the other engines.
    """
    found = custom_call_targets(program_text)
    wanted = {FORWARD_TARGET: calls, **({BACKWARD_TARGET: calls} if gradient else {})}
    if all(found[t] >= n for t, n in wanted.items()):
        return found
    counts = ", ".join(f"{found[t]} {t} of {n}" for t, n in wanted.items())
    others = sorted(set(found) - set(wanted))
    loops = len(re.findall(r"\bwhile\(", program_text))  # the scan's, most likely
    raise MosbenchError(
        f"on a GPU the JAX engine runs its LSTMs on cuDNN (jax.experimental.rnn.lstm), but "
        f"{what} compiled to {counts} custom calls (other custom calls: "
        f"{others or 'none'}; {loops} while loops): the cuDNN path did not happen. "
        f"jax {jax.__version__} needs its CUDA plugin with cuDNN: "
        "`pip install -U 'jax[cuda12]'` or `'jax[cuda13]'`")
