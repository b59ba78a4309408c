"""Process-wide PyTorch settings of a job: devices, threads, matmul precision, determinism, seed.

Applied by the engine in the job's process and again by every worker
process, so all replicas compute alike.
"""

import os

import torch

from mosbench.errors import MosbenchError
from mosbench.workload import check_precision


def placement(gpus, devices=None):
    """The job's devices, one per replica: ``devices`` if given, else ``gpus`` GPUs or the CPU.

    ``devices`` may use TensorFlow's spelling too (``/cpu:0``, ``/gpu:1``),
    so a job's device list means the same in both frameworks; every CPU entry
    is one more CPU process.
    """
    if devices:
        names = []
        for name in devices:
            kind, _, index = str(name).strip("/").lower().partition(":")
            if kind == "cpu":
                names.append("cpu")
            elif kind in ("gpu", "cuda"):
                names.append(f"cuda:{index or 0}")
            else:
                raise MosbenchError(f"unknown device '{name}': use cpu, cuda:N or /gpu:N")
        placed = [torch.device(n) for n in names]
    elif gpus == 0:
        placed = [torch.device("cpu")]
    else:
        placed = [torch.device(f"cuda:{i}") for i in range(gpus)]
    wanted = max((d.index + 1 for d in placed if d.type == "cuda"), default=0)
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > available:
        raise MosbenchError(f"gpus={wanted} was asked for, but this machine shows {available} "
                            "GPU(s) to PyTorch; use gpus: [0] to train on the CPU")
    if len({d.type for d in placed}) > 1:
        raise MosbenchError(f"devices {devices} mix the CPU and GPUs: use one kind")
    return placed


def set_matmul_precision(precision):
    """Apply the preset's ``matmul_precision`` to PyTorch (process-wide).

    ``float32`` and ``mixed_bfloat16`` turn TensorFloat-32 off in matmuls and
    cuDNN (the reference never ran it; autocast decides the bfloat16 ops),
    ``tf32`` turns it on.
    """
    check_precision(precision)  # also in the worker processes, which start no engine
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def configure(*, device, threads=None, precision="float32", deterministic=False, seed=0):
    """Threads, precision, determinism and the seed of every generator, before any model."""
    if threads:
        torch.set_num_threads(threads)
    set_matmul_precision(precision)
    if deterministic and device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, set before its first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)  # the CPU generator and every GPU's
