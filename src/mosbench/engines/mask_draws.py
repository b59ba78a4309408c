"""Embedding dropout's masks drawn through a built engine's own generator, for observing them.

Not used by training: tests (tests/test_random_streams.py) and benchmarks
(benchmarks/fidelity_probe.py ``embedding-masks``) call :func:`embedding_factors`
to draw the masks an engine's training steps would draw, from the same
generator, seed generator or key counter, at the engine's own dropout site,
so that what they measure is the stream training uses rather than a copy of
its rule. Each engine's draw is ``embedding_rows(engine, tokens, rate)`` in its own
``engines/<framework>/observe.py`` (an engine added later adds its own there).
Each draw advances that engine's stream as a training-mode forward does.
"""

import importlib

import numpy as np


def embedding_factors(engine, tokens, rate=None):
    """``(batch, time)`` factors one embedding-dropout draw gives the looked-up ``tokens``.

    ``tokens``: int32 ``(batch, time)``; each factor is 0 (the word type dropped)
    or 1/(1-rate) (kept). ``engine``: built, its training prepared (its
    generators exist). ``rate``: the draw's rate, default the engine's model's.
    """
    observe = importlib.import_module(f"mosbench.engines.{engine.framework}.observe")
    return one_factor_per_row(observe.embedding_rows(engine, tokens, rate))


def one_factor_per_row(rows):
    """``(batch, time, emsize)`` looked-up ones -> ``(batch, time)``: whole rows kept or dropped."""
    assert np.array_equal(rows, np.repeat(rows[..., :1], rows.shape[-1], axis=-1)), \
        "embedding dropout dropped single coordinates, not whole words"
    return rows[..., 0]

