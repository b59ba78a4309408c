"""Evaluate's progress in its output folder: a paused or killed evaluation goes on where it was.

``evaluate-progress.json`` holds the results of the stages evaluate has
finished, each with the launch that ran it (timings are measured once, by
that launch), the launches' provenance, what the results are of (the trained
run, its weights' sha256, the preset, the code) and the name and sha256 of
``evaluate-progress-<generation>.npz``. That npz holds the arrays: dynamic
evaluation's gradient statistics once computed and, for a pass paused
mid-way, the losses of the segments scored, the adapted weights, the
carried states (:class:`mosbench.evaluation.dynamic_eval.PassState`) and the
seconds the pass has run so far.

Written as a training checkpoint is (:mod:`mosbench.training.checkpoint`):
each file to a temporary name, flushed to disk and renamed, the npz first,
the JSON that names it last, older npz files deleted after it. A kill at any
moment leaves the previous progress whole, a full disk too (one line says
so), and an npz that does not hash to what the JSON says is refused.
Progress of another trained model or other settings is removed with a line
saying so; an unreadable one is kept, and the job stops with one line
naming it.
"""

import errno
import hashlib
import json
from pathlib import Path

import numpy as np

from mosbench import faults
from mosbench.errors import MosbenchError
from mosbench.evaluation.dynamic_eval import PassState
from mosbench.io import atomic_path, write_json

PROGRESS = "evaluate-progress.json"
ARRAYS = "evaluate-progress-{generation}.npz"
FORMAT_VERSION = 1
STATISTICS = "statistics/"
PASS = "pass/"  # the paused pass's arrays: losses, weights/<name>, states/<i>
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(path):
    """The sha256 of a trained model's weights file: progress is only of these weights."""
    return _sha256(path)


def remove(folder):
    """Delete an evaluation's progress (the JSON first: a half-removed one is never read)."""
    folder = Path(folder)
    (folder / PROGRESS).unlink(missing_ok=True)
    for pattern in ("evaluate-progress-*.npz", ".evaluate-progress*"):  # and temporaries
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


class SavedProgress:
    """The stages an evaluation has finished and where its dynamic evaluation is.

    Open it with :meth:`open`; every change is written at once.
    """

    def __init__(self, folder, fingerprint):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
        self.state = {"stages": {}, "launches": [], "paused_pass": None, "generation": 0}
        self.arrays = {}

    @classmethod
    def open(cls, folder, fingerprint):
        """The progress in ``folder`` if it is of ``fingerprint``'s evaluation, else a fresh one.

        A readable progress of anything else is deleted (with a line); an
        unreadable one, or arrays that fail their checksum, raise MosbenchError
        and every file is kept.
        """
        progress = cls(folder, fingerprint)
        path = progress.folder / PROGRESS
        afresh = f"to evaluate afresh, delete {progress.folder / 'evaluate-progress'}*"
        if not path.exists():
            remove(progress.folder)  # arrays of a first save killed before its JSON
            return progress
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MosbenchError(
                f"{path}: unreadable ({reason}); it and its arrays are kept. Run the job again "
                f"once the file system is back; {afresh}") from None
        if (state.get("format_version") != FORMAT_VERSION
                or state.get("fingerprint") != progress.fingerprint):
            print(f"{path}: the progress there is of another trained model or other settings; "
                  "evaluating afresh", flush=True)
            remove(progress.folder)
            return progress
        arrays_path = progress.folder / state["arrays"]
        try:
            digest = _sha256(arrays_path)
        except OSError as exc:
            raise MosbenchError(f"{arrays_path}: unreadable ({exc.strerror}); {afresh}") from None
        if digest != state["sha256"]:
            raise MosbenchError(f"{arrays_path}: does not match its checksum in {PROGRESS} "
                                f"(a half-written or altered file); not resumed from; {afresh}")
        with np.load(arrays_path) as arrays:
            progress.arrays = {name: arrays[name] for name in arrays.files}
        progress.state = {key: state[key] for key in progress.state}
        return progress

    # --- what is saved ------------------------------------------------------------------------

    @property
    def stages(self):
        """``{stage: results}`` of the finished stages."""
        return {name: done["results"] for name, done in self.state["stages"].items()}

    def launch_of(self, stage):
        """The provenance of the launch that ran ``stage``."""
        return self.state["launches"][self.state["stages"][stage]["launch"]]

    @property
    def launches(self):
        return list(self.state["launches"])

    def statistics(self):
        """The saved gradient statistics (in the engine's weights order), or None."""
        names = sorted(n for n in self.arrays if n.startswith(STATISTICS))
        return [self.arrays[n] for n in names] if names else None

    def paused_pass(self, stage):
        """The :class:`PassState` a paused ``stage`` goes on from, or None."""
        if self.state["paused_pass"] != stage:
            return None
        weights = {n[len(PASS + "weights/"):]: a for n, a in self.arrays.items()
                   if n.startswith(PASS + "weights/")}
        states = [self.arrays[n] for n in sorted(n for n in self.arrays
                                                 if n.startswith(PASS + "states/"))]
        return PassState(self.arrays[PASS + "losses"].tolist(), weights, states or None)

    # --- saving -------------------------------------------------------------------------------

    def start_launch(self, provenance):
        """Note this launch (what it runs on); the stages it finishes name it."""
        self.state["launches"].append(provenance)

    def finish(self, stage, results, statistics=None):
        """Save ``stage``'s results (and dynamic evaluation's ``statistics``)."""
        self.state["stages"][stage] = {"results": results,
                                       "launch": len(self.state["launches"]) - 1}
        if statistics is not None:
            self.arrays.update({f"{STATISTICS}{i:04d}": np.asarray(s)
                                for i, s in enumerate(statistics)})
        if self.state["paused_pass"] == stage:
            self._drop_pass()
        self._save()

    def paused_seconds(self, stage):
        """The seconds a paused ``stage`` had run before it paused (0 for none)."""
        if self.state["paused_pass"] != stage or PASS + "seconds" not in self.arrays:
            return 0.0
        return float(self.arrays[PASS + "seconds"])

    def pause_pass(self, stage, where, seconds=0.0):
        """Save a dynamic-evaluation pass stopped mid-way (a :class:`PassState`) and the
        seconds it has run so far, over every launch."""
        self._drop_pass()
        self.state["paused_pass"] = stage
        self.arrays[PASS + "losses"] = np.asarray(where.losses, np.float64)
        self.arrays[PASS + "seconds"] = np.asarray(seconds, np.float64)
        self.arrays.update({f"{PASS}weights/{n}": np.asarray(a) for n, a in where.weights.items()})
        self.arrays.update({f"{PASS}states/{i:04d}": np.asarray(a)
                            for i, a in enumerate(where.states or [])})
        self._save()

    def _drop_pass(self):
        self.state["paused_pass"] = None
        self.arrays = {n: a for n, a in self.arrays.items() if not n.startswith(PASS)}

    def _save(self):
        generation = self.state["generation"] + 1
        name = ARRAYS.format(generation=generation)
        try:
            with atomic_path(self.folder / name, suffix=".npz", durable=True) as tmp:
                np.savez(tmp, **self.arrays)
                digest = _sha256(tmp)
                faults.point("evaluate-progress-npz")  # written, not yet renamed
            write_json(self.folder / PROGRESS,
                       {**self.state, "generation": generation, "format_version": FORMAT_VERSION,
                        "fingerprint": self.fingerprint, "arrays": name, "sha256": digest},
                       durable=True)
        except OSError as exc:
            if exc.errno not in FULL_DISK:
                raise
            raise MosbenchError(f"{self.folder}: {exc.strerror} while saving evaluate's "
                                "progress; what it saved before is kept and a rerun goes on "
                                "from there. Free space (or raise the quota) and run the job "
                                "again") from None
        self.state["generation"] = generation
        # Only now, both files on disk, may the previous generation go.
        for stale in self.folder.glob("evaluate-progress-*.npz"):
            if stale.name != name:
                stale.unlink(missing_ok=True)

    def remove(self):
        remove(self.folder)
