"""An SQLite tracking store shared between machines: the job's warning, the cluster's check.

SQLite relies on POSIX locks, which NFS and other network file systems
implement loosely or not at all, so jobs writing one database over them
risk a corrupt store; and SQLite takes one writer at a time, so many jobs
queue on it. A tracking server (``make mlflow-server``) has neither problem.

* :func:`warn_if_on_network` (called when a job opens its store): one line,
  once per process, when the ``sqlite:///`` database's file system is a
  network or cluster one, as ``/proc/self/mountinfo`` says (the mount with
  the longest mount point that holds the resolved path).
* :func:`cluster_store_line` (the workflow's ``onstart``): when Snakemake
  sends jobs to other machines (``--profile slurm``), the store must be named
  in ``MLFLOW_TRACKING_URI``: without it the workflow stops before submitting
  anything, since the default would be the SQLite file ``results/mlflow.db``
  shared by every job over the cluster's file system. An ``sqlite:`` URI
  given on purpose is allowed, with a warning.
"""

import re
import sys
from pathlib import Path

from mosbench.errors import MosbenchError

MOUNTINFO = Path("/proc/self/mountinfo")
# File system types (mountinfo's, and FUSE subtypes after "fuse.") of network and
# cluster file systems, where SQLite's locking cannot be trusted.
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda",
    "lustre", "gpfs", "beegfs", "ceph", "cephfs", "ceph-fuse", "glusterfs", "ocfs2", "gfs2",
    "pvfs2", "orangefs", "panfs", "wekafs", "quobyte", "lizardfs", "moosefs", "mfs",
    "sshfs", "s3fs", "gcsfuse", "rclone", "juicefs", "davfs", "davfs2",
})
SERVER_HINT = ("start a tracking server (make mlflow-server HOST=0.0.0.0 "
               "ALLOWED_HOSTS=<this host>:5000) and export "
               "MLFLOW_TRACKING_URI=http://<this host>:5000 (README: Tracking server)")
_warned = set()  # databases already warned about in this process


def _unescape(field):
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mount_of(path, mountinfo=None):
    """``(mount point, file system type)`` of the mount that holds ``path``, or None.

    None when the mount table cannot be read (not Linux). The path is resolved
    first (symbolic links followed, as far as it exists), so a link into a
    network mount counts as that mount.
    """
    try:
        lines = Path(mountinfo or MOUNTINFO).read_text().splitlines()
    except OSError:
        return None
    path = Path(path).resolve()
    best = None
    for line in lines:
        # id parent major:minor root mount-point options [optional...] - type source super
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        point = Path(_unescape(fields[4]))
        if path == point or point in path.parents:
            # a longer mount point is nearer; of equal ones the later (stacked on top) wins
            if best is None or len(point.parts) >= len(best[0].parts):
                best = (point, rest[0])
    return None if best is None else (str(best[0]), best[1])


def is_network(fstype):
    """Whether a mountinfo file system type is a network or cluster file system."""
    return fstype in NETWORK_TYPES or (fstype.startswith("fuse.")
                                       and fstype.removeprefix("fuse.") in NETWORK_TYPES)


def network_mount(path, mountinfo=None):
    """``(mount point, type)`` if ``path`` is on a network file system, else None."""
    found = mount_of(path, mountinfo)
    return found if found is not None and is_network(found[1]) else None


def _sqlite_file(uri):
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").partition("?")[0])
    return None


def warn_if_on_network(uri):
    """Say once per process, in one line, when ``uri``'s SQLite database is on a network mount."""
    db = _sqlite_file(uri)
    if db is None or db in _warned:
        return
    _warned.add(db)
    found = network_mount(db)
    if found is not None:
        print(f"mosbench: tracking: warning: the SQLite store {db} is on a network file system "
              f"({found[1]} at {found[0]}), where SQLite's locking is unreliable and concurrent "
              f"jobs queue on its single writer; {SERVER_HINT}", file=sys.stderr, flush=True)


def cluster_store_line(executor, environ):
    """Before jobs go to other machines: the tracking store must be named; what to log.

    ``executor`` is Snakemake's (``slurm``) and ``environ`` the environment the
    jobs inherit. Raises MosbenchError when ``MLFLOW_TRACKING_URI`` is unset;
    returns a warning line for an ``sqlite:`` URI, else None.
    """
    uri = environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise MosbenchError(
            f"jobs run on other machines ({executor} executor) and MLFLOW_TRACKING_URI is not "
            "set: they would all write the SQLite file results/mlflow.db over the shared file "
            f"system. Either {SERVER_HINT}; or, for the SQLite file anyway, export "
            "MLFLOW_TRACKING_URI=sqlite:///$PWD/results/mlflow.db")
    if uri.startswith("sqlite:"):
        return (f"warning: jobs on other machines ({executor} executor) log to the SQLite store "
                f"{uri}, as MLFLOW_TRACKING_URI asks: SQLite over a network file system is "
                f"unreliable and takes one writer at a time; for many jobs, {SERVER_HINT}")
    return None
