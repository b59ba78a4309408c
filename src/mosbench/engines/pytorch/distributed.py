"""Data parallelism over processes that the engine starts and stops itself.

The job's process is rank 0. :class:`Workers` spawns the other ranks (the
``spawn`` start method: CUDA does not survive ``fork``), each running
:func:`serve`: it joins the process group (NCCL on GPUs, gloo on the CPU,
rendezvous through a TCP store on a port the OS picked), owns a
:class:`~mosbench.engines.pytorch.replica.Replica` and runs the commands rank 0
sends over its pipe, in order, until told to stop. The collectives inside the
commands (DDP's gradient all-reduce, weight broadcasts) keep the replicas in
step; pipes carry only commands, windows and small results.

Workers ignore SIGINT and SIGTERM, which a terminal or a scheduler sends to
the whole process group: rank 0 decides when to stop (it checkpoints on
SIGTERM, which needs them), and they exit when it closes them, when its end
of the pipe closes, or when they see that it is gone.
"""

import os
import signal
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    """A worker's life: configure torch as rank 0 did, join the group, run commands."""
    from mosbench.engines.pytorch.replica import Replica
    from mosbench.engines.pytorch.runtime import configure

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
        context = mp.get_context("spawn")
        for rank, device in enumerate(devices[1:], start=1):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=serve, name=f"mosbench-replica-{rank}",
                args=(rank, self.world, self.store.port, str(device), settings, theirs,
                      os.getpid()))
            process.start()
            theirs.close()
            self.processes.append(process)
            self.conns.append(ours)
        try:
            self._receive("started", deadline=time.monotonic() + START_TIMEOUT_S)
            if devices[0].type == "cuda":
                torch.cuda.set_device(devices[0])
            dist.init_process_group(backend, store=self.store, rank=0, world_size=self.world,
                                    timeout=TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _receive(self, expected="ok", deadline=None):
        """One message from every worker; raises :class:`WorkerError` on a failure."""
        results = []
        for rank, (conn, process) in enumerate(zip(self.conns, self.processes, strict=True), 1):
            while not conn.poll(0.5):
                if not process.is_alive():
                    raise WorkerError(f"replica {rank} exited with code {process.exitcode}")
                if deadline and time.monotonic() > deadline:
                    raise WorkerError(f"replica {rank} did not start in {START_TIMEOUT_S:.0f} s")
            try:
                kind, value = conn.recv()
            except EOFError:
                raise WorkerError(f"replica {rank} closed its pipe") from None
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
                except EOFError:
                    raise WorkerError(f"replica {rank} has exited") from None
                raise WorkerError(f"replica {rank} failed:\n{value}" if kind == "error"
                                  else f"replica {rank} sent an unexpected {kind!r}")

    def send(self, name, args_per_worker, reply):
        self.check()
        for conn, args in zip(self.conns, args_per_worker, strict=True):
            conn.send((name, tuple(args), reply))

    def receive(self):
        return self._receive()

    def failure(self, wait_s=5.0):
        """A worker's failure report if one arrives within ``wait_s`` (after a collective broke)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for rank, conn in enumerate(self.conns, 1):
                if conn.poll():
                    try:
                        kind, value = conn.recv()
                    except EOFError:
                        continue
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
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
        if dist.is_initialized():
            dist.destroy_process_group()
