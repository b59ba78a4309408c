"""Give each local job its own GPUs.

``snakemake --resources gpu=N`` keeps the GPUs that running jobs ask for at or
below N, but Snakemake assigns no device IDs: every job would see every GPU,
and TensorFlow takes memory on all it sees. A job claims its devices here by
holding an exclusive ``flock`` on one lock file per device and then shows
TensorFlow only those, through ``CUDA_VISIBLE_DEVICES``, which must happen
before TensorFlow is imported. The kernel drops a lock when its process ends,
however it ends, so a crashed job frees its GPUs.

Under SLURM the claim is made among the allocation's own devices (SLURM sets
``CUDA_VISIBLE_DEVICES`` to them), with locks of that allocation only
(``slurm-<SLURM_JOB_ID>`` below the lock folder). A job submitted by itself
claims what it was given; several jobs run by a local executor inside one
``salloc``/``srun`` allocation share it out, instead of all landing on its
first GPU. The allocation's folder is its own because jobs of two
allocations on one node may both see their GPU as device 0 (cgroups
renumber), and must not wait for each other.
"""

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

from mosbench.errors import MosbenchError

LOCK_DIR_ENV = "MOSBENCH_GPU_LOCK_DIR"  # one folder per machine, shared by all its jobs
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "mosbench-gpu-slots"

_held = []  # claims of this process, kept open (and so locked) until it exits


def machine_gpus(environ=None):
    """The device IDs jobs may share: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU NVML sees."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        ids = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",")]
        # CUDA ignores everything from the first invalid entry on; "-1" hides all devices.
        ids = ids[:ids.index("-1")] if "-1" in ids else ids
        return [d for d in ids if d]
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVIDIA driver or no library: no GPUs
        return []
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


class Claim:
    """Devices held by this process until :meth:`release` (or its exit)."""

    def __init__(self, devices, files):
        self.devices, self._files = devices, files

    def release(self):
        for f in self._files:
            f.close()  # closing the descriptor drops its flock
        self._files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _lock_file(path):
    # Read-only is enough for flock, and lets other users lock a file one of them created.
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666), "rb")


def _try_lock(f):
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _make_shared(folder):
    """Create ``folder`` and its missing parents shared like /tmp: any user's jobs may add locks."""
    if folder.exists():
        return
    _make_shared(folder.parent)
    try:
        folder.mkdir()
        os.chmod(folder, 0o1777)
    except FileExistsError:  # another job made it first
        pass


def claim(n, devices, lock_dir=None, poll_s=1.0, timeout_s=None):
    """Hold ``n`` of ``devices`` exclusively among all claimants using ``lock_dir``.

    Waits while other jobs hold too many; raises :class:`MosbenchError` if the
    machine has fewer than ``n`` or ``timeout_s`` passes.
    """
    if n > len(devices):
        raise MosbenchError(
            f"gpus={n} was asked for, but this machine has {len(devices)} GPU(s) "
            f"({','.join(devices) or 'none'}); use gpus: [0] to train on the CPU"
        )
    lock_dir = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    _make_shared(lock_dir)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waiting = False
    while True:
        # One claimant scans at a time, so two jobs cannot each take half of what both need.
        with _lock_file(lock_dir / "scan.lock") as scan:
            fcntl.flock(scan, fcntl.LOCK_EX)
            taken = []
            for device in devices:
                f = _lock_file(lock_dir / f"gpu-{device.replace('/', '_')}.lock")
                if _try_lock(f):
                    taken.append((device, f))
                    if len(taken) == n:
                        return Claim([d for d, _ in taken], [f for _, f in taken])
                else:
                    f.close()
            for _, f in taken:
                f.close()
        if deadline is not None and time.monotonic() > deadline:
            raise MosbenchError(f"no {n} free GPU(s) among {devices} after {timeout_s} s")
        if not waiting:
            print(f"waiting for {n} free GPU(s) among {','.join(devices)} "
                  f"(locks in {lock_dir})", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(poll_s)


def assign_devices(gpus, environ=None, lock_dir=None):
    """Make exactly ``gpus`` devices of this machine visible to this process; call before TF.

    Returns the device IDs now in ``CUDA_VISIBLE_DEVICES``. The claim lasts
    until the process exits.
    """
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in environ:  # share out this allocation's devices among its jobs
        base = Path(lock_dir or environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
        lock_dir = base / f"slurm-{environ['SLURM_JOB_ID']}"
    devices = []
    if gpus > 0:
        held = claim(gpus, machine_gpus(environ), lock_dir=lock_dir)
        _held.append(held)
        devices = held.devices
        if "CUDA_VISIBLE_DEVICES" not in environ:
            environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's numbering = NVML's
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # "" hides every GPU from a CPU job
    print(f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    return devices
