"""The JAX engine's cuDNN LSTM path (issue 26): packing, agreement, choice, the check.

On the CPU cuDNN's call cannot run, nor even be traced, so the layer's own code
(packing, transposes, sequence lengths, the plain LSTM's one bias) runs with
``jax.experimental.rnn.lstm_ref``, JAX's scan of cuDNN's recurrence, in the
kernel's place, fed the flat vector as JAX unpacks it. Where JAX sees a GPU,
the last tests run the real kernel against the scan and check the training
step's compiled program. On the one GPU they have met (an H200, jax 0.11.2,
cuDNN 9.19), the kernel parted from the scan after its first output row
(benchmarks/README.md, "The prepared GPU checks on an H200"), by exactly what
JAX's reference gives when fed the layer's time-major buffer as its
batch-major input (tested here): XLA left the transpose as a layout bitcast,
which jaxlib's layout-less custom call let it do. The engine now pins the
call's layouts (tested here on a stand-in); the two GPU tests before the
scan's say, where a GPU runs them, which side parts if one still does.
Run them where only a GPU machine's packages are (no mlflow, so no conftest)::

    pytest --noconftest -p no:cacheprovider tests/test_jax_cudnn_lstm.py -k on_a_gpu
"""

import types

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.experimental import rnn  # noqa: E402
from jax.extend.mlir import ir  # noqa: E402
from jax.extend.mlir.dialects import stablehlo as hlo  # noqa: E402
from jax.interpreters import mlir  # noqa: E402

from mosbench.engines import load_engine  # noqa: E402
from mosbench.engines.jax.models import build_model, cudnn_lstm, masks, recurrence, scan_lstm  # noqa: E402
from mosbench.engines.jax.models.recurrence import choose_cudnn  # noqa: E402
from mosbench.errors import MosbenchError  # noqa: E402

TIME, BATCH, INPUTS, HIDDEN = 7, 3, 5, 4
TINY_AWD = {"emsize": 6, "nhid": 5, "nhidlast": 6, "nlayers": 3, "dropout": 0.4,
            "dropouth": 0.3, "dropouti": 0.2, "dropoute": 0.1, "wdrop": 0.5,
            "init_range": 0.1, "n_experts": 2, "dropoutl": 0.3}


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this jaxlib, or no device
        return []


needs_gpu = pytest.mark.skipif(not _gpus(), reason="JAX sees no GPU: cuDNN's LSTM runs on "
                                                   "a CUDA GPU only")


def _tensors(seed=0, inputs=INPUTS, hidden=HIDDEN):
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    normal = [jax.random.normal(k, s, jnp.float32) * 0.5 for k, s in zip(keys, [
        (TIME, BATCH, inputs), (BATCH, hidden), (BATCH, hidden), (4 * hidden, inputs),
        (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)], strict=False)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = normal
    return x, (h0, c0), w_ih, w_hh, b_ih, b_hh, keys[7]


def reference_lstm(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers,
                   dropout, bidirectional, precision=None):
    """``rnn.lstm``'s contract through ``rnn.lstm_ref``: the flat vector unpacked as JAX does."""
    del precision
    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                       bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size,
                        num_layers, dropout, bidirectional)


@pytest.fixture
def reference_kernel(monkeypatch):
    """The cuDNN layer with JAX's reference recurrence in the kernel's place."""
    _in_the_kernels_place(monkeypatch, reference_lstm)


def _in_the_kernels_place(monkeypatch, lstm):
    """Make the cuDNN layer call ``lstm`` (``rnn.lstm``'s contract) instead of the kernel."""
    monkeypatch.setattr(cudnn_lstm, "rnn", types.SimpleNamespace(
        lstm=lstm, get_num_params_in_lstm=rnn.get_num_params_in_lstm))


def _parting(mine, theirs, tol=1e-5):
    """Where two time-major ``(time, batch, ...)`` arrays first differ by more than ``tol``:
    a sentence naming the first ``(time, batch)`` and the largest difference, or None."""
    gap = np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64))
    gap = gap.reshape(gap.shape[0], gap.shape[1], -1).max(axis=-1)
    far = np.argwhere(gap > tol)
    if not len(far):
        return None
    steps = sorted({int(t) for t, _ in far})
    return (f"parted first at (time, batch) {tuple(int(i) for i in far[0])}, at steps "
            f"{steps} of {gap.shape[0]}, by up to {gap.max():.3g}")


def _largest_relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))


def test_packed_weights_unpack_to_the_canonical_tensors():
    """JAX's own unpacking of the flat vector gives back each canonical tensor exactly."""
    _, _, w_ih, w_hh, b_ih, b_hh, _ = _tensors()
    flat = cudnn_lstm.pack_weights(w_ih, w_hh, b_ih, b_hh)
    assert flat.shape == (rnn.get_num_params_in_lstm(INPUTS, HIDDEN, 1, False),)
    unpacked = rnn.unpack_lstm_weights(flat, INPUTS, HIDDEN, 1, False)
    for mine, theirs in zip((w_ih, w_hh, b_ih, b_hh), unpacked, strict=True):
        np.testing.assert_array_equal(np.asarray(theirs[0]), np.asarray(mine))
    with pytest.raises(ValueError, match="cuDNN lays out"):
        cudnn_lstm.pack_weights(w_ih, w_hh, b_ih, b_hh[:-1])


@pytest.mark.parametrize("length", [None, 5], ids=["full", "padded"])
def test_the_cudnn_layer_on_jaxs_reference_matches_the_scan(reference_kernel, length):
    """Outputs and final (h, c) to 1e-5 and every gradient to 1e-4 (relative to the
    tensor's largest entry), W_hh weight-dropped before packing; with ``length``, a window
    padded past its real steps (the outputs compared on the real ones)."""
    x, state, w_ih, w_hh, b_ih, b_hh, key = _tensors()
    real = TIME if length is None else length
    weights = jax.random.normal(jax.random.PRNGKey(9), (real, BATCH, HIDDEN))

    def run(layer):
        def loss(x, state, w_ih, w_hh, b_ih, b_hh):
            dropped = masks.weight_drop(w_hh, key, 0.5)
            y, (h, c) = layer(x, state, w_ih, dropped, b_ih, b_hh)
            return jnp.sum(y[:real] * weights) + jnp.sum(h * h) + jnp.sum(c), (y[:real], h, c)

        return jax.value_and_grad(loss, argnums=range(6), has_aux=True)(
            x, state, w_ih, w_hh, b_ih, b_hh)

    n = None if length is None else jnp.int32(length)
    (_, ours), our_grads = run(lambda x, s, a, b, c, d: cudnn_lstm.cudnn_lstm_layer(
        x, s, a, b, c, d, n))
    (_, scans), scan_grads = run(lambda x, s, a, b, c, d: scan_lstm.lstm_layer(
        x, s, a, b, c + d, n))
    for mine, theirs in zip(ours, scans, strict=True):
        assert float(jnp.max(jnp.abs(mine - theirs))) < 1e-5
    leaves = jax.tree.leaves(our_grads), jax.tree.leaves(scan_grads)
    assert len(leaves[0]) == 7  # x, h0, c0, w_ih, w_hh, b_ih, b_hh
    for mine, theirs in zip(*leaves, strict=True):
        assert _largest_relative(mine, theirs) < 1e-4
    assert float(jnp.max(jnp.abs(our_grads[3]))) > 0  # the gradient reached W_hh


@pytest.mark.parametrize("name", ["lstm", "awd-lstm-mos"])
def test_models_on_the_cudnn_layer_compute_what_they_compute_on_the_scan(reference_kernel,
                                                                         name):
    """Whole models, dropout on (weight drop included), with ``cudnn`` on (the reference in
    the kernel's place) and off: the same NLL, states and gradients. The plain LSTM's one
    bias goes in as ``b_ih`` with a zero ``b_hh``."""
    hp = TINY_AWD if name != "lstm" else {"emsize": 5, "nhid": 5, "nlayers": 2,
                                         "dropout": 0.3, "tie_weights": True,
                                         "init_range": 0.1}
    scan, cudnn = (build_model(name, 11, hp, cudnn=flag) for flag in (False, True))
    assert cudnn.cudnn and not scan.cudnn and hash(scan) != hash(cudnn)
    params = scan.init(jax.random.PRNGKey(2))
    tokens = jax.random.randint(jax.random.PRNGKey(3), (BATCH, TIME), 0, 11)
    targets = jnp.roll(tokens, -1, axis=1)

    def run(model):
        def loss(params):
            nll, states, _ = model.nll(params, tokens, targets, model.initial_state(BATCH),
                                       jax.random.PRNGKey(4))
            return nll.mean(), (nll, states)

        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, (nll_a, states_a)), grads_a = run(cudnn)
    (_, (nll_b, states_b)), grads_b = run(scan)
    assert float(jnp.max(jnp.abs(nll_a - nll_b))) < 1e-5
    for a, b in zip(jax.tree.leaves(states_a), jax.tree.leaves(states_b), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-5
    for key in grads_b:
        assert _largest_relative(grads_a[key], grads_b[key]) < 1e-4, key


def _fed_the_time_major_buffer(x, h_0, c_0, weights, seq_lengths, **sizes):
    """JAX's reference fed what a kernel reads when XLA hands it the layer's time-major
    buffer as its batch-major input (the transpose left as a bitcast): a wrong LSTM that
    agrees with the right one on the first output row only."""
    batch, time, inputs = x.shape
    return reference_lstm(x.swapaxes(0, 1).reshape(batch, time, inputs), h_0, c_0, weights,
                          seq_lengths, **sizes)


def test_a_kernel_fed_the_transposed_buffer_parts_as_the_h200s_did(monkeypatch):
    """The diagnosis of the H200's failure (jax 0.11.2): the GPU test's layer, with JAX's
    reference reading the time-major buffer as batch-major in the kernel's place, parts
    from the scan by the figure the H200 printed, 1.584834, and its last output row is the
    H200's (-0.137457, 0.856422, 0.517657), while the scan's is the H200's scan's."""
    x, state, w_ih, w_hh, b_ih, b_hh, key = _tensors(inputs=33, hidden=64)
    _in_the_kernels_place(monkeypatch, _fed_the_time_major_buffer)

    def run(layer):
        with jax.default_matmul_precision("highest"):
            return jax.jit(lambda x, s, a, b, c, d: layer(
                x, s, a, masks.weight_drop(b, key, 0.5), c, d))(x, state, w_ih, w_hh, b_ih,
                                                                 b_hh)

    scrambled, _ = run(cudnn_lstm.cudnn_lstm_layer)
    scan, _ = run(lambda x, s, a, b, c, d: scan_lstm.lstm_layer(x, s, a, b, c + d))
    assert abs(float(jnp.max(jnp.abs(scrambled - scan))) - 1.584834) < 1e-5
    np.testing.assert_allclose(scrambled[-1, -1, -3:], [-0.137457, 0.856422, 0.517657],
                               atol=1e-5)
    np.testing.assert_allclose(scan[0, 0, :3], [-0.480534, -0.056848, -0.004948], atol=1e-5)
    np.testing.assert_allclose(scan[-1, -1, -3:], [0.153677, 0.037257, 0.633801], atol=1e-5)
    assert _parting(scrambled, scan).startswith("parted first at (time, batch) (0, 1)")


def test_the_kernels_lowerings_pin_row_major_layouts():
    """jaxlib's cuDNN custom calls name no layouts; the engine registers them again with
    row-major ones on every operand and result. cuDNN's rule cannot lower on the CPU, so
    a stand-in custom call lowered through the same wrapper shows what it adds: the
    transposed input is then materialised, not handed over as a bitcast."""
    assert cudnn_lstm.KERNEL_LAYOUTS_PINNED  # both rules found and registered for cuda

    def stand_in(wrap):
        primitive = jax.extend.core.Primitive(f"stand_in_kernel_{wrap}")
        primitive.multiple_results = True
        primitive.def_abstract_eval(lambda x, w: (jax.core.ShapedArray(x.shape, x.dtype),
                                                  jax.core.ShapedArray(w.shape, w.dtype)))

        def rule(ctx, x, w):  # built as jaxlib builds the RNN call: no layouts named
            return hlo.CustomCallOp([x.type, w.type], [x, w],
                                    call_target_name=ir.StringAttr.get("stand_in")).results

        mlir.register_lowering(primitive, cudnn_lstm.with_row_major_layouts(rule) if wrap
                               else rule, platform="cpu")
        program = jax.jit(lambda x, w: primitive.bind(x.swapaxes(0, 1), w)).lower(
            jnp.zeros((TIME, BATCH, INPUTS)), jnp.zeros(4)).as_text()
        [call] = [line for line in program.splitlines() if "stablehlo.custom_call" in line]
        return call

    assert "layouts" not in stand_in(False)
    pinned = "[dense<[2, 1, 0]> : tensor<3xindex>, dense<0> : tensor<1xindex>]"
    call = stand_in(True)
    assert f"operand_layouts = {pinned}" in call and f"result_layouts = {pinned}" in call


def test_the_agreement_check_passes_the_lstm_and_refuses_another(reference_kernel,
                                                                 monkeypatch, capsys):
    """``assert_cudnn_agrees`` with JAX's reference in the kernel's place passes (and
    remembers the device, and prints the figure for the job's log); with a kernel that
    scrambles its input it refuses, naming where the outputs part and how far; and a GPU
    engine makes the check before anything."""
    monkeypatch.setattr(recurrence, "_AGREED", set())
    cpu = jax.devices("cpu")[0]
    largest, parted = recurrence.cudnn_agreement(cpu)
    assert largest < 1e-5 and parted is None
    capsys.readouterr()
    recurrence.assert_cudnn_agrees(cpu)
    assert recurrence._AGREED == {cpu}
    agreed = [line for line in capsys.readouterr().out.splitlines() if "agrees" in line]
    assert len(agreed) == 1 and "agrees with the scan: largest difference" in agreed[0]
    assert float(agreed[0].split("largest difference ")[1].split()[0]) == pytest.approx(
        largest, rel=0.05)
    engine_module = "mosbench.engines.jax.engine"
    monkeypatch.setattr(f"{engine_module}.choose_cudnn", lambda use, platform: True)
    assert load_engine("jax", seed=0).cudnn is True  # checked (remembered) and kept

    monkeypatch.setattr(recurrence, "_AGREED", set())
    _in_the_kernels_place(monkeypatch, _fed_the_time_major_buffer)
    largest, parted = recurrence.cudnn_agreement(cpu)
    assert largest > 0.1 and parted == (0, 1)
    with pytest.raises(MosbenchError) as refused:
        load_engine("jax", seed=0)
    message = str(refused.value)
    assert "does not compute the LSTM the engine's scan computes" in message
    assert "part first at (time, batch) (0, 1)" in message and "use_cudnn=False" in message
    assert recurrence._AGREED == set()


HLO_WITH_CUDNN = """
  %custom-call.1 = (f32[3,7,4]{2,1,0}, f32[1,3,4]{2,1,0}) custom-call(%p0, %p1), custom_call_target="cudnn_rnn_ffi", api_version=API_VERSION_TYPED_FFI
  %custom-call.2 = (f32[3,7,4]{2,1,0}, f32[1,3,4]{2,1,0}) custom-call(%p0, %p1), custom_call_target="cudnn_rnn_ffi", api_version=API_VERSION_TYPED_FFI
  %custom-call.3 = (f32[3,7,5]{2,1,0}) custom-call(%g0), custom_call_target="cudnn_rnn_bwd_ffi", output_to_operand_aliasing={{3}: (9, {})}
  %custom-call.4 = (f32[3,7,5]{2,1,0}) custom-call(%g1), custom_call_target="cudnn_rnn_bwd_ffi", output_to_operand_aliasing={{3}: (9, {})}
"""  # noqa: E501


def test_the_program_check_accepts_cudnn_calls_and_refuses_a_scan():
    """Counted in compiled HLO text (and a lowered program's StableHLO): enough forward
    and backward calls pass; too few, or a real CPU program (the scan), fail in words."""
    found = cudnn_lstm.assert_cudnn_lstm(HLO_WITH_CUDNN, 2)
    assert (found["cudnn_rnn_ffi"], found["cudnn_rnn_bwd_ffi"]) == (2, 2)
    stablehlo = '%0:4 = stablehlo.custom_call @cudnn_rnn_ffi(%arg0, %arg1) {api_version = 4}'
    assert cudnn_lstm.assert_cudnn_lstm(stablehlo, 1, gradient=False)["cudnn_rnn_ffi"] == 1
    with pytest.raises(MosbenchError, match="2 cudnn_rnn_ffi of 3"):
        cudnn_lstm.assert_cudnn_lstm(HLO_WITH_CUDNN, 3)
    forward_only = HLO_WITH_CUDNN.replace("cudnn_rnn_bwd_ffi", "something_else")
    with pytest.raises(MosbenchError, match=r"0 cudnn_rnn_bwd_ffi of 2 .*something_else"):
        cudnn_lstm.assert_cudnn_lstm(forward_only, 2)

    x, state, w_ih, w_hh, b_ih, b_hh, _ = _tensors()
    grad = jax.jit(jax.grad(lambda w: scan_lstm.lstm_layer(x, state, w_ih, w, b_ih)[0].sum()))
    program = grad.lower(w_hh).compile().as_text()
    with pytest.raises(MosbenchError) as refused:
        cudnn_lstm.assert_cudnn_lstm(program, 1)
    message = str(refused.value)
    assert "0 cudnn_rnn_ffi of 1" in message and "did not happen" in message
    assert "jax[cuda12]" in message  # what to install


def test_use_cudnn_chooses_the_layer_and_refuses_cudnn_without_a_gpu(monkeypatch):
    """'auto' scans on the CPU and takes cuDNN on a GPU (refusing a jaxlib without its
    kernels); True on CPU devices is a clear error when the engine is made; False scans."""
    assert choose_cudnn("auto", "cpu") is False and choose_cudnn(False, "gpu") is False
    with pytest.raises(MosbenchError, match="use_cudnn must be 'auto', True or False, got 1"):
        choose_cudnn(1, "cpu")
    if not _gpus():  # this jaxlib has no GPU plugin: a GPU job would be refused up front
        with pytest.raises(MosbenchError, match="no GPU plugin with its RNN kernels"):
            choose_cudnn("auto", "gpu")
    monkeypatch.setattr("mosbench.engines.jax.models.recurrence.cudnn_kernels_loaded",
                        lambda: True)
    assert choose_cudnn("auto", "gpu") is True and choose_cudnn(True, "gpu") is True

    with pytest.raises(MosbenchError) as refused:
        load_engine("jax", {"use_cudnn": True}, seed=0)
    assert "use_cudnn=True, but the job's devices are CPUs" in str(refused.value)
    engine = load_engine("jax", seed=0)
    assert engine.cudnn is False
    engine.build("awd-lstm", 11, TINY_AWD)
    assert engine.model.cudnn is False
    with pytest.raises(MosbenchError, match="run a lax.scan, not cuDNN"):
        engine.cudnn_calls()


# --- on a GPU ---------------------------------------------------------------------------------


@needs_gpu
def test_on_a_gpu_jaxs_kernel_matches_jaxs_reference_at_the_layers_sizes():
    """jaxlib's kernel against ``lstm_ref`` with no code of ours around it: batch-first
    input made before the call (no transpose in the program), no weight drop, the sizes
    of the test below. Failing here, the kernel (jaxlib or cuDNN) computes another LSTM."""
    x, (h0, c0), w_ih, w_hh, b_ih, b_hh, _ = _tensors(inputs=33, hidden=64)
    batch_first = jnp.asarray(np.ascontiguousarray(np.asarray(x).swapaxes(0, 1)))
    flat = cudnn_lstm.pack_weights(w_ih, w_hh, b_ih, b_hh)
    lengths = jnp.full((BATCH,), TIME, jnp.int32)
    sizes = {"input_size": 33, "hidden_size": 64, "num_layers": 1, "dropout": 0.0,
             "bidirectional": False}
    with jax.default_matmul_precision("highest"):
        kernel = jax.jit(lambda *a: rnn.lstm(*a, **sizes))(batch_first, h0[None], c0[None],
                                                            flat, lengths)
        reference = jax.jit(lambda *a: reference_lstm(*a, **sizes))(
            batch_first, h0[None], c0[None], flat, lengths)
    y, y_ref = (np.asarray(out[0]).swapaxes(0, 1) for out in (kernel, reference))
    assert _parting(y, y_ref) is None, _parting(y, y_ref)
    for mine, theirs in zip(kernel[1:], reference[1:], strict=True):
        assert float(jnp.max(jnp.abs(mine - theirs))) < 1e-5


@needs_gpu
def test_on_a_gpu_the_cudnn_layer_matches_itself_on_jaxs_reference(monkeypatch):
    """Our layer (packing, transposes, weight drop, jit) with the real kernel, then with
    ``lstm_ref`` in its place: the same outputs and states. Failing here and passing
    above, the kernel is right and our use of it is not."""
    x, state, w_ih, w_hh, b_ih, b_hh, key = _tensors(inputs=33, hidden=64)

    def run():
        def forward(x, state, w_ih, w_hh, b_ih, b_hh):
            return cudnn_lstm.cudnn_lstm_layer(x, state, w_ih, masks.weight_drop(w_hh, key, 0.5),
                                               b_ih, b_hh)

        with jax.default_matmul_precision("highest"):
            return jax.jit(forward)(x, state, w_ih, w_hh, b_ih, b_hh)

    y, (h, c) = run()
    _in_the_kernels_place(monkeypatch, reference_lstm)
    y_ref, (h_ref, c_ref) = run()
    assert _parting(y, y_ref) is None, _parting(y, y_ref)
    for mine, theirs in ((h, h_ref), (c, c_ref)):
        assert float(jnp.max(jnp.abs(mine - theirs))) < 1e-5


@needs_gpu
def test_on_a_gpu_the_cudnn_layer_matches_the_scan():
    """The real kernel against the scan, float32 without TF32 (``highest``): outputs and
    states to 1e-5, gradients to 1e-4 relative, weight drop on, full and padded windows."""
    x, state, w_ih, w_hh, b_ih, b_hh, key = _tensors(inputs=33, hidden=64)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), (TIME, BATCH, 64))
    for length in (None, 5):
        real = TIME if length is None else length
        n = None if length is None else jnp.int32(length)

        def run(layer, n=n, real=real):
            def loss(x, state, w_ih, w_hh, b_ih, b_hh):
                y, (h, c) = layer(x, state, w_ih, masks.weight_drop(w_hh, key, 0.5), b_ih,
                                  b_hh, n)
                return jnp.sum(y[:real] * cotangent[:real]) + jnp.sum(h * h) + jnp.sum(c), (
                    y[:real], h, c)

            with jax.default_matmul_precision("highest"):
                return jax.jit(jax.value_and_grad(loss, argnums=range(6), has_aux=True))(
                    x, state, w_ih, w_hh, b_ih, b_hh)

        (_, ours), our_grads = run(cudnn_lstm.cudnn_lstm_layer)
        (_, scans), scan_grads = run(lambda x, s, a, b, c, d, n: scan_lstm.lstm_layer(
            x, s, a, b, c + d, n))
        assert _parting(ours[0], scans[0]) is None, (length, _parting(ours[0], scans[0]))
        for mine, theirs in zip(ours, scans, strict=True):
            assert float(jnp.max(jnp.abs(mine - theirs))) < 1e-5, length
        for mine, theirs in zip(jax.tree.leaves(our_grads), jax.tree.leaves(scan_grads),
                                strict=True):
            assert _largest_relative(mine, theirs) < 1e-4, length


@needs_gpu
def test_on_a_gpu_the_training_step_compiles_to_cudnn_calls():
    """A GPU engine chooses cuDNN by itself, and its training step's compiled program holds
    a forward and a backward cuDNN call per layer and chunk (3 layers x 2 chunks)."""
    engine = load_engine("jax", gpus=1, seed=0)
    assert engine.cudnn is True
    hp = {**TINY_AWD, "small_batch_size": 2, "clip": 0.25, "wdecay": 1.2e-6, "alpha": 2,
          "beta": 1}
    engine.build("awd-lstm-mos", 11, hp)
    engine.prepare_training(hp, 4)
    tokens = np.arange(4 * TIME, dtype=np.int32).reshape(4, TIME) % 11
    loss, _ = engine.train_step(tokens, np.roll(tokens, -1, 1), engine.initial_state(4), 1.0,
                                False)
    assert np.isfinite(loss)
    [found] = engine.cudnn_calls()
    assert found["cudnn_rnn_ffi"] >= 6 and found["cudnn_rnn_bwd_ffi"] >= 6
