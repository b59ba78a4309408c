"""Training checkpoints that are atomic, verified on load and complete enough to resume.

A checkpoint is two files in the run's folder: ``checkpoint-<generation>.npz``
with every array the engine names (``Engine.checkpoint_arrays``: model,
optimiser, iterate average, the dropout generators' states) and the carried
hidden states and ``checkpoint.json`` with the loop's state (epoch, position
in the epoch, validation history, NT-ASGD switch, RNG state of the window
lengths, MLflow run id, the best weights' file) and the name and sha256 of
its npz. Each file is written to a temporary file, flushed to disk (fsync)
and renamed, and the rename flushed too (the folder's fsync). The JSON goes
last and older npz files are deleted only once it is on disk, so a job
killed at any point, or a node that loses power, leaves the previous
checkpoint whole; an npz that does not hash to what the JSON says is never
loaded. A full disk or quota while writing ends the job in one line that
says which checkpoint is kept (:func:`stop_on_full_disk`).

The JSON's ``fingerprint`` (the job's settings, the train code's hash and
the data's digest: see ``mosbench.training.train``) decides whether a rerun
resumes: only a readable checkpoint of this format can show it is of other
settings and be deleted.
"""

import contextlib
import errno
import hashlib
import json
from pathlib import Path

import numpy as np

from mosbench import faults
from mosbench.errors import MosbenchError
from mosbench.io import atomic_path, write_json

STATE = "checkpoint.json"
ARRAYS = "checkpoint-{generation}.npz"
# 4: the fingerprint holds the code hash and the data digest, which a format-3 one lacks
# 5: the model's weights and their average under the canonical names of mosbench.workload
FORMAT_VERSION = 5
# A write that fails with one of these is a full disk or quota, not a fault of the data.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# Temporary files (mosbench.io.atomic_path) a job killed mid-write leaves behind.
TEMPORARIES = (".checkpoint*", ".best-*", ".model.weights.npz.*", ".train.json.*")


def _signature(arrays):
    """Names and shapes of an engine's checkpoint arrays: what a resume must match."""
    return [[name, list(np.shape(value))] for name, value in arrays.items()]


def save(folder, engine, state, hidden=None):
    """Write a checkpoint of the ``engine``'s job with the loop ``state`` (a dict).

    Files in ``state["keep"]`` (the best weights) survive the clean-up of
    files the previous checkpoints used. Raises MosbenchError on a full disk
    or quota, the previous checkpoint kept.
    """
    folder = Path(folder)
    previous = state.get("generation", 0)
    generation = previous + 1
    arrays_name = ARRAYS.format(generation=generation)
    arrays = engine.checkpoint_arrays()
    signature = _signature(arrays)
    for i, value in enumerate(hidden or []):
        arrays[f"hidden/{i}"] = np.asarray(value)
    with (stop_on_full_disk(folder, arrays_name, previous),
          atomic_path(folder / arrays_name, suffix=".npz", durable=True) as tmp):
        np.savez(tmp, **arrays)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        faults.point("checkpoint-npz")  # written, not yet renamed
    with stop_on_full_disk(folder, STATE, previous):
        faults.point("checkpoint-arrays")  # renamed, the JSON still names the previous npz
        write_json(folder / STATE, {**state, "generation": generation,
                                    "format_version": FORMAT_VERSION, "sha256": digest,
                                    "arrays": arrays_name, "model_signature": signature},
                   durable=True)
    state["generation"] = generation
    # Only now, both files on disk, may the previous generation go.
    keep = {arrays_name, *state.get("keep", [])}
    for stale in (*folder.glob("checkpoint-*.npz"), *folder.glob("best-*.weights.npz")):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def stop_on_full_disk(folder, name, generation):
    """Turn a full disk or quota while writing ``name`` in ``folder`` into one clear line.

    ``generation`` is the checkpoint the failed write leaves in place (0: none yet);
    every other error passes through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        kept = (f"the previous checkpoint (generation {generation}) is kept and a rerun "
                "resumes from it" if generation else
                "no checkpoint had been written yet, so a rerun starts afresh")
        raise MosbenchError(f"{Path(folder)}: {exc.strerror} while writing {name}; {kept}. "
                            "Free space (or raise the quota) and run the job again") from None


def _check_format(path, state):
    """Refuse a checkpoint of another format: kept, since its settings cannot be compared."""
    if state.get("format_version") != FORMAT_VERSION:
        raise MosbenchError(
            f"{path}: checkpoint format {state.get('format_version')}, expected "
            f"{FORMAT_VERSION} (written by another version of mosbench); it is kept. To start "
            f"afresh, delete {path.parent / 'checkpoint'}* and {path.parent / 'best-'}*")


def exists(folder):
    return (Path(folder) / STATE).exists()


def load(folder, engine):
    """Restore the ``engine``'s job; return ``(state, hidden)``.

    Raises MosbenchError if the files do not match each other or the engine's model.
    """
    folder = Path(folder)
    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    _check_format(folder / STATE, state)
    arrays_path = folder / state["arrays"]
    try:
        raw = arrays_path.read_bytes()
    except OSError as exc:
        raise MosbenchError(f"{arrays_path}: unreadable ({exc.strerror})") from None
    if hashlib.sha256(raw).hexdigest() != state["sha256"]:
        raise MosbenchError(f"{arrays_path}: does not match its checksum in {STATE} "
                            "(a half-written or altered checkpoint); refusing to load it")
    if state["model_signature"] != _signature(engine.checkpoint_arrays()):
        raise MosbenchError(f"{folder}: the checkpoint is of a different model or preset "
                            f"than this {engine.framework} job's with the configured "
                            "hyperparameters")
    with np.load(arrays_path) as arrays:
        engine.restore_checkpoint({k: arrays[k] for k in arrays.files
                                   if not k.startswith("hidden/")})
        hidden = [arrays[k] for k in sorted(
            (k for k in arrays.files if k.startswith("hidden/")),
            key=lambda k: int(k.split("/")[1]))]
    return state, hidden


def same_job(folder, fingerprint):
    """Whether the checkpoint in ``folder`` was written by a job with these settings.

    Only a readable checkpoint of this format can prove it is of other settings (and
    be deleted by the caller): an unreadable one (a truncated file after a node crash,
    EIO or ESTALE on a network file system) or one of another format raises, and
    every file is kept.
    """
    path = Path(folder) / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, found {type(state).__name__}")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MosbenchError(
            f"{path}: unreadable ({reason}); the checkpoint and its arrays are kept, nothing "
            f"was deleted. Run the job again once the file system is back; to start afresh, "
            f"delete {Path(folder) / 'checkpoint'}*") from None
    _check_format(path, state)
    return state.get("fingerprint") == json.loads(json.dumps(fingerprint))


def remove(folder):
    """Delete a checkpoint and its files (the JSON first: a half-removed one is never loaded)."""
    folder = Path(folder)
    (folder / STATE).unlink(missing_ok=True)
    for pattern in ("checkpoint-*.npz", "best-*.weights.npz", *TEMPORARIES):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
