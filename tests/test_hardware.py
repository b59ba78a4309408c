"""Hardware measurements: host RSS sampled, GPU figures absent (never 0) without a GPU."""

import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections import namedtuple

import numpy as np
import psutil
import pytest

from mosbench.measurement import hardware
from mosbench.measurement.hardware import (
    GPU_FIGURES,
    PROCESS_TREE,
    HardwareMonitor,
    hardware_metrics,
    nvml_indices,
)

MIB = 2**20
GIB = 1024 * MIB
ALLOC_MB = 200


def _workload():
    block = np.ones(ALLOC_MB * MIB, dtype=np.uint8)  # ones, not empty: the pages are touched
    time.sleep(0.2)
    return block


def _rss_mb():
    return psutil.Process().memory_info().rss / MIB


def test_cpu_job_measures_host_memory_and_no_gpu():
    before = _rss_mb()
    with HardwareMonitor(gpus=0, interval_s=0.02) as monitor:
        block = _workload()
    del block
    result = monitor.result()
    assert np.isfinite(result["host_rss_peak_mb"])
    assert result["host_rss_peak_mb"] >= before + 0.75 * ALLOC_MB
    assert result["hardware_samples"] >= 5  # sampled through the job, not only at its ends
    for figure in GPU_FIGURES:
        assert result[figure] is None
        assert monitor.absent[figure] == "gpus=0: a CPU job"
    assert monitor.gpu_memory_source is None


def test_sampled_rss_sees_the_allocation(monkeypatch):
    # With the kernel's peak hidden, the figure comes from the sampling thread alone.
    no_peak = types.SimpleNamespace(ru_maxrss=0)
    monkeypatch.setattr(hardware, "resource",
                        types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: no_peak))
    before = _rss_mb()
    # One sample at the start, one at the exit (the interval is longer than the job):
    # the one at the exit must see the block, still alive then.
    with HardwareMonitor(gpus=0, interval_s=60) as monitor:
        block = _workload()
    del block
    assert monitor.result()["host_rss_peak_mb"] >= before + 0.75 * ALLOC_MB


def test_short_job_still_has_a_sample():
    with HardwareMonitor(gpus=0, interval_s=60) as monitor:
        pass
    assert monitor.result()["hardware_samples"] >= 1


def test_thread_stops_on_exit():
    with HardwareMonitor(gpus=0, interval_s=0.01) as monitor:
        assert monitor._thread.is_alive()
    assert not monitor._thread.is_alive()
    assert not any(t.name == "hardware-monitor" for t in threading.enumerate())


def test_gpu_job_without_nvml_is_absent_with_reason(monkeypatch):
    broken = types.ModuleType("pynvml")

    def init():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    broken.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with HardwareMonitor(gpus=1, interval_s=0.01) as monitor:
        pass
    result = monitor.result()
    for figure in GPU_FIGURES:
        assert result[figure] is None
        assert monitor.absent[figure].startswith("NVML unavailable")


def test_tf_allocator_absent_for_a_cpu_job():
    from mosbench.engines.tensorflow.engine import TensorFlowEngine

    assert TensorFlowEngine(gpus=0).allocator_peak_mb() == (None, "gpus=0: a CPU job")


def test_hardware_metrics_merges_reasons():
    with HardwareMonitor(gpus=0, interval_s=0.01) as monitor:
        pass
    metrics, absent = hardware_metrics(monitor)
    assert set(absent) == set(GPU_FIGURES)
    assert all(reason for reason in absent.values())
    assert metrics["host_rss_peak_mb"] > 0
    assert all(metrics[k] is None for k in absent)


UUIDS = ["GPU-aaaa-0", "GPU-bbbb-1", "GPU-abcd-2"]


def test_nvml_indices():
    assert nvml_indices(["2", "0"], UUIDS) == [2, 0]
    assert nvml_indices(["GPU-bbbb-1"], UUIDS) == [1]
    assert nvml_indices(["GPU-abc"], UUIDS) == [2]  # a unique prefix, as CUDA accepts
    assert nvml_indices([], UUIDS) == []
    with pytest.raises(ValueError):
        nvml_indices(["GPU-a"], UUIDS)  # ambiguous
    with pytest.raises(ValueError):
        nvml_indices(["3"], UUIDS)


Process = namedtuple("Process", "pid usedGpuMemory")


class FakeNVML(types.ModuleType):
    """Three GPUs; by default this process holds 1 GiB on GPU 1, another process 5 GiB on each.

    ``processes`` (device -> [Process]) replaces what the process lists show; a test may
    assign a new one while the monitor samples.
    """

    NVMLError = type("NVMLError", (Exception,), {})

    def __init__(self, list_processes=True, processes=None):
        super().__init__("pynvml")
        self.list_processes, self.shutdowns = list_processes, 0
        self.processes = processes if processes is not None else {
            h: [Process(1, 5 * GIB), *([Process(os.getpid(), GIB)] if h == 1 else [])]
            for h in range(3)}

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return UUIDS[h]

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=(6 if h == 1 else 5) * GIB)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if not self.list_processes:
            raise self.NVMLError("Not Supported")
        return list(self.processes.get(h, []))

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=10 * (h + 1))

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000 * (h + 1)  # mW


@pytest.mark.parametrize("list_processes, memory, source", [
    (True, 1024.0, PROCESS_TREE),
    (False, 6 * 1024.0, "device used memory (all processes): process list unavailable"),
])
def test_gpu_figures_from_nvml(monkeypatch, list_processes, memory, source):
    nvml = FakeNVML(list_processes)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb-1,2")
    with HardwareMonitor(gpus=1, interval_s=0.01) as monitor:  # uses GPU 1 only
        time.sleep(0.05)
    result = monitor.result()
    assert monitor.absent == {}
    assert result["gpu_memory_peak_mb"] == memory
    assert monitor.gpu_memory_source.startswith(source)
    assert result["gpu_util_mean_pct"] == result["gpu_util_max_pct"] == 20
    assert result["gpu_power_mean_w"] == result["gpu_power_max_w"] == 200
    assert nvml.shutdowns == 1


def test_sampling_errors_become_reasons(monkeypatch):
    nvml = FakeNVML()

    def no_power(h):
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetPowerUsage = no_power
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with HardwareMonitor(gpus=2, interval_s=0.01) as monitor:  # GPUs 0 and 1
        time.sleep(0.05)
    result = monitor.result()
    assert result["gpu_power_mean_w"] is None and result["gpu_power_max_w"] is None
    assert "Not Supported" in monitor.absent["gpu_power_max_w"]
    assert result["gpu_memory_peak_mb"] == 1024.0
    assert result["gpu_util_mean_pct"] == 15 and result["gpu_util_max_pct"] == 20


def test_gpu_memory_falls_back_when_the_job_is_never_listed(monkeypatch):
    # GPU 2 lists another process only (as in a separate PID namespace): the device's use.
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with HardwareMonitor(gpus=1, interval_s=0.01) as monitor:
        pass
    assert monitor.result()["gpu_memory_peak_mb"] == 5 * 1024.0
    assert monitor.gpu_memory_source == (
        "device used memory (all processes): no process of the job's tree "
        f"(pid {os.getpid()} and its descendants) ever in the process list")


def _wait_for(read, what, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while not (value := read()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.01)
    return value


def test_gpu_memory_counts_the_jobs_process_tree(monkeypatch):
    """A PyTorch job runs ranks 1..N-1 as child processes: their memory is the job's too,
    summed over its GPUs per sample, while another job's process on those GPUs is not."""
    nvml = FakeNVML(processes={1: [Process(os.getpid(), 4 * GIB)]})  # rank 0 builds alone
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    other = os.getppid()  # alive and not a descendant: stands for another job
    worker = None
    try:
        with HardwareMonitor(gpus=2, interval_s=0.01) as monitor:  # GPUs 1 and 2
            _wait_for(lambda: monitor._mem, "sample")
            # Started after the monitor, as the workers are; a grandchild too (sh's sleep).
            worker = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
            grandchild = _wait_for(lambda: psutil.Process(worker.pid).children(),
                                   "grandchild")[0].pid
            nvml.processes = {
                0: [Process(worker.pid, 9 * GIB)],  # a GPU the job does not use
                1: [Process(os.getpid(), GIB), Process(worker.pid, 2 * GIB),
                    Process(other, 7 * GIB), Process(grandchild, None)],  # None: not known
                2: [Process(worker.pid, 3 * GIB), Process(grandchild, GIB // 2),
                    Process(1, 5 * GIB), Process(other, 7 * GIB)],
            }
        # The sample at the exit saw the workers alive. The peak is of the per-sample sum:
        # 1 + 2 + 3 + 0.5 GiB, not the 4 GiB rank 0 held alone, nor a sum of the peaks (9.5).
        assert monitor.result()["gpu_memory_peak_mb"] == 6.5 * 1024
        assert monitor.gpu_memory_source == PROCESS_TREE
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)  # its own session: sh and its sleep
            worker.wait()
