"""Data parallelism over processes that the engine starts and stops itself.

The job's process is rank 0. :class:`Workers` starts the other ranks, each a
fresh interpreter (``python -P -m mosbench.engines.pytorch.worker``): not
``fork``, which CUDA does not survive, and not multiprocessing's ``spawn``,
which runs the job's main module again in every child (a Snakemake
``script:`` needs its ``snakemake`` object there, and would train a job of
its own). A worker gets rank 0's import path, the job's stdout and stderr
(its log), and its own end of a socket pair, wrapped as a
:mod:`multiprocessing.connection` connection: private to the two processes, so
no port to guard. Rank 0's multiprocessing ``authkey`` travels over it first,
as ``spawn`` passed it on: torch sends tensors through shared memory whose
file descriptors only a holder of that key may fetch.

Each worker runs :func:`serve`: it joins the process group (NCCL on GPUs,
gloo on the CPU, rendezvous through a TCP store on a port the OS picked), owns
a :class:`~mosbench.engines.pytorch.replica.Replica` and runs the commands
rank 0 sends over its connection, in order, until told to stop. The
collectives inside the commands (DDP's gradient all-reduce, weight broadcasts)
keep the replicas in step; connections carry only commands, windows and small
results.

Workers ignore SIGINT and SIGTERM, which a terminal or a scheduler sends to
the whole process group: rank 0 decides when to stop (it checkpoints on
SIGTERM, which needs them), and they exit when it closes them, when its end
of the connection closes, or when they see that it is gone.
"""

import os
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing import Pipe, current_process

import torch
import torch.distributed as dist

# Generous: the first collective waits for every replica's model and first steps.
TIMEOUT = timedelta(minutes=10)
START_TIMEOUT_S = 300.0


def _watch_parent(parent):
    """Exit as soon as rank 0's process is gone (a collective would otherwise wait)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def serve(rank, world, port, device, settings, conn, parent):
    """A worker's life: configure torch as rank 0 did, join the group, run commands.

    Called by :mod:`mosbench.engines.pytorch.worker`, which has already set
    SIGINT and SIGTERM aside.
    """
    from mosbench.engines.pytorch.replica import Replica
    from mosbench.engines.pytorch.runtime import configure

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        device = torch.device(device)
        configure(device=device, **settings)
        conn.send(("started", None))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=TIMEOUT)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=rank, world_size=world, timeout=TIMEOUT)
        replica = Replica(device, settings["precision"], rank, world, settings["seed"])
        while True:
            name, args, reply = conn.recv()
            if name == "close":
                break
            result = getattr(replica, name)(*args)
            if reply:
                conn.send(("ok", result))
    except EOFError:  # rank 0 closed its end: nothing left to do
        pass
    except BaseException:
        report = traceback.format_exc()
        try:
            conn.send(("error", report))
        finally:
            os._exit(1)  # never leave rank 0's collectives waiting on a half-dead group
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker_env():
    """The job's environment with rank 0's import path, as ``spawn`` gave its children.

    So a worker imports the same mosbench and torch as rank 0, also where these
    came from a path the job added (Snakemake's script preamble does). Absolute:
    ``''`` is rank 0's working directory (``python -c``), and the worker runs
    with ``-P``, which adds nothing of its own in front.
    """
    return {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)}


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback."""


class Workers:
    """Ranks 1..N-1 of a job, and rank 0's membership of their process group."""

    def __init__(self, devices, settings):
        self.world = len(devices)
        self.processes, self.conns = [], []
        backend = "nccl" if devices[0].type == "cuda" else "gloo"
        self.store = dist.TCPStore("127.0.0.1", 0, self.world, is_master=True,
                                   wait_for_workers=False, timeout=TIMEOUT)
        try:
            for rank, device in enumerate(devices[1:], start=1):
                self._start(rank, device, settings)
            self._receive("started", deadline=time.monotonic() + START_TIMEOUT_S)
            if devices[0].type == "cuda":
                torch.cuda.set_device(devices[0])
            dist.init_process_group(backend, store=self.store, rank=0, world_size=self.world,
                                    timeout=TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _start(self, rank, device, settings):
        """Start replica ``rank``'s interpreter and tell it who it is."""
        ours, theirs = Pipe()  # a socket pair; the worker inherits only its own end
        self.conns.append(ours)
        with theirs:
            fd = theirs.fileno()
            # stdout and stderr inherited: the job's log (mosbench.io.redirect_output)
            self.processes.append(subprocess.Popen(
                [sys.executable, "-P", "-m", "mosbench.engines.pytorch.worker", str(fd)],
                pass_fds=[fd], stdin=subprocess.DEVNULL, env=_worker_env()))
        try:
            ours.send((bytes(current_process().authkey),
                       (rank, self.world, self.store.port, str(device), settings, os.getpid())))
        except OSError:  # it died at once: _receive reports its exit code
            pass

    def _ended(self, rank, wait_s=5.0):
        """Why replica ``rank``'s connection ended: its exit code, once it has one."""
        try:
            code = self.processes[rank - 1].wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return f"replica {rank} closed its connection"
        return f"replica {rank} exited with code {code}"

    def _receive(self, expected="ok", deadline=None):
        """One message from every worker; raises :class:`WorkerError` on a failure."""
        results = []
        for rank, (conn, process) in enumerate(zip(self.conns, self.processes, strict=True), 1):
            while not conn.poll(0.5):
                if process.poll() is not None:
                    raise WorkerError(f"replica {rank} exited with code {process.returncode}")
                if deadline and time.monotonic() > deadline:
                    raise WorkerError(f"replica {rank} did not start in {START_TIMEOUT_S:.0f} s")
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):  # OSError: reset, as it died with a command unread
                raise WorkerError(self._ended(rank)) from None
            if kind == "error":
                raise WorkerError(f"replica {rank} failed:\n{value}")
            assert kind == expected, (kind, expected)
            results.append(value)
        return results

    def check(self):
        """Raise if a worker reported a failure (non-blocking)."""
        for rank, conn in enumerate(self.conns, 1):
            if conn.poll():
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    raise WorkerError(self._ended(rank)) from None
                raise WorkerError(f"replica {rank} failed:\n{value}" if kind == "error"
                                  else f"replica {rank} sent an unexpected {kind!r}")

    def send(self, name, args_per_worker, reply):
        self.check()
        for rank, (conn, args) in enumerate(zip(self.conns, args_per_worker, strict=True), 1):
            try:
                conn.send((name, tuple(args), reply))
            except OSError:  # it died since check(): say how
                raise WorkerError(self._ended(rank)) from None

    def receive(self):
        return self._receive()

    def failure(self, wait_s=5.0):
        """A worker's failure report, or its exit, within ``wait_s`` (after a collective broke)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for rank, conn in enumerate(self.conns, 1):
                if conn.poll():
                    try:
                        kind, value = conn.recv()
                    except (EOFError, OSError):  # died without a report (a crash, a kill)
                        return self._ended(rank)
                    if kind == "error":
                        return f"replica {rank} failed:\n{value}"
            time.sleep(0.05)
        return None

    def close(self):
        """Stop every worker (politely, then by force) and leave the process group."""
        for conn in self.conns:
            try:
                conn.send(("close", (), False))
            except (OSError, ValueError):
                pass
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()  # not SIGTERM first: workers ignore it
                process.wait()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
        if dist.is_initialized():
            dist.destroy_process_group()
