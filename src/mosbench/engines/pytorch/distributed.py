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

A worker that dies fails the job within seconds, as ``torchrun``'s agent
does it: a thread of rank 0 watches the worker processes, and at the first
death it records which replica and how (exit code or signal), kills the other
workers and, under NCCL, aborts rank 0's communicators. NCCL would otherwise
wait for the dead peer until its watchdog's timeout (10 minutes) and then
abort the process, with no traceback and the MLflow run left RUNNING; gloo
needs no help (the dead peer's sockets close and the collective raises at
once; an abort would not wake it). Rank 0 then raises one
:class:`WorkerError` naming the first replica to die. A worker that fails in
Python writes its traceback to its stderr, the job's log, at once, where
faulthandler writes a native crash's report, and sends it to rank 0, which
quotes its end in the error.
"""

import contextlib
import os
import signal
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
MONITOR_INTERVAL_S = 0.2  # how often rank 0 looks at its workers (torchrun's agent: 0.1 s)
TRACEBACK_LINES = 12  # of a failed worker's traceback, quoted in the WorkerError
# Signals whose report faulthandler writes before the process dies
FAULT_SIGNALS = {"SIGSEGV", "SIGFPE", "SIGABRT", "SIGBUS", "SIGILL"}


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
            # In the job's log now, as faulthandler's reports are, even if rank 0 cannot relay it
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"mosbench: replica {rank} (pid {os.getpid()}) failed:\n{report}")
                sys.stderr.flush()
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
    """A worker process failed: which replica, how it ended, the end of its traceback."""


def how_it_ended(code):
    """A worker's exit status in words: its exit code, or the signal that killed it."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if name == "SIGKILL":
        return ("was killed by SIGKILL (it leaves no traceback: the kernel's out-of-memory "
                "killer, a scheduler or a person sent it; `dmesg` says if it was memory)")
    if name in FAULT_SIGNALS:
        return f"was killed by {name} (faulthandler's report of where is above in the job's log)"
    return f"was killed by {name}"


class Workers:
    """Ranks 1..N-1 of a job, and rank 0's membership of their process group."""

    def __init__(self, devices, settings):
        self.world = len(devices)
        self.backend = "nccl" if devices[0].type == "cuda" else "gloo"
        self.processes, self.conns = [], []
        self.dead = None  # the rank of the first worker seen dead: the job's failure
        self._stopping = threading.Event()
        self._monitor = None
        self.store = dist.TCPStore("127.0.0.1", 0, self.world, is_master=True,
                                   wait_for_workers=False, timeout=TIMEOUT)
        try:
            for rank, device in enumerate(devices[1:], start=1):
                self._start(rank, device, settings)
            self._monitor = threading.Thread(target=self._watch, name="mosbench-workers",
                                             daemon=True)
            self._monitor.start()
            self._receive("started", deadline=time.monotonic() + START_TIMEOUT_S)
            if devices[0].type == "cuda":
                torch.cuda.set_device(devices[0])
            dist.init_process_group(self.backend, store=self.store, rank=0,
                                    world_size=self.world, timeout=TIMEOUT)
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

    def _watch(self):
        """Rank 0's thread: at the first worker's death, record it and get rank 0 out.

        The others are killed (they hold nothing rank 0's checkpoints lack, and
        under NCCL they would wait in the collective too); under NCCL rank 0's
        communicators are aborted, which ends the collective it waits in.
        """
        while not self._stopping.wait(MONITOR_INTERVAL_S):
            for rank, process in enumerate(self.processes, 1):
                if process.poll() is None:
                    continue
                self.dead = rank
                for other in self.processes:
                    if other.poll() is None:
                        other.kill()  # not SIGTERM: workers ignore it
                if self.backend == "nccl" and dist.is_initialized():
                    dist.group.WORLD.abort()
                return

    def _report(self, rank):
        """The traceback replica ``rank`` sent before it exited, if any (never blocks)."""
        conn = self.conns[rank - 1]
        try:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "error":
                    return value
        except (EOFError, OSError):
            pass
        return None

    def _error(self, rank, report=None, wait_s=5.0):
        """The :class:`WorkerError` of replica ``rank``'s end, or of the first replica seen dead.

        The first death is the cause: the others may have failed because of it
        (gloo's collectives raise when a peer's sockets close) or been killed.
        """
        if self.dead is not None and self.dead != rank:
            rank, report = self.dead, None
        process = self.processes[rank - 1]
        try:
            code = process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            code = None
        report = report or self._report(rank)
        message = f"replica {rank} (pid {process.pid}) " + (
            how_it_ended(code) if code is not None else "closed its connection")
        if report:
            lines = report.rstrip().splitlines()
            message += (f" after an error; the last lines of its traceback (all {len(lines)} "
                        "are above in the job's log):\n" + "\n".join(lines[-TRACEBACK_LINES:]))
        return WorkerError(message)

    def _receive(self, expected="ok", deadline=None):
        """One message from every worker; raises :class:`WorkerError` on a failure."""
        results = []
        for rank, (conn, process) in enumerate(zip(self.conns, self.processes, strict=True), 1):
            while not conn.poll(0.5):
                if self.dead is not None or process.poll() is not None:
                    raise self._error(rank)
                if deadline and time.monotonic() > deadline:
                    raise WorkerError(f"replica {rank} did not start in {START_TIMEOUT_S:.0f} s")
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):  # OSError: reset, as it died with a command unread
                raise self._error(rank) from None
            if kind == "error":
                raise self._error(rank, value)
            assert kind == expected, (kind, expected)
            results.append(value)
        return results

    def check(self):
        """Raise if a worker died or reported a failure (never blocks)."""
        if self.dead is not None:
            raise self._error(self.dead)
        for rank, conn in enumerate(self.conns, 1):
            if conn.poll():
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    raise self._error(rank) from None
                if kind == "error":
                    raise self._error(rank, value)
                raise WorkerError(f"replica {rank} sent an unexpected {kind!r}")

    def send(self, name, args_per_worker, reply):
        self.check()
        for rank, (conn, args) in enumerate(zip(self.conns, args_per_worker, strict=True), 1):
            try:
                conn.send((name, tuple(args), reply))
            except OSError:  # it died since check(): say how
                raise self._error(rank) from None

    def receive(self):
        return self._receive()

    def failure(self, wait_s=5.0):
        """A worker's failure as a :class:`WorkerError`, if one shows within ``wait_s``.

        Asked after a collective broke: a dead worker is the likely cause. The
        monitor's verdict, not the first connection with news: under gloo the
        other workers' collectives break too, and they report that at once.
        """
        deadline = time.monotonic() + wait_s
        while self.dead is None and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self.check()
        except WorkerError as error:
            return error
        return None

    def close(self):
        """Stop every worker (politely, then by force) and leave the process group."""
        self._stopping.set()
        if self._monitor not in (None, threading.current_thread()):
            self._monitor.join()  # before any worker exits on request: no death to report
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
