"""Atomic file writes: a reader never sees a half-written output.

Every output is written to a temporary file in the same folder and renamed
into place (``os.replace`` is atomic on POSIX), so a killed job leaves either
the old file, or nothing, never a truncated file that looks complete.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from mosbench.errors import MissingInput


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``suffix`` is for writers that insist on an extension (Keras wants ``.weights.h5``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
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


def write_json(path, data):
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
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
