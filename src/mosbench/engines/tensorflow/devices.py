"""Placing a job on the devices its ``{gpus}`` wildcard names."""

import warnings

from mosbench.errors import MosbenchError


def _before_first_op(setter, *args):
    """Apply a TensorFlow runtime setting, which only works before TF's first op.

    A process that already ran TensorFlow (a notebook, the test suite) keeps
    its settings, with a warning; a pipeline job always starts fresh.
    """
    try:
        setter(*args)
    except RuntimeError as exc:
        warnings.warn(f"TensorFlow already initialised, keeping its settings: {exc}",
                      stacklevel=3)


def set_matmul_precision(precision):
    """Apply the preset's ``matmul_precision`` to TensorFlow and Keras (process-wide).

    ``float32`` turns TensorFloat-32 off (TensorFlow's default is on, which
    the reference never ran), ``tf32`` turns it on, ``mixed_bfloat16`` sets
    Keras' mixed policy: bfloat16 compute, float32 variables, and the models
    cast their logits to float32 before the loss.
    """
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "mixed_bfloat16" else "float32")


# How a GPU cluster installs TensorFlow with the CUDA and cuDNN it was built against.
CUDA_INSTALL = ("`pip install -e '.[tensorflow-cuda]'` (tensorflow[and-cuda]: NVIDIA's CUDA and "
                "cuDNN wheels, Linux x86_64) or the conda env envs/tensorflow.yaml")


def missing_gpus_message(gpus, seen, build_info):
    """Why ``gpus`` GPUs are not there, from TensorFlow's ``tf.sysconfig.get_build_info()``.

    A CUDA build that sees no GPU nearly always lacks the CUDA/cuDNN libraries it
    was built against (a plain ``pip install tensorflow`` on a node without them),
    so the message names those versions and the install that brings them.
    """
    if build_info.get("is_cuda_build"):
        built = (f"this TensorFlow is a CUDA build (CUDA {build_info.get('cuda_version')}, "
                 f"cuDNN {build_info.get('cudnn_version')}) and finds those libraries only "
                 f"where they are installed with it: {CUDA_INSTALL}; check also that "
                 "nvidia-smi lists the GPUs and CUDA_VISIBLE_DEVICES does not hide them")
    else:
        built = (f"this TensorFlow is not a CUDA build (is_cuda_build="
                 f"{build_info.get('is_cuda_build')}) and cannot use a GPU: on Linux x86_64 "
                 f"install {CUDA_INSTALL}")
    return (f"gpus={gpus} was asked for, but TensorFlow sees {seen} GPU(s): {built}; "
            "gpus: [0] runs the job on the CPU")


def configure_devices(gpus, threads=None):
    """Limit TensorFlow to ``gpus`` GPUs (0: CPU only) and ``threads`` CPU threads.

    Returns the device string to place the model on.
    """
    import tensorflow as tf

    if threads:
        _before_first_op(tf.config.threading.set_intra_op_parallelism_threads, threads)
        _before_first_op(tf.config.threading.set_inter_op_parallelism_threads, threads)
    available = tf.config.list_physical_devices("GPU")
    if gpus == 0:
        if available:
            _before_first_op(tf.config.set_visible_devices, [], "GPU")
        return "/CPU:0"
    if gpus > len(available):
        raise MosbenchError(missing_gpus_message(gpus, len(available),
                                                 tf.sysconfig.get_build_info()))
    used = available[:gpus]
    _before_first_op(tf.config.set_visible_devices, used, "GPU")
    # Without memory growth TensorFlow reserves nearly all of each GPU's memory at its first
    # op, so the device's memory figures would say nothing; grown on demand, they compare like
    # with like with PyTorch's caching allocator.
    for gpu in used:
        _before_first_op(tf.config.experimental.set_memory_growth, gpu, True)
    return "/GPU:0"
