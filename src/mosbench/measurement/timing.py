"""Step times of the training loop: the first call apart, then a distribution per epoch."""

import numpy as np


class StepTimer:
    """Collects the wall time of each training step (the step's result fetched).

    The first call of each compiled step in a process traces and compiles it:
    that time is kept apart, as ``first_call_s[name]``, and not mixed into the
    distribution of the steady-state steps.
    """

    def __init__(self):
        self.first_call_s = {}
        self._times = []
        self._tracing = 0.0

    def record(self, name, seconds):
        if name in self.first_call_s:
            self._times.append(seconds)
        else:
            self.first_call_s[name] = seconds
            self._tracing += seconds

    def epoch_summary(self):
        """This epoch's step-time median and 95th percentile and the seconds its first calls
        took (``first_calls_s``: tracing and compiling); starts a new epoch."""
        times, self._times = self._times, []
        tracing, self._tracing = self._tracing, 0.0
        if not times:  # only first calls this epoch: nothing steady to report
            return {"step_time_median_s": None, "step_time_p95_s": None, "timed_steps": 0,
                    "first_calls_s": tracing}
        return {"step_time_median_s": float(np.median(times)),
                "step_time_p95_s": float(np.percentile(times, 95)),
                "timed_steps": len(times), "first_calls_s": tracing}
