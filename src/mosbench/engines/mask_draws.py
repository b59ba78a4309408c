"""Embedding dropout's masks drawn through a built engine's own generator, for observing them.

Not used by training: tests (tests/test_random_streams.py) and benchmarks
(benchmarks/fidelity_probe.py ``embedding-masks``) call :func:`embedding_factors`
to draw the masks an engine's training steps would draw, from the same
generator, seed generator or key counter, at the engine's own dropout site,
so that what they measure is the stream training uses rather than a copy of
its rule. One function per engine (an engine added later adds its own here).
Each draw advances that engine's stream as a training-mode forward does.
"""

import numpy as np


def embedding_factors(engine, tokens, rate=None):
    """``(batch, time)`` factors one embedding-dropout draw gives the looked-up ``tokens``.

    ``tokens``: int32 ``(batch, time)``; each factor is 0 (the word type dropped)
    or 1/(1-rate) (kept). ``engine``: built, its training prepared (its
    generators exist). ``rate``: the draw's rate, default the engine's model's.
    """
    draw = {"tensorflow": _tensorflow, "pytorch": _pytorch, "jax": _jax}[engine.framework]
    return one_factor_per_row(draw(engine, tokens, rate))


def one_factor_per_row(rows):
    """``(batch, time, emsize)`` looked-up ones -> ``(batch, time)``: whole rows kept or dropped."""
    assert np.array_equal(rows, np.repeat(rows[..., :1], rows.shape[-1], axis=-1)), \
        "embedding dropout dropped single coordinates, not whole words"
    return rows[..., 0]


def _tensorflow(engine, tokens, rate):
    """Through the model's ``embedding_seed``, the seed generator its training forwards use."""
    import tensorflow as tf

    from mosbench.engines.tensorflow.models.embedding_dropout import embedding_dropout

    m = engine.model
    ones = tf.ones(m.embedding.embeddings.shape)
    rate = m.dropoute if rate is None else rate
    return embedding_dropout(ones, tf.constant(tokens), rate, m.embedding_seed, True).numpy()


def _pytorch(engine, tokens, rate):
    """From the engine's own generators (``replica.generators``), as its steps draw."""
    import torch

    from mosbench.engines.pytorch.models import masks
    from mosbench.engines.pytorch.models.embedding_dropout import embedding_dropout

    m = engine.model
    ones = torch.ones_like(m.embedding.weight)
    rate = m.dropoute if rate is None else rate
    with masks.drawn_from(**engine.replica.generators), torch.no_grad():
        rows = embedding_dropout(ones, torch.from_numpy(tokens.T.astype(np.int64)), rate, True)
    return rows.numpy().transpose(1, 0, 2)  # time-major, as the model's lookup


def _jax(engine, tokens, rate):
    """The next training-mode forward's key (``fold_in(mask_root, draws)``), which it spends."""
    import jax
    import jax.numpy as jnp

    from mosbench.engines.jax.models import masks

    key = jax.random.fold_in(engine.mask_root, engine.draws)
    engine.draws += 1
    ones = jnp.ones(engine.params["embedding"].shape)
    rate = engine.model.dropoute if rate is None else rate
    rows = masks.embedding_lookup(ones, jnp.asarray(tokens), masks.site_key(key, masks.EMBEDDING),
                                  rate)
    return np.asarray(rows)
