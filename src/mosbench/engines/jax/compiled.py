"""Jitted functions compiled ahead of time per input shape, with their compiles counted.

Variable BPTT gives windows of many lengths, and ``jax.jit`` compiles once per
new shape. Compiling explicitly (``lower().compile()``) on a cache miss makes
that cost a figure of its own: how many programs a job compiled and the
seconds it spent on them, which AlgoPerf counts as part of a framework's time.
"""

import logging
import time

import jax

log = logging.getLogger(__name__)


class CompileLedger:
    """Compiles and their seconds, over every :class:`Compiled` of one engine."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0

    def as_dict(self):
        return {"compiles": self.count, "compile_s": round(self.seconds, 3)}


def _signature(args):
    leaves, tree = jax.tree.flatten(args)
    # the sharding too: a compiled program takes its arguments where it was compiled for
    return tree, tuple((getattr(x, "shape", ()), str(getattr(x, "dtype", type(x))),
                        getattr(x, "sharding", None)) for x in leaves)


# (name, what defines the function) -> (jitted function, {signature: program}), for the
# process: engines of the same model and settings (a test's, an evaluation after training)
# share their programs instead of compiling them again.
_SHARED = {}


class Compiled:
    """``jax.jit(make())`` with one compiled program per argument signature.

    ``key`` says what defines the function ``make`` returns (model, settings):
    engines with an equal key share the jitted function and its programs, and
    each engine's ledger counts the compiles it caused. Scalars must be passed
    as NumPy scalars of a fixed dtype (``np.float32``): a Python float would be
    weakly typed and not match the program. ``check(program)``, if given, sees
    each new program before it first runs (the cuDNN assertion); it raises to
    refuse one.
    """

    def __init__(self, name, key, make, ledger, check=None):
        self.name, self.ledger, self.check = name, ledger, check
        shared = (name, *key)
        if shared not in _SHARED:
            _SHARED[shared] = jax.jit(make()), {}
        self.jitted, self.programs = _SHARED[shared]

    def __call__(self, *args):
        key = _signature(args)
        program = self.programs.get(key)
        if program is None:
            start = time.perf_counter()
            program = self.jitted.lower(*args).compile()
            seconds = time.perf_counter() - start
            self.ledger.count += 1
            self.ledger.seconds += seconds
            if self.check is not None:
                self.check(program)
            self.programs[key] = program
            log.info("compiled %s for %s in %.2f s (%d compiles, %.1f s so far)", self.name,
                     [s for s, _, _ in key[1] if s][:3], seconds, self.ledger.count,
                     self.ledger.seconds)
        return program(*args)
