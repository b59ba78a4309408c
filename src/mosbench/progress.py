"""Progress of long loops: training epochs, evaluation passes, dynamic evaluation, rank rows.

A job reports where it is, how fast it goes and how long is left, so that a
slow job can be told from a stuck one. On a terminal (stderr is a TTY) the
report is one live bar, redrawn in place with a carriage return; elsewhere
(Snakemake's log files, SLURM's output) it is a plain line every
``MOSBENCH_PROGRESS_STEPS`` steps or ``MOSBENCH_PROGRESS_S`` seconds,
whichever comes later (defaults 100 steps and 30 s), so a log grows by a
line every half minute at most. ``MOSBENCH_PROGRESS_S=0`` and
``MOSBENCH_PROGRESS_STEPS=1`` report every step. Environment variables
rather than config keys: how often a job reports must rerun nothing.

Lines go to stderr, so stdout keeps the results a command prints.
Framework-neutral: the procedures (training, evaluation) call it between the
engine's steps, and :func:`reporting` wraps the window iterators they hand
to an engine.
"""

import os
import sys
import time

STEPS_ENV, SECONDS_ENV = "MOSBENCH_PROGRESS_STEPS", "MOSBENCH_PROGRESS_S"
DEFAULT_STEPS, DEFAULT_SECONDS = 100, 30.0
REDRAW_S = 0.5  # a terminal's bar: often enough to look live, rarely enough to cost nothing
BAR_WIDTH = 20


def duration(seconds):
    """``3725.2`` -> ``1:02:05``; unknown (None) -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _setting(name, default, kind):
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        from mosbench.errors import MosbenchError

        raise MosbenchError(f"environment variable {name}={text!r}: expected a non-negative "
                            f"number (default {default})")
    return value


class Progress:
    """One loop's progress: call :meth:`update` after each step, :meth:`close` at the end.

    ``what`` names the loop (``"train epoch 3/40"``, ``"evaluate test"``);
    ``total`` is the number of steps, if known (``approximate``: an estimate,
    shown as ``~N`` and, once :meth:`update` gets a ``fraction``, extrapolated
    from it); ``unit`` names a step in the line; ``elapsed_before``:
    seconds the loop ran before (an epoch resumed mid-way); ``more_label``
    names the time left after this loop (see :meth:`update`). ``stream`` defaults
    to stderr; ``live`` (default: whether the stream is a terminal) draws a
    bar instead of lines.
    """

    def __init__(self, what, total=None, *, unit="window", approximate=False, more_label="run",
                 elapsed_before=0.0, stream=None, live=None, every_steps=None, every_s=None,
                 clock=time.monotonic):
        self.what, self.total, self.unit, self.approximate = what, total, unit, approximate
        self.more_label = more_label
        self.stream = sys.stderr if stream is None else stream
        self.live = _is_terminal(self.stream) if live is None else live
        self.every_steps = (_setting(STEPS_ENV, DEFAULT_STEPS, int) if every_steps is None
                            else every_steps)
        self.every_s = _setting(SECONDS_ENV, DEFAULT_SECONDS, float) if every_s is None else every_s
        self.clock = clock
        self.started = clock() - elapsed_before
        self.done = 0
        self.lines = 0  # plain lines written (the bar's redraws not counted)
        self._last_step, self._last_time = 0, self.started
        self._drawn = False

    def update(self, done, *, tokens=None, fraction=None, fields=(), more=None):
        """Report ``done`` steps if it is time to.

        ``tokens``: processed so far (for tokens/s); ``fraction``: of the loop
        done, when steps are not the measure (variable-length windows);
        ``fields``: extra ``(label, text)`` pairs; ``more``: how many loops like
        this one follow (the epochs left in a training run's budget), for a
        second estimate of the time left, labelled ``more_label``.
        """
        self.done = done
        now = self.clock()
        if self.live:
            if now - self._last_time < REDRAW_S and done != self.total:
                return
        elif done - self._last_step < self.every_steps or now - self._last_time < self.every_s:
            return
        self._last_step, self._last_time = done, now
        line = self.describe(done, now - self.started, tokens, fraction, fields, more)
        if self.live:
            self.stream.write("\r" + line + "\x1b[K")  # erase what a longer bar left
            self._drawn = True
        else:
            self.stream.write(line + "\n")
            self.lines += 1
        self.stream.flush()

    def describe(self, done, elapsed, tokens=None, fraction=None, fields=(), more=None):
        """The report line for ``done`` steps after ``elapsed`` seconds."""
        if fraction is None and self.total:
            fraction = min(done / self.total, 1.0)
        parts = [self.what]
        total = self.total
        if self.approximate and fraction:  # the estimate, corrected by the progress so far
            total = max(done, round(done / fraction))
        of = f"/{'~' if self.approximate else ''}{total}" if total else ""
        parts.append(f"{self.unit} {done}{of}")
        if fraction is not None:
            bar = ""
            if self.live:
                filled = int(BAR_WIDTH * fraction)
                bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
            parts[-1] += f" {bar}{100 * fraction:.0f}%"
        parts += [f"{label} {text}" for label, text in fields]
        if tokens and elapsed > 0:
            parts.append(f"{tokens / elapsed:,.0f} tok/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if fraction:
            whole = elapsed / fraction
            left = f"ETA {duration(whole - elapsed)}"
            if more is not None:
                left += f", {self.more_label} {duration(whole - elapsed + more * whole)}"
            parts.append(left)
        return " | ".join(parts)

    def close(self):
        """End the loop's report: a terminal's bar is cleared, so the next line starts clean."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def reporting(items, what, total=None, *, tokens_per_item=None, unit="window"):
    """Yield ``items`` unchanged, reporting progress after each is consumed.

    For iterators handed to an engine (dynamic evaluation's segments, the
    gradient statistics' windows): a step is done when the engine asks for
    the next item. ``tokens_per_item(item)`` counts tokens for tokens/s.
    """
    progress = Progress(what, total, unit=unit)
    done = tokens = 0
    try:
        for item in items:
            if done:
                progress.update(done, tokens=tokens)
            yield item
            done += 1
            if tokens_per_item is not None:
                tokens += tokens_per_item(item)
        if done:
            progress.update(done, tokens=tokens)
    finally:
        progress.close()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
