"""What a job ran on: framework and library versions, GPUs, CPU, host, Python, code.

:func:`provenance` returns one flat dict with exactly :data:`KEYS`, None where
a value does not exist on the machine (no GPU, no git checkout, a framework
without companion libraries). Training writes it to ``train.json["provenance"]``
and to its MLflow run as tags; the aggregate compares it between seeds, so that
runs on different GPU models or library versions are never averaged together.
"""

import os
import platform
import socket
import subprocess
from pathlib import Path

KEYS = ("framework", "framework_version", "libraries", "cuda_version", "cudnn_version",
        "nvidia_driver", "gpu_model", "gpu_count", "cpu_model", "hostname", "python_version",
        "git_commit", "git_dirty")


def provenance(versions, gpus=0):
    """The provenance dict of a job that uses ``gpus`` GPUs (0: a CPU job).

    ``versions`` is the engine's ``Engine.versions()`` (framework, its
    version, CUDA, cuDNN and companion libraries); keys it lacks are None.
    The companion libraries (Keras; jaxlib and optax) become one text,
    ``libraries`` (``"keras 3.15.1"``), the same key for every framework and
    part of the aggregate's environments. The GPUs are the first ``gpus`` of
    those ``CUDA_VISIBLE_DEVICES`` shows, as the job's hardware monitor
    samples them; a CPU job records no GPU, no driver and no CUDA or cuDNN,
    whatever the machine or the wheel has (TensorFlow reports the CUDA it was
    built with on any machine).
    """
    libraries = versions.get("libraries") or {}
    record = {"framework": _text(versions.get("framework")),
              "framework_version": _text(versions.get("framework_version")),
              "libraries": library_text(libraries),
              "cuda_version": _text(versions.get("cuda")),
              "cudnn_version": _text(versions.get("cudnn"))}
    if not gpus:
        record.update(cuda_version=None, cudnn_version=None)
    driver, model = gpu_description(gpus) if gpus else (None, None)
    commit, dirty = git_state()
    record.update(nvidia_driver=driver, gpu_model=model, gpu_count=int(gpus),
                  cpu_model=cpu_model(), hostname=socket.gethostname() or None,
                  python_version=platform.python_version(), git_commit=commit,
                  git_dirty=dirty)
    return record


def library_text(libraries):
    """``{name: version}`` as ``"name version, ..."`` sorted by name; None when empty."""
    named = [f"{name} {version}" for name, version in sorted(libraries.items()) if version]
    return ", ".join(named) or None


def as_tags(record, prefix=""):
    """MLflow tags of a provenance dict: absent values left out, booleans in lower case."""
    return {f"{prefix}{key}": str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in record.items() if value is not None}


def gpu_description(gpus):
    """``(driver version, model name)`` of the job's first ``gpus`` GPUs, from NVML.

    Several models on one job are named together (``"A100 + V100"``), so such
    a job never looks like either. ``(None, None)`` without NVML or a GPU.
    """
    from mosbench.gpu_slots import machine_gpus
    from mosbench.measurement.hardware import nvml_indices

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no driver library, or no driver
        return None, None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
        mine = [handles[i] for i in nvml_indices(machine_gpus(), uuids)[:gpus]]
        names = sorted({_text(pynvml.nvmlDeviceGetName(h)) for h in mine})
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
    except (pynvml.NVMLError, ValueError):
        return None, None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return driver, " + ".join(names) or None


def cpu_model(cpuinfo=Path("/proc/cpuinfo")):
    """The CPU's model name, and on x86 its family and model numbers.

    The name is /proc/cpuinfo's ``model name`` (Linux), else the platform's.
    A virtual machine may show a bare name that covers several generations
    ("AMD EPYC" on a Zen 3 and on a Zen 4), whose kernels and speeds differ,
    so the first processor's ``cpu family`` and ``model`` follow it:
    ``"AMD EPYC (family 25 model 17)"``.
    """
    info = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if not line.strip() and info:
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = next((info[key] for key in ("model name", "Model", "cpu model") if info.get(key)),
                None)
    if name is None:
        return platform.processor() or platform.machine() or None
    if info.get("cpu family") and info.get("model"):
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def git_state():
    """``(commit, dirty)`` of the checkout this package runs from; ``(None, None)`` outside one.

    ``dirty``: tracked files differ from the commit (untracked files do not count).
    """
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True, env={**os.environ, "LC_ALL": "C"}
                              ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, dirty


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):  # older nvidia-ml-py returns bytes
        value = value.decode()
    value = str(value).strip()
    return value or None
