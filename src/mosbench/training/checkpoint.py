"""Training checkpoints that are atomic, verified on load and complete enough to resume.

A checkpoint is two files in the run's folder: ``checkpoint.npz`` with every
array (all model variables, the dropout generators' seed states among them,
the optimiser's variables, the iterate average and the carried hidden
states) and ``checkpoint.json`` with the loop's state (epoch, position in the
epoch, validation history, NT-ASGD switch, RNG state of the window lengths,
MLflow run id) and the sha256 of the npz. Each is written to a temporary file
and renamed; the JSON goes last, so a checkpoint without a matching JSON, or
whose npz does not hash to what the JSON says, is never loaded.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from mosbench.errors import MosbenchError
from mosbench.io import atomic_path, write_json

ARRAYS = "checkpoint.npz"
STATE = "checkpoint.json"
FORMAT_VERSION = 1


def _signature(variables):
    return [[v.path, list(v.shape)] for v in variables]


def save(folder, model, optimizer, state, averages=None, hidden=None):
    """Write a checkpoint of ``model`` and ``optimizer`` with the loop ``state`` (a dict)."""
    folder = Path(folder)
    arrays = {f"model/{i}": np.asarray(v) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    for i, value in enumerate(averages or []):
        arrays[f"average/{i}"] = value
    for i, value in enumerate(hidden or []):
        arrays[f"hidden/{i}"] = np.asarray(value)
    with atomic_path(folder / ARRAYS, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    write_json(folder / STATE, {**state, "format_version": FORMAT_VERSION, "sha256": digest,
                                "model_signature": _signature(model.variables)})


def exists(folder):
    return (Path(folder) / STATE).exists()


def load(folder, model, optimizer):
    """Restore ``model`` and ``optimizer``; return ``(state, averages, hidden)``.

    Raises MosbenchError if the files do not match each other or the model.
    """
    folder = Path(folder)
    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    if state.get("format_version") != FORMAT_VERSION:
        raise MosbenchError(f"{folder / STATE}: checkpoint format {state.get('format_version')}, "
                            f"expected {FORMAT_VERSION}; delete the folder to start afresh")
    try:
        raw = (folder / ARRAYS).read_bytes()
    except OSError as exc:
        raise MosbenchError(f"{folder / ARRAYS}: unreadable ({exc.strerror})") from None
    if hashlib.sha256(raw).hexdigest() != state["sha256"]:
        raise MosbenchError(f"{folder / ARRAYS}: does not match its checksum in {STATE} "
                            "(a half-written or altered checkpoint); refusing to load it")
    if state["model_signature"] != _signature(model.variables):
        raise MosbenchError(f"{folder}: the checkpoint is of a different model or preset "
                            f"than '{model.name}' with the configured hyperparameters")
    with np.load(folder / ARRAYS) as arrays:
        for i, variable in enumerate(model.variables):
            variable.assign(arrays[f"model/{i}"])
        optimizer.build(model.trainable_variables)
        for i, variable in enumerate(optimizer.variables):
            variable.assign(arrays[f"optimizer/{i}"])
        averages = [arrays[k] for k in sorted(
            (k for k in arrays.files if k.startswith("average/")),
            key=lambda k: int(k.split("/")[1]))]
        hidden = [arrays[k] for k in sorted(
            (k for k in arrays.files if k.startswith("hidden/")),
            key=lambda k: int(k.split("/")[1]))]
    return state, averages, hidden


def same_job(folder, fingerprint):
    """Whether the checkpoint in ``folder`` was written by a job with these settings."""
    try:
        state = json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return state.get("fingerprint") == json.loads(json.dumps(fingerprint))


def remove(folder):
    """Delete a checkpoint (the JSON first, so a half-removed one is never loaded)."""
    for name in (STATE, ARRAYS):
        (Path(folder) / name).unlink(missing_ok=True)
