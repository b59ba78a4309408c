"""What a job takes from the machine: GPU memory, utilisation and power (NVML), host memory.

Units: memory in MiB (2**20 bytes, the ``_mb`` keys), utilisation in %, power in W.
A figure that could not be measured is None with a reason, never 0: a CPU job's
zero would read as a measurement of a GPU that used nothing.
"""

import resource
import sys
import threading

import psutil

from mosbench.gpu_slots import machine_gpus

MIB = 2**20
GPU_FIGURES = ("gpu_memory_peak_mb", "gpu_util_mean_pct", "gpu_util_max_pct",
               "gpu_power_mean_w", "gpu_power_max_w")
PROCESS_TREE = "process tree (the job's process and its descendants)"


def nvml_indices(visible, uuids):
    """NVML indices of the ``CUDA_VISIBLE_DEVICES`` entries ``visible``, in order.

    An entry is an index or a UUID (or a unique prefix of one, as CUDA accepts);
    ``uuids`` holds NVML's UUID of each device by NVML index. Indices are read as
    NVML's (PCI bus) order, which is CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    and on machines of identical GPUs. Raises ValueError for an unknown entry.
    """
    indices = []
    for entry in visible:
        if entry.isdigit() and int(entry) < len(uuids):
            indices.append(int(entry))
            continue
        matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        if len(matches) != 1:
            raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r} names {len(matches)} devices")
        indices.append(matches[0])
    return indices


class HardwareMonitor:
    """Samples the job's GPUs and this process's RSS every ``interval_s`` in a daemon thread.

    GPU memory is what NVML lists for the job's process tree (the process that made the
    monitor and its descendants, such as data-parallel workers) on the job's GPUs.

    Use as a context manager around the job; read :meth:`result` and :attr:`absent`
    after it exits. ``gpus`` is the number of GPUs the job uses (0: a CPU job): the
    first ``gpus`` of those ``CUDA_VISIBLE_DEVICES`` shows (all GPUs if unset).
    """

    def __init__(self, gpus, interval_s=0.5):
        self.gpus, self.interval_s = gpus, interval_s
        self.gpu_memory_source = None  # set by result(): what gpu_memory_peak_mb counts
        self._nvml, self._handles, self._no_gpu = None, [], None
        self._errors = {}  # series -> last error while sampling it
        self._rss, self._mem, self._util, self._power = [], [], [], []
        self._tree_seen, self._no_process_list = False, None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hardware-monitor", daemon=True)

    def __enter__(self):
        self._handles = self._open_gpus()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()  # so a job shorter than interval_s still has a sample at its end
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml, self._handles = None, []
        return False

    def _open_gpus(self):
        if self.gpus == 0:
            self._no_gpu = "gpus=0: a CPU job"
            return []
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # no package, no driver library, or no driver
            self._no_gpu = f"NVML unavailable: {e!r}"
            return []
        self._nvml = pynvml
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                       for i in range(pynvml.nvmlDeviceGetCount())]
            uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
            indices = nvml_indices(machine_gpus(), uuids)[:self.gpus]
        except (pynvml.NVMLError, ValueError) as e:
            self._no_gpu = f"cannot map CUDA_VISIBLE_DEVICES to NVML devices: {e}"
            return []
        if not indices:
            self._no_gpu = "no NVIDIA GPU visible to the job"
        return [handles[i] for i in indices]

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self):
        self._read("host_rss", self._rss, lambda: self._process.memory_info().rss / MIB)
        if self._handles:
            nv = self._nvml
            self._read("gpu_memory", self._mem, self._memory)
            self._read("gpu_util", self._util,
                       lambda: [nv.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles])
            self._read("gpu_power", self._power,  # mW -> W, the job's total over its GPUs
                       lambda: sum(nv.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000)

    def _read(self, series, values, read):
        # Never raise in the sampling thread: keep the error as the reason if no sample succeeds.
        try:
            values.append(read())
        except Exception as e:
            self._errors[series] = f"{type(e).__name__}: {e}"

    def _job_pids(self):
        """The job's process and its descendants now: re-read at each sample, since data-
        parallel workers start after the monitor and may be restarted."""
        return {self._process.pid, *(c.pid for c in self._process.children(recursive=True))}

    def _memory(self):
        """(the job's process tree's, whole devices') used memory, MiB, summed over the job's
        GPUs: a framework that runs a process per GPU is counted whole, like one that runs one."""
        nv, pids, own, used = self._nvml, self._job_pids(), 0, 0
        for h in self._handles:
            used += nv.nvmlDeviceGetMemoryInfo(h).used
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
            except nv.NVMLError as e:
                self._no_process_list = f"process list unavailable: {e}"
                continue
            for p in procs:
                if p.pid in pids and p.usedGpuMemory is not None:
                    own, self._tree_seen = own + p.usedGpuMemory, True
        return own / MIB, used / MIB

    def _gpu_figures(self):
        """GPU figures and reasons: memory and power are totals over the job's GPUs
        (peak over time of the per-sample sum); utilisation is over every device and sample."""
        figures, absent = dict.fromkeys(GPU_FIGURES), {}
        if self._no_gpu:
            return figures, dict.fromkeys(GPU_FIGURES, self._no_gpu)
        if self._mem:
            # Before the job touches a GPU none of its processes is in a process list, so
            # take the process-tree series if one was ever seen; else (separate PID
            # namespace, or no list) the whole devices' use, which counts other jobs too.
            self.gpu_memory_source = PROCESS_TREE if self._tree_seen else (
                "device used memory (all processes): " + (
                    self._no_process_list or f"no process of the job's tree (pid "
                    f"{self._process.pid} and its descendants) ever in the process list"))
            figures["gpu_memory_peak_mb"] = max(m[0 if self._tree_seen else 1] for m in self._mem)
        else:
            absent["gpu_memory_peak_mb"] = self._errors.get("gpu_memory", "no sample")
        util = [u for sample in self._util for u in sample]
        if util:
            figures["gpu_util_mean_pct"] = sum(util) / len(util)
            figures["gpu_util_max_pct"] = float(max(util))
        else:
            absent["gpu_util_mean_pct"] = absent["gpu_util_max_pct"] = self._errors.get(
                "gpu_util", "no sample")
        if self._power:
            figures["gpu_power_mean_w"] = sum(self._power) / len(self._power)
            figures["gpu_power_max_w"] = max(self._power)
        else:
            absent["gpu_power_mean_w"] = absent["gpu_power_max_w"] = self._errors.get(
                "gpu_power", "no sample")
        return figures, absent

    @property
    def absent(self):
        """Why each None figure of :meth:`result` is None."""
        return self._gpu_figures()[1]

    def result(self):
        """The figures, numbers or None (see :attr:`absent`), to read after exit.

        ``host_rss_peak_mb`` is the larger of the sampled RSS and the kernel's peak
        (``ru_maxrss``), which no sampling interval misses but covers the whole process life.
        """
        figures = self._gpu_figures()[0]
        kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        kernel_peak = kernel_peak / (MIB if sys.platform == "darwin" else 1024)
        figures["host_rss_peak_mb"] = max([kernel_peak, *self._rss])
        figures["hardware_samples"] = len(self._rss)
        return figures


def hardware_metrics(monitor):
    """The hardware figures a job writes, as ``(metrics, absent)``.

    ``metrics``: the monitor's :meth:`~HardwareMonitor.result` (the framework's allocator
    peak is the engine's, ``Engine.allocator_peak_mb``); ``absent``: the reason for each
    figure it could not take.
    """
    return monitor.result(), monitor.absent
