"""Fault injection for the reliability tests: a job fails at a named point.

``MOSBENCH_FAULT="point:n:FAULT"`` makes the process fail the n-th time it
passes ``point`` in this process. FAULT is a signal the process sends itself
(``checkpoint-arrays:1:SIGKILL``) or an errno name raised there as an
:class:`OSError` (``checkpoint-npz:2:ENOSPC``: a full disk; ``EDQUOT``: a
quota). Unset, as in every real run, a point costs one lookup. The points
sit where an interruption is most likely to lose or corrupt data: between
training steps, while a checkpoint or the best weights are written, and
between writing the results and cleaning up.
"""

import errno
import os
import signal

_ENV = "MOSBENCH_FAULT"
_arrivals = {}


def point(name):
    """Pass the named point; fail here if ``$MOSBENCH_FAULT`` says so."""
    fault = os.environ.get(_ENV)
    if not fault:
        return
    target, n, what = fault.split(":")
    if target != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] != int(n):
        return
    if what.startswith("SIG"):
        os.kill(os.getpid(), signal.Signals[what])
    else:
        code = getattr(errno, what)
        raise OSError(code, os.strerror(code))
