"""A TensorFlow GPU job runs right on the first try, or says why not.

* Asking for GPUs TensorFlow cannot see names this build's CUDA and cuDNN and
  the install that brings them (the ``tensorflow-cuda`` extra, envs/tensorflow.yaml).
* The GPUs a job uses grow their memory on demand (checked where there is a GPU).
* On a GPU the LSTMs run cuDNN's fused kernel or the job stops with a
  MosbenchError; on the CPU the models are built as before.

On a machine without a GPU the refusals are checked as they happen there;
Keras is told a GPU is visible in one test so that the cuDNN ops are traced
for real and their missing kernel stands in for one a GPU lacks.
"""

import importlib
import subprocess
import sys
import textwrap

import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from conftest import REPO  # noqa: E402
from mosbench.engines.tensorflow.devices import (  # noqa: E402
    configure_devices,
    missing_gpus_message,
)
from mosbench.engines.tensorflow.models import build_model  # noqa: E402
from mosbench.engines.tensorflow.models.cudnn_lstm import (  # noqa: E402
    CUDNN_OP,
    assert_cudnn_lstm,
    build_for_job,
    traced_features,
    traced_op_types,
    use_cudnn_for,
)
from mosbench.errors import MosbenchError  # noqa: E402

GPU = bool(tf.config.list_physical_devices("GPU"))
no_gpu = pytest.mark.skipif(GPU, reason="checks what a machine without a GPU does")
gpu_only = pytest.mark.skipif(not GPU, reason="needs a GPU visible to TensorFlow")

HP = dict(emsize=8, nhid=16, nhidlast=8, nlayers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
          dropoute=0.1, wdrop=0.1, init_range=0.5, n_experts=3, dropoutl=0.1, alpha=2.0,
          beta=1.0, clip=0.25, small_batch_size=None, tie_weights=True)
MODELS = ["lstm", "awd-lstm", "awd-lstm-mos"]


def hparams(model_name):
    return dict(HP, nhid=8) if model_name == "lstm" else dict(HP)


def cudnn_ops(model, training):
    return traced_op_types(traced_features(model, training)[0]).count(CUDNN_OP)


# ------------------------------------------------------------------------ missing GPUs


@no_gpu
def test_asking_for_a_gpu_tensorflow_cannot_see_names_its_build_and_the_cuda_install():
    build = tf.sysconfig.get_build_info()
    with pytest.raises(MosbenchError) as caught:
        configure_devices(1)
    message = str(caught.value)
    assert "gpus=1 was asked for, but TensorFlow sees 0 GPU(s)" in message
    if build.get("is_cuda_build"):  # the Linux x86_64 wheel
        assert f"CUDA {build['cuda_version']}" in message
        assert f"cuDNN {build['cudnn_version']}" in message
    assert "pip install -e '.[tensorflow-cuda]'" in message
    assert "envs/tensorflow.yaml" in message
    assert "gpus: [0]" in message and "\n" not in message


def test_a_build_without_cuda_is_named_as_such():
    message = missing_gpus_message(2, 1, {"is_cuda_build": False, "is_rocm_build": False})
    assert "gpus=2 was asked for, but TensorFlow sees 1 GPU(s)" in message
    assert "not a CUDA build" in message and "tensorflow-cuda" in message


@gpu_only
def test_the_gpus_a_job_uses_grow_their_memory_on_demand():
    # A fresh process: memory growth only takes before TensorFlow's first op.
    script = textwrap.dedent("""
        import tensorflow as tf
        from mosbench.engines.tensorflow.devices import configure_devices
        configure_devices(1)
        tf.constant(1.0) + 1  # initialises the GPU
        (gpu,) = tf.config.get_visible_devices("GPU")
        print("growth:", tf.config.experimental.get_memory_growth(gpu))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=300).stdout
    assert "growth: True" in out


# ------------------------------------------------------------------------------- cuDNN


def test_cudnn_is_required_on_a_gpu_and_left_to_auto_on_the_cpu():
    assert use_cudnn_for(0) == "auto"
    assert use_cudnn_for(1) is True and use_cudnn_for(4) is True


@pytest.mark.parametrize("model_name", MODELS)
def test_a_cpu_job_builds_its_model_as_before(model_name):
    model = build_for_job(model_name, 30, hparams(model_name), gpus=0)
    assert {rnn.use_cudnn for rnn in model.rnns} == {"auto"}
    if not GPU:  # the hand-differentiated recurrence (fast_lstm.py), no cuDNN op
        assert cudnn_ops(model, training=True) == cudnn_ops(model, training=False) == 0


@no_gpu
@pytest.mark.parametrize("model_name", MODELS)
def test_a_gpu_job_whose_lstms_cannot_use_cudnn_stops_with_a_clear_error(model_name):
    with pytest.raises(MosbenchError) as caught:
        build_for_job(model_name, 30, hparams(model_name), gpus=1)
    message = str(caught.value)
    assert f"model '{model_name}'" in message and "cuDNN's fused kernel" in message
    assert "use_cudnn=True" in message  # the layer's own refusal, unwrapped from Keras' header
    assert "Exception encountered" not in message and "\x1b" not in message
    assert "tensorflow-cuda" in message


@no_gpu
@pytest.mark.parametrize("model_name", MODELS)
def test_a_model_whose_lstms_fall_back_to_a_loop_is_refused(model_name):
    model = build_model(model_name, 30, hparams(model_name))  # "auto": the loop here
    with pytest.raises(MosbenchError, match=rf"its 2 LSTM layer\(s\) trace to 0 {CUDNN_OP}"):
        assert_cudnn_lstm(model, model_name)


@pytest.fixture
def keras_sees_a_gpu(monkeypatch):
    """Keras' LSTM backend believes a GPU is visible, so it traces the real cuDNN op."""
    rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
    monkeypatch.setattr(rnn, "_is_gpu_available", lambda: True)


def insist_on_cudnn(model):
    # Built without cuDNN (building runs the model eagerly); from now on it must use cuDNN.
    model.use_cudnn = True
    for rnn in model.rnns:
        rnn.use_cudnn = True
    return model


@no_gpu
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("model_name", MODELS)
def test_the_probe_counts_one_cudnn_op_per_layer_then_runs_them(keras_sees_a_gpu, model_name,
                                                                 precision):
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = insist_on_cudnn(build_model(model_name, 30, hparams(model_name),
                                            use_cudnn=False))
        assert cudnn_ops(model, training=True) == cudnn_ops(model, training=False) == 2
        # The count passes; running the ops needs a kernel, and this CPU has none.
        with pytest.raises(MosbenchError, match=f"No OpKernel was registered to support Op "
                                                f"'{CUDNN_OP}'"):
            assert_cudnn_lstm(model, model_name)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@gpu_only
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("model_name", MODELS)
def test_on_a_gpu_every_model_runs_its_lstms_on_cudnn(model_name, precision):
    keras.mixed_precision.set_global_policy(precision)
    try:
        with tf.device("/GPU:0"):
            model = build_for_job(model_name, 30, hparams(model_name), gpus=1)
        assert {rnn.use_cudnn for rnn in model.rnns} == {True}
    finally:
        keras.mixed_precision.set_global_policy("float32")
