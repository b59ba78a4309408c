"""JAX's embedding-dropout draw, for observing it (:mod:`mosbench.engines.mask_draws`)."""

import jax
import jax.numpy as jnp
import numpy as np

from mosbench.engines.jax.models import masks


def embedding_rows(engine, tokens, rate):
    """The next training-mode forward's key (``fold_in(mask_root, draws)``), which it spends."""
    key = jax.random.fold_in(engine.mask_root, engine.draws)
    engine.draws += 1
    ones = jnp.ones(engine.params["embedding"].shape)
    rate = engine.model.dropoute if rate is None else rate
    rows = masks.embedding_lookup(ones, jnp.asarray(tokens), masks.site_key(key, masks.EMBEDDING),
                                  rate)
    return np.asarray(rows)
