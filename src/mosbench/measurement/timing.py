"""Step times of the training loop: the first call apart, then a distribution per epoch;
the input's share of the steps; the engine's compiles over a job's launches."""

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


class InputWait:
    """The share of the training steps spent waiting for their input.

    The input of a step is the loop's cut of the window from the in-memory
    token streams plus the engine's making of its tensors on the device from
    it (:meth:`mosbench.engines.interface.Engine.input_seconds`: the
    framework's own input path). ``totals`` is ``[input seconds, step
    seconds]``, kept in the job's checkpointed state so the figures span every
    launch; each compiled step's first call in a launch is left out, as
    :class:`StepTimer` leaves it out (it traces and compiles).
    """

    def __init__(self, engine, totals):
        self.engine, self.totals, self._seen = engine, totals, set()
        self._engine_s, self.reason = engine.input_seconds()

    def step(self, name, cut_s, step_s):
        """After a step: ``cut_s`` the loop's input, ``step_s`` the whole step, input included."""
        engine_s, self.reason = self.engine.input_seconds()
        made_s = engine_s - self._engine_s if engine_s is not None else 0.0
        self._engine_s = engine_s
        if name not in self._seen:
            self._seen.add(name)
            return
        self.totals[0] += cut_s + made_s
        self.totals[1] += step_s

    def figures(self):
        """``({input_wait_s, input_wait_fraction}, {figure: why absent})``."""
        names = ("input_wait_s", "input_wait_fraction")
        if self.reason:
            return dict.fromkeys(names), dict.fromkeys(names, self.reason)
        input_s, step_s = self.totals
        if step_s <= 0:
            return dict.fromkeys(names), dict.fromkeys(names, "no step after the first calls")
        return {"input_wait_s": input_s, "input_wait_fraction": input_s / step_s}, {}


COMPILE_FIGURES = ("compiles", "compile_s")


class CompileTotals:
    """The programs a job's engine compiled and their seconds, summed over its launches.

    Each launch makes a new engine, which compiles again and counts from zero
    (:meth:`mosbench.engines.interface.Engine.compile_statistics`).
    ``totals`` is ``[compiles, seconds]``, kept in the job's checkpointed
    state: it comes in as the earlier launches' sum, and :meth:`update` makes
    it that sum plus this launch's so far, so each checkpoint holds the figures
    up to its own point. A launch killed without a checkpoint adds nothing of
    what it compiled after the last one, as its steps since then add nothing
    to the job's times.
    """

    def __init__(self, engine, totals):
        self.engine, self.totals = engine, totals
        self._earlier = list(totals)
        self.given, self.reason = (), None

    def update(self):
        """Make ``totals`` the earlier launches' sum plus this launch's so far."""
        launch, self.reason = self.engine.compile_statistics()
        self.given = [n for n in COMPILE_FIGURES if (launch or {}).get(n) is not None]
        for i, name in enumerate(COMPILE_FIGURES):
            if name in self.given:
                self.totals[i] = self._earlier[i] + launch[name]

    def figures(self):
        """``({compiles, compile_s}, {figure: why absent})``, up to now."""
        self.update()
        figures = {name: total if name in self.given else None
                   for name, total in zip(COMPILE_FIGURES, self.totals, strict=True)}
        why = self.reason or "the engine did not give it"
        return figures, {name: why for name in COMPILE_FIGURES if name not in self.given}
