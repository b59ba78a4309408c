"""One trainer per job folder: a lock file with a heartbeat, safe on NFS and Lustre.

Two trainers of one job (a restarted Snakemake controller while its SLURM
jobs still run, ``--nolock``, a manual ``mosbench train``) would overwrite and
delete each other's checkpoints and log every epoch twice. So a trainer first
creates ``trainer.lock`` in the job's folder, before it reads anything there,
and removes it when it ends, however it ends (finished, paused or failed).

Decision: ``flock``/``fcntl`` locks are not used: on NFS they depend on the
lock daemon and its recovery after a client crash, and on Lustre they may be
mounted off (``-o noflock``) or local to one node (``-o localflock``), where
two nodes would both "hold" the lock. Creating a file with ``O_CREAT | O_EXCL``
is atomic on local file systems, NFSv3 and later, and Lustre. The file holds
JSON naming its holder (host, pid, SLURM job id, start time); a daemon thread
touches it every ``HEARTBEAT_S`` seconds. A trainer that finds the lock judges
its holder:

* on this machine (same host name, boot and pid namespace): alive if its
  process runs (same pid and process start time, not a zombie); if not, it is
  provably gone and the lock is taken over at once;
* with no heartbeat for ``LEASE_S`` seconds: gone, taken over (clocks of the
  nodes and the file server are taken to agree within minutes, as NTP keeps
  them);
* elsewhere, with a recent heartbeat: this trainer cannot see that process,
  so it watches the heartbeat. A beat proves the holder alive; no beat within
  the lease means it died with its node (SLURM requeues such a job under the
  same id within seconds, and it should resume, not fail).

A live holder stops the second trainer with one MosbenchError line naming the
lock and the holder, before the folder is touched. A stale lock is taken
over with one line saying whose it was and why; the takeover itself runs
under a second ``O_EXCL`` file (``trainer.lock.takeover``), so two trainers
that find the same stale lock cannot both take it. A trainer only removes the
lock file that is still its own (the same inode). Not covered: a holder
frozen for longer than the lease (a suspended node that comes back) learns
of the takeover only when it ends; the lease is long so that this takes
minutes without a single beat.

The thread that holds a folder's lock may take it again (nested): the
``mosbench train`` command holds it while it clears the job's old outputs,
so that a refused second command deletes nothing of a trainer that has just
written them, and :func:`mosbench.training.train.train` takes it inside.

Neither name matches the checkpoint's files or temporaries
(:data:`mosbench.training.checkpoint.TEMPORARIES`), nor a declared Snakemake
output, so no clean-up deletes a held lock.
"""

import json
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from mosbench.errors import MosbenchError

LOCK = "trainer.lock"
HEARTBEAT_S = 30.0  # how often the holder touches its lock
LEASE_S = 300.0  # no heartbeat for this long (ten beats missed): the holder is gone
POLL_S = 5.0  # how often a trainer looks at the heartbeat of a holder on another machine
_held = {}  # absolute lock path -> the JobLock that this process holds there


def holder_record():
    """Who this process is, as written into the lock it holds."""
    return {**_machine(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": secrets.token_hex(8)}  # two locks never read the same


class JobLock:
    """The lock of one job folder, held from :meth:`acquire` (or ``with``) to :meth:`release`."""

    def __init__(self, folder):
        self.path = Path(folder).absolute() / LOCK  # also the key of _held
        self._fd = None
        self._stop = threading.Event()
        self._heartbeat = None
        self._nested = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        """Take the lock, taking over a stale one; MosbenchError if a live trainer holds it."""
        outer = _held.get(self.path)
        if outer is not None and outer._owner == (os.getpid(), threading.get_ident()):
            self._nested = True
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MosbenchError(f"{self.path.parent}: cannot create the job folder "
                                f"({exc.strerror})") from None
        watched = None  # (bytes, mtime) of a holder elsewhere whose heartbeat is watched
        while not self._create():
            seen = _look(self.path)
            if seen is None:
                continue  # released in the meantime: try again
            raw, mtime = seen
            holder, age = _parse(raw), time.time() - mtime
            state, reason = _judge(holder, age)
            if state == "gone":
                self._take_over(seen, holder, reason)
            elif state == "running here" or (watched and watched[0] == raw
                                             and watched[1] != mtime):
                proof = ("its process runs on this host" if state == "running here"
                         else "its heartbeat went on while this trainer watched")
                raise MosbenchError(
                    f"{self.path}: this job is being trained by {_describe(holder)} ({proof}); "
                    "this trainer stops without touching the folder (two would overwrite "
                    "each other's checkpoints). Let that one finish, or stop it "
                    "(SIGTERM pauses it with a checkpoint) and run the job again; delete the "
                    "lock only if that trainer is certainly gone")
            else:  # elsewhere, heartbeat recent: wait for a beat (alive) or the lease's end
                if watched is None or watched[0] != raw:
                    print(f"{self.path}: held by {_describe(holder)}, last heartbeat "
                          f"{age:.0f} s ago; watching it for up to {LEASE_S - age:.0f} s "
                          "(a beat: stop; none: take over)", flush=True)
                    watched = seen
                time.sleep(POLL_S)
        self._owner = (os.getpid(), threading.get_ident())
        _held[self.path] = self
        self._heartbeat = threading.Thread(target=self._beat, name="job-lock-heartbeat",
                                           daemon=True)
        self._heartbeat.start()
        return self

    def release(self):
        """Stop the heartbeat and remove the lock if it is still this trainer's."""
        if self._nested:
            self._nested = False
            return
        if self._fd is None:
            return
        _held.pop(self.path, None)
        self._stop.set()
        self._heartbeat.join()
        fd, self._fd = self._fd, None
        try:
            ours = os.fstat(fd)
            os.close(fd)
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                self.path.unlink()
            else:
                print(f"{self.path}: another trainer took this lock over while this one ran "
                      f"(this one's heartbeat stopped for over {LEASE_S:.0f} s); left to it",
                      flush=True)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the job's results are written; the next trainer takes it over
            print(f"{self.path}: could not remove the lock ({exc.strerror}); the next trainer "
                  "of this job takes it over", flush=True)

    def _create(self):
        """Create the lock with this process as its holder; False if it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise MosbenchError(f"{self.path}: cannot create the job lock ({exc.strerror}); "
                                "the job folder must be writable") from None
        try:
            os.write(fd, (json.dumps(holder_record(), indent=2) + "\n").encode())
            os.fsync(fd)
        except BaseException as exc:  # no half-written lock left to hold the job up
            os.close(fd)
            self.path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise MosbenchError(f"{self.path}: cannot write the job lock "
                                    f"({exc.strerror})") from None
            raise
        self._fd = fd
        return True

    def _take_over(self, seen, holder, reason):
        """Remove the stale lock ``seen`` ((bytes, mtime)) unless it changed since it was judged."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another trainer is taking it over (or died doing so)
            left = _look(guard)
            if left is not None and time.time() - left[1] > LEASE_S:
                guard.unlink(missing_ok=True)
            else:
                time.sleep(POLL_S)
            return
        try:
            if _look(self.path) == seen:  # not a beat since, nor a new holder's lock
                self.path.unlink()
                print(f"{self.path}: taking over the lock of {_describe(holder)}: {reason}",
                      flush=True)
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError:  # a file-system blip: the next beat tries again within the lease
                pass


def _judge(holder, age):
    """``("gone", reason)``, ``("running here", None)`` or ``("elsewhere", None)``."""
    if age > LEASE_S:
        return "gone", f"no heartbeat for {age:.0f} s"
    if holder is None:  # being written this instant, or unreadable: the lease decides
        return "elsewhere", None
    here = _machine()
    if holder.get("hostname") != here["hostname"]:
        return "elsewhere", None
    if holder.get("boot_id") and here["boot_id"] and holder["boot_id"] != here["boot_id"]:
        return "gone", "its host has restarted since"
    if holder.get("pid_namespace") != here["pid_namespace"]:
        return "elsewhere", None  # another container: its pid means nothing here
    if not _running(holder.get("pid"), holder.get("process_start")):
        return "gone", f"process {holder.get('pid')} has ended"
    return "running here", None


def _look(path):
    """The file's bytes and modification time (the heartbeat); None if it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY)  # an open revalidates NFS's cached attributes
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MosbenchError(f"{path}: cannot read the job lock ({exc.strerror})") from None
    try:
        return os.read(fd, 1 << 16), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _parse(raw):
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder):
    if holder is None:
        return "an unknown trainer (the lock file is empty or not JSON)"
    text = f"pid {holder.get('pid')} on {holder.get('hostname')}"
    if holder.get("slurm_job_id"):
        text += f", SLURM job {holder['slurm_job_id']}"
    return f"{text}, since {holder.get('started')}"


def _machine():
    """What makes pids comparable: the host, its boot and the pid namespace (None if unknown)."""
    return {"hostname": socket.gethostname(),
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
            "pid_namespace": _read_link("/proc/self/ns/pid")}


def _running(pid, process_start):
    """Whether process ``pid`` (started at ``process_start`` clock ticks) still runs here."""
    if not isinstance(pid, int):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie has ended; only its parent has not reaped it
        return False
    return process_start is None or int(fields[19]) == process_start  # else: the pid was reused


def _process_start(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _read_text(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _read_link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None
