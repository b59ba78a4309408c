"""Process-wide JAX settings of a job: threads, determinism, matmul precision, devices.

XLA reads its flags once, when the first backend starts, so a single thread
and determinism are set in ``XLA_FLAGS`` before that and ignored (with a log
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
    """Whether XLA has started (so has read its flags); False when that cannot be asked.

    JAX has no public way to ask without starting a backend: this reads the private
    ``xla_bridge.backends_are_initialized()`` (a function, under its lock) when it
    exists. Where a later JAX drops it, the flags are set anyway, which is harmless:
    an XLA that has started ignores them, and only the log line is lost.
    """
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if callable(started) else False


def configure(*, threads=None, precision="float32", deterministic=False, compilation_cache=None):
    """Apply the job's settings; returns the compute dtype of the heads' matmuls.

    ``compilation_cache``: a folder for JAX's persistent compilation cache (every
    program, however quick its compile), for the process; None leaves JAX's setting.
    """
    check_precision(precision)
    flags = []
    if threads == 1:  # XLA has no flag for another pool size: its pool has one per core
        flags.append("--xla_cpu_multi_thread_eigen=false")
    if deterministic:
        flags.append("--xla_gpu_deterministic_ops=true")
    if flags:
        if _backend_started():
            log.info("XLA already started: %s not applied", " ".join(flags))
        else:
            os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    if compilation_cache is not None:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    matmul, compute = PRECISIONS[precision]
    jax.config.update("jax_default_matmul_precision", matmul)
    return compute


def _available(kind):
    try:
        return jax.devices(kind)
    except RuntimeError:  # no backend of that kind on this machine
        return []


def placement(gpus, devices=None):
    """The job's devices, one per replica: ``devices`` if given, else ``gpus`` GPUs or the CPU.

    ``devices`` in TensorFlow's or PyTorch's spelling (``/cpu:1``, ``/gpu:0``,
    ``cuda:0``); CPU devices beyond the first exist only with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts.
    """
    wanted = []
    for name in devices or ([f"gpu:{i}" for i in range(gpus)] if gpus else ["cpu:0"]):
        kind, _, index = str(name).strip("/").lower().partition(":")
        kind = {"cuda": "gpu"}.get(kind, kind)
        if kind not in ("cpu", "gpu"):
            raise MosbenchError(f"unknown device '{name}': use cpu:N, gpu:N or cuda:N")
        wanted.append((kind, int(index or 0)))
    if len({kind for kind, _ in wanted}) > 1:
        raise MosbenchError(f"devices {devices} mix the CPU and GPUs: use one kind")
    kind = wanted[0][0]
    available = _available(kind)
    missing = [i for _, i in wanted if i >= len(available)]
    if missing:
        hint = "; use gpus: [0] to train on the CPU" if kind == "gpu" else ""
        raise MosbenchError(f"{len(wanted)} {kind.upper()} device(s) were asked for "
                            f"({devices or gpus}), but JAX shows {len(available)} on this "
                            f"machine{hint}")
    return [available[i] for _, i in wanted]
