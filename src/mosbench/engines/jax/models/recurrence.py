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

A GPU engine that chose cuDNN first runs one small layer through both and
refuses the job where they part (:func:`assert_cudnn_agrees`): on an H200
(jax 0.11.2, cuDNN 9.19) the kernel's outputs once parted from the scan's
after their first row, and a job there would have trained another model than
the other engines while timing as if it trained the same one. The cause, XLA
handing the kernel a transposed buffer, is fixed in
``cudnn_lstm.pin_kernel_layouts`` (on the same GPU the two then agreed to
8e-7). The check stays: it costs seconds a job, and a jaxlib whose lowering
moved (``pin_kernel_layouts`` then pins nothing) or whose kernel reads
another layout would otherwise time a wrong LSTM silently.
"""

import jax
import jax.numpy as jnp
import numpy as np
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


# The agreement check's layer: odd sizes, a few steps, an initial state that is not zero.
CHECK_SIZES = {"time": 7, "batch": 3, "inputs": 33, "hidden": 64}
CHECK_TOLERANCE = 1e-4  # float32 over 7 steps parts by ~1e-6; a wrong LSTM by ~1
_AGREED = set()  # devices whose kernel was checked in this process


def cudnn_agreement(device):
    """Run the check layer through cuDNN and the scan on ``device``, float32 at
    ``highest``: ``(largest difference of outputs and state, where the outputs first
    part as (time, batch) or None)``."""
    t, b, i, h = (CHECK_SIZES[k] for k in ("time", "batch", "inputs", "hidden"))
    keys = jax.random.split(jax.random.PRNGKey(0), 7)
    shapes = [(t, b, i), (b, h), (b, h), (4 * h, i), (4 * h, h), (4 * h,), (4 * h,)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (
        jax.device_put(jax.random.normal(k, s, jnp.float32) * 0.5, device)
        for k, s in zip(keys, shapes, strict=True))
    with jax.default_matmul_precision("highest"):
        kernel = jax.jit(lambda *a: lstm_layer(*a, cudnn=True))(x, (h0, c0), w_ih, w_hh,
                                                                  b_ih, b_hh)
        scan = jax.jit(lambda *a: lstm_layer(*a, cudnn=False))(x, (h0, c0), w_ih, w_hh,
                                                                 b_ih, b_hh)
    (y, state), (y_scan, state_scan) = jax.device_get((kernel, scan))
    gaps = [np.abs(np.asarray(m, np.float64) - np.asarray(s, np.float64))
            for m, s in zip((y, *state), (y_scan, *state_scan), strict=True)]
    far = np.argwhere(gaps[0].max(axis=-1) > CHECK_TOLERANCE)
    return max(float(g.max()) for g in gaps), (tuple(int(k) for k in far[0]) if len(far)
                                                else None)


def assert_cudnn_agrees(device):
    """Raise MosbenchError unless cuDNN's LSTM on ``device`` computes the scan's LSTM.

    Once per device and process; two compiles of a small layer (seconds).
    """
    if device in _AGREED:
        return
    largest, parted = cudnn_agreement(device)
    if largest > CHECK_TOLERANCE:
        where = f"; the outputs part first at (time, batch) {parted}" if parted else ""
        raise MosbenchError(
            f"cuDNN's LSTM on {device} (jax {jax.__version__}) does not compute the LSTM "
            f"the engine's scan computes: on a {CHECK_SIZES['time']}-step test layer they "
            f"differ by up to {largest:.3g} (tolerance {CHECK_TOLERANCE:g}){where}. A JAX "
            "GPU job here would train another model than the other engines. "
            "`pytest --noconftest tests/test_jax_cudnn_lstm.py -k on_a_gpu` says whether "
            "the kernel itself or the layer around it parts; another jaxlib or cuDNN may "
            "agree; JaxEngine(use_cudnn=False) runs the scan on the GPU, for comparisons "
            "by hand")
    # printed, as the job's other one-line notes are: its log then says the kernel was checked
    print(f"cuDNN's LSTM on {device} agrees with the scan: largest difference {largest:.2g} "
          f"on the {CHECK_SIZES['time']}-step check layer (tolerance {CHECK_TOLERANCE:g})",
          flush=True)
    _AGREED.add(device)
