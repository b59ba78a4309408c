"""When a training or evaluation job stops early: SLURM's SIGTERM or its wall-time budget.

Either ends the job with :class:`mosbench.errors.TrainingPaused` (or
:class:`~mosbench.errors.EvaluationPaused`) once its progress is saved; the
next run of the same job resumes from there.
"""

import signal
import time


class StopSignal:
    """Remembers a SIGTERM (SLURM's warning before a time limit or preemption)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def out_of_time(wall_time_s, started):
    """Whether a job that started at ``started`` (``time.monotonic()``) has used its
    wall-time budget (None: no budget)."""
    return bool(wall_time_s) and time.monotonic() - started > wall_time_s
