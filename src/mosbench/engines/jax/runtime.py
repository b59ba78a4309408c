"""Process-wide JAX settings of a job: threads, determinism, matmul precision, devices.

XLA reads its flags once, when the first backend starts, so threads and
determinism are set in ``XLA_FLAGS`` before that and ignored (with a log
line) after; the matmul precision is a config value any time.
"""

import logging
import os

import jax
import jax.numpy as jnp

from mosbench.errors import MosbenchError
from mosbench.workload import check_precision

log = logging.getLogger(__name__)

# matmul_precision -> (jax_default_matmul_precision, the head's compute dtype)
PRECISIONS = {"float32": ("highest", jnp.float32), "tf32": ("tensorfloat32", jnp.float32),
              "mixed_bfloat16": ("highest", jnp.bfloat16)}


def _backend_started():
    from jax._src import xla_bridge  # no public way to ask without starting one

    return bool(xla_bridge._backends)


def configure(*, threads=None, precision="float32", deterministic=False):
    """Apply the job's settings; returns the compute dtype of the heads' matmuls."""
    check_precision(precision)
    flags = []
    if threads:
        flags.append(f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}")
        flags.append(f"intra_op_parallelism_threads={threads}")
    if deterministic:
        flags.append("--xla_gpu_deterministic_ops=true")
    if flags:
        if _backend_started():
            log.info("XLA already started: %s not applied", " ".join(flags))
        else:
            os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    matmul, compute = PRECISIONS[precision]
    jax.config.update("jax_default_matmul_precision", matmul)
    return compute


def placement(gpus, devices=None):
    """The job's one device: the CPU, or the first GPU.

    The JAX engine trains on one device in this version: several GPUs or
    devices are refused in one line rather than silently using one.
    """
    if (devices and len(devices) > 1) or gpus > 1:
        raise MosbenchError(f"the JAX engine trains on one device in this version; asked for "
                            f"{devices or f'{gpus} GPUs'}")
    kind = "gpu" if gpus or (devices and "gpu" in str(devices[0]).lower()) else "cpu"
    if kind == "cpu":
        return jax.devices("cpu")[0]
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        raise MosbenchError("gpus=1 was asked for, but JAX shows no GPU on this machine; "
                            "use gpus: [0] to train on the CPU") from None
