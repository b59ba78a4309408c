"""The training loop's state: what every checkpoint saves beside the arrays.

:class:`LoopState` is what :func:`mosbench.training.train.train` reads and
changes as it goes; :meth:`LoopState.as_dict` is the JSON object
``checkpoint.json`` holds (:mod:`mosbench.training.checkpoint`), key for key
as the loop's dict was before it became a class, so checkpoints keep their
format: the optional keys are absent until set, and keys the checkpoint
module adds (``format_version``, ``sha256``, ...) are carried through.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from mosbench.training.bptt import rng_state

# Keys absent from a checkpoint until first set (None here means absent there).
OPTIONAL = ("fingerprint", "first_step_s", "time_to_first_step_s", "best_file", "keep",
            "generation")


def fresh_state(hparams, seed):
    """A new job's state as a checkpoint holds it: before its first epoch."""
    return {"phase": "train", "epoch": 0, "phase_epoch": 0, "position": 0,
            "lr": hparams["lr"], "averaging": False, "val_losses": [],
            "best_loss": math.inf, "best_epoch": 0, "history": [], "run_id": None,
            "rng": rng_state(np.random.default_rng(seed)), "partial": [0.0, 0, 0.0],
            "train_time_s": 0.0}


@dataclasses.dataclass
class LoopState:
    """Where the job is (phase, epoch, window position, schedule) and what it has so far.

    ``partial`` is an interrupted epoch's ``[loss sum, tokens, seconds]``;
    ``input_wait`` the :class:`~mosbench.measurement.timing.InputWait` totals;
    ``compiles`` the :class:`~mosbench.measurement.timing.CompileTotals` totals;
    ``launches`` each distinct provenance of the job's launches; ``keep`` the
    files a checkpoint's clean-up must leave (the best weights).
    """

    phase: str
    epoch: int
    phase_epoch: int
    position: int
    lr: float
    averaging: bool
    val_losses: list
    best_loss: float
    best_epoch: int
    history: list
    run_id: str | None
    rng: dict
    partial: list
    train_time_s: float
    launches: list = dataclasses.field(default_factory=list)
    input_wait: list = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    compiles: list = dataclasses.field(default_factory=lambda: [0, 0.0])
    fingerprint: dict | None = None
    first_step_s: float | None = None
    time_to_first_step_s: float | None = None
    best_file: str | None = None
    keep: list | None = None
    generation: int | None = None
    other: dict[str, Any] = dataclasses.field(default_factory=dict)  # the checkpoint's own

    @classmethod
    def start(cls, hparams, seed, fingerprint):
        return cls.from_dict({**fresh_state(hparams, seed), "fingerprint": fingerprint})

    @classmethod
    def from_dict(cls, saved):
        names = {f.name for f in dataclasses.fields(cls)} - {"other"}
        return cls(**{k: v for k, v in saved.items() if k in names},
                   other={k: v for k, v in saved.items() if k not in names})

    def as_dict(self):
        saved = {**self.other}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "other" and not (field.name in OPTIONAL and value is None):
                saved[field.name] = value
        return saved
