"""On a GPU, the TensorFlow engine's LSTMs run cuDNN's fused kernel or the job fails.

With ``use_cudnn="auto"`` both kinds of LSTM layer fall back silently when
cuDNN cannot be used: Keras' ``LSTM`` to its generic loop, :class:`WeightDropLSTM`
to the hand-differentiated recurrence (``fast_lstm.py``). A GPU job would then
time a different kernel from the PyTorch engine's, which refuses to run
without cuDNN (``assert_fused_lstm``). So a GPU job builds its model with
``use_cudnn=True`` (:func:`use_cudnn_for`), which makes the layers raise
instead of falling back, and :func:`build_for_job` then proves the kernel
runs: it traces the model's recurrences, counts the ``CudnnRNNV3`` ops, and
runs them once in the compute dtype (bfloat16 under ``mixed_bfloat16``).
On the CPU nothing changes: ``"auto"`` takes the recurrence of ``fast_lstm.py``.
"""

import re

import tensorflow as tf

from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import MosbenchError

CUDNN_OP = "CudnnRNNV3"  # what keras.src.backend.tensorflow.rnn.lstm emits for cuDNN


def use_cudnn_for(gpus):
    """``use_cudnn`` for a job on ``gpus`` GPUs: required on a GPU, unchanged on the CPU."""
    return True if gpus >= 1 else "auto"


def traced_op_types(concrete):
    """Every op type of a traced function, the functions it calls included."""
    graph = concrete.graph.as_graph_def()
    return [n.op for n in graph.node] + [n.op for f in graph.library.function
                                         for n in f.node_def]


def _is_cudnn_refusal(exc):
    # The layers' own refusals under use_cudnn=True (WeightDropLSTM's RuntimeError,
    # Keras LSTM's ValueError) and a kernel that will not run; nothing else is relabelled.
    return isinstance(exc, tf.errors.OpError) or "use_cudnn=True" in str(exc)


def _fail(model_name, why):
    build = tf.sysconfig.get_build_info()
    return MosbenchError(
        f"model '{model_name}': on a GPU the TensorFlow engine runs its LSTMs on cuDNN's fused "
        f"kernel, like the PyTorch engine, and that kernel will not run here ({why}); "
        f"TensorFlow {tf.__version__} was built against CUDA {build.get('cuda_version')} and "
        f"cuDNN {build.get('cudnn_version')}; where those are missing, install it with them: "
        "`pip install -e '.[tensorflow-cuda]'` or the conda env envs/tensorflow.yaml")


def _first_line(exc):
    """The error's own first line: Keras wraps a layer's error in a header and ANSI bold."""
    lines = (line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines())
    why = next((line for line in lines
                if line and not line.startswith("Exception encountered when calling")), "")
    return f"{type(exc).__name__}: {why}"


# What a layer or kernel raises when cuDNN cannot be used; only refusals are relabelled.
_FAILURES = (RuntimeError, ValueError, NotImplementedError, tf.errors.OpError)


def traced_features(model, training):
    """``model.features`` traced on a two-step batch of one."""
    tokens, states = tf.zeros((1, 2), tf.int32), model.initial_state(1)
    concrete = tf.function(
        lambda t, s: model.features(t, s, training=training)).get_concrete_function(
        tokens, states)
    return concrete, (tokens, states)


def assert_cudnn_lstm(model, model_name="model"):
    """Raise MosbenchError unless every LSTM layer of ``model`` runs the cuDNN kernel.

    Traces ``model.features`` in training and in evaluation and requires one
    ``CudnnRNNV3`` op per LSTM layer in each; then runs the evaluation trace
    (no dropout, so no random generator advances) on the current device, which
    proves that a kernel exists for the compute dtype.
    """
    layers = len(model.rnns)
    try:
        for training in (True, False):
            concrete, args = traced_features(model, training)
            ops = traced_op_types(concrete)
            fused = ops.count(CUDNN_OP)
            if fused != layers:
                loops = sorted({op for op in ops if "While" in op or op == "Scan"})
                raise _fail(model_name, f"its {layers} LSTM layer(s) trace to {fused} "
                                        f"{CUDNN_OP} op(s) (training={training}; "
                                        f"loops instead: {loops or 'none'})")
        concrete(*args)  # the evaluation trace, the last of the loop
    except _FAILURES as exc:
        if not _is_cudnn_refusal(exc):
            raise
        raise _fail(model_name, _first_line(exc)) from exc


def build_for_job(model_name, vocab_size, hparams, gpus):
    """Build the named model for a job on ``gpus`` GPUs (0: the CPU).

    On a GPU with ``use_cudnn=True``, then :func:`assert_cudnn_lstm`. Building
    already calls the model once, eagerly: a layer that cannot use cuDNN raises
    there, and that becomes the same MosbenchError.
    """
    use_cudnn = use_cudnn_for(gpus)
    try:
        model = build_model(model_name, vocab_size, hparams, use_cudnn=use_cudnn)
    except _FAILURES as exc:
        if use_cudnn is not True or not _is_cudnn_refusal(exc):
            raise
        raise _fail(model_name, _first_line(exc)) from exc
    if use_cudnn is True:
        assert_cudnn_lstm(model, model_name)
    return model
