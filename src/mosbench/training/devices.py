"""Placing a job on the devices its ``{gpus}`` wildcard names."""

from mosbench.errors import MosbenchError


def configure_devices(gpus, threads=None):
    """Limit TensorFlow to ``gpus`` GPUs (0: CPU only) and ``threads`` CPU threads.

    Returns the device string to place the model on. Must run before
    TensorFlow executes its first op.
    """
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    available = tf.config.list_physical_devices("GPU")
    if gpus == 0:
        tf.config.set_visible_devices([], "GPU")
        return "/CPU:0"
    if gpus > len(available):
        raise MosbenchError(
            f"gpus={gpus} was asked for, but this machine shows {len(available)} GPU(s) to "
            "TensorFlow; use gpus: [0] to train on the CPU"
        )
    if gpus > 1:
        raise MosbenchError(
            f"gpus={gpus}: multi-GPU data-parallel training is not implemented yet; "
            "use gpus 0 or 1"
        )
    tf.config.set_visible_devices(available[:gpus], "GPU")
    return "/GPU:0"
