"""Which LSTM layer the JAX models run: cuDNN's on a GPU, the ``lax.scan`` elsewhere.

``use_cudnn`` mirrors the TensorFlow engine's: ``"auto"`` (the default) takes
cuDNN on GPU devices and the scan on the CPU; ``True`` insists on cuDNN and
refuses a job whose devices are not GPUs; ``False`` always scans. On a GPU
``"auto"`` insists as ``True`` does, as the other engines' GPU jobs do: a job
whose LSTM silently fell back would time another kernel.

It is a keyword of the engine (``JaxEngine(use_cudnn=...)``), not a config key
under ``engines.jax``: the study runs every framework's fused kernel on a GPU
and its own recurrence on the CPU, so there is nothing for a study to choose;
tests and benchmarks pass ``False`` to time or compare the scan on a GPU.
"""

from jax.experimental import rnn

from mosbench.engines.jax.models import scan_lstm
from mosbench.engines.jax.models.cudnn_lstm import cudnn_lstm_layer
from mosbench.errors import MosbenchError


def cudnn_kernels_loaded():
    """Whether jaxlib loaded the GPU plugin's RNN kernels (their sizes are asked at trace)."""
    return hasattr(getattr(rnn, "gpu_rnn", None), "compute_rnn_workspace_reserve_space_sizes")


def choose_cudnn(use_cudnn, platform):
    """Whether the models run cuDNN's LSTM on devices of ``platform`` (``cpu``, ``gpu``)."""
    if not (use_cudnn is True or use_cudnn is False or use_cudnn == "auto"):  # not 1 or 0
        raise MosbenchError(f"use_cudnn must be 'auto', True or False, got {use_cudnn!r}")
    if use_cudnn is False:
        return False
    if platform != "gpu":
        if use_cudnn is True:
            raise MosbenchError(
                f"use_cudnn=True, but the job's devices are {platform.upper()}s: cuDNN's LSTM "
                "(jax.experimental.rnn.lstm) runs on a CUDA GPU only; give the job GPUs, or "
                "leave use_cudnn at 'auto' to scan on the CPU")
        return False
    if not cudnn_kernels_loaded():
        raise MosbenchError(
            "a GPU job runs its LSTMs on cuDNN (jax.experimental.rnn.lstm), but this jaxlib "
            "loaded no GPU plugin with its RNN kernels: install JAX's CUDA plugin "
            "(`pip install -U 'jax[cuda12]'` or `'jax[cuda13]'`)")
    return True


def lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh=None, length=None, *, cudnn=False):
    """One LSTM layer over time-major ``x``: ``(outputs (time, batch, H), (h, c))``.

    ``b_hh`` None: one bias (the plain LSTM's); ``length``: the real steps of a
    padded window. ``cudnn``: :func:`cudnn_lstm.cudnn_lstm_layer`, else
    :func:`scan_lstm.lstm_layer`, which takes the biases summed.
    """
    if cudnn:
        return cudnn_lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh, length)
    bias = b_ih if b_hh is None else b_ih + b_hh
    return scan_lstm.lstm_layer(x, state, w_ih, w_hh, bias, length)
