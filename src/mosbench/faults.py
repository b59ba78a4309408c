"""Fault injection for the reliability tests: a job kills itself at a named point.

``MOSBENCH_FAULT="point:n:SIGNAL"`` (e.g. ``checkpoint-arrays:1:SIGKILL``)
makes the process send itself SIGNAL the n-th time it passes ``point`` in
this process. Unset, as in every real run, a point costs one lookup. The
points sit where an interruption is most likely to lose or corrupt data:
between training steps, while a checkpoint or the best weights are written,
and between writing the results and cleaning up.
"""

import os
import signal

_ENV = "MOSBENCH_FAULT"
_arrivals = {}


def point(name):
    """Pass the named point; die here if ``$MOSBENCH_FAULT`` says so."""
    fault = os.environ.get(_ENV)
    if not fault:
        return
    target, n, sig = fault.split(":")
    if target != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(n):
        os.kill(os.getpid(), signal.Signals[sig])
