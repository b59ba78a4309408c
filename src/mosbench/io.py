"""Atomic file writes: a reader never sees a half-written output.

Every output is written to a temporary file in the same folder and renamed
into place (``os.replace`` is atomic on POSIX), so a killed job leaves either
the old file, or nothing, never a truncated file that looks complete.
With ``durable=True`` the file is also on disk before it is renamed and the
rename is on disk before the writer goes on (fsync of the file, then of its
folder): for files whose predecessor the writer deletes next (checkpoints)
or that replace one (the job's final outputs), so a power loss or node crash
cannot leave neither.
"""

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from mosbench.errors import MissingInput


def fsync_file(path):
    """Flush ``path``'s data to disk (the writer may have closed it already)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder):
    """Flush ``folder``'s entries (a rename, a new file) to disk.

    A file system that cannot sync a folder (EINVAL, ENOTSUP: some FUSE and
    SMB mounts) orders its metadata itself or not at all; nothing more to do there.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp", durable=False):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``suffix`` is for writers that insist on an extension (Keras wants ``.weights.h5``).
    ``durable``: fsync the file before the rename and the folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def all_or_nothing(*paths):
    """Delete a stage's outputs ``paths`` now, and again if the block raises.

    For a stage that writes several files (each atomically, with
    :func:`atomic_path`): a failed run, or a rerun that fails, leaves none of
    them, rather than the previous run's files or a mix of old and new ones
    that looks complete. Snakemake does the same before running a job; this
    makes the ``mosbench`` command behave alike.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        path.unlink(missing_ok=True)
    try:
        yield
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


def write_json(path, data, durable=False):
    """Write ``data`` as indented JSON, atomically (``durable``: see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# Files one stage writes for the next: which stage to run when one is missing.
_WRITTEN_BY = {"train.json": "train", "metrics.json": "evaluate", "source.json": "download",
               "probe.json": "probe"}


def read_json(path):
    """Read a JSON file; a missing one is a :class:`MissingInput` that says what writes it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        stage = _WRITTEN_BY.get(path.name)
        hint = f"run the {stage} stage for it first" if stage else "run the stage that writes it"
        raise MissingInput(f"{path} is missing; {hint}") from None
    return json.loads(text)


def redirect_output(log_path):
    """Send this process's stdout and stderr, at the file-descriptor level, to ``log_path``.

    File descriptors rather than ``sys.stderr`` so that TensorFlow's C++ logging
    lands in the Snakemake log too.
    """
    import sys

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as the job)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
