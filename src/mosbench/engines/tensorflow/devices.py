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
        raise MosbenchError(
            f"gpus={gpus} was asked for, but this machine shows {len(available)} GPU(s) to "
            "TensorFlow; use gpus: [0] to train on the CPU"
        )
    _before_first_op(tf.config.set_visible_devices, available[:gpus], "GPU")
    return "/GPU:0"
