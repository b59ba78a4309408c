"""Every JAX dropout mask, drawn from keys derived per forward and per site.

A training-mode forward gets one key (the engine folds its draw counter into
its mask root, so a checkpoint is a key and a count); each dropout site folds
its own fixed number into that key. Sites thus never share numbers, and a
forward's masks depend on nothing but the root and the forward's index.
"""

import jax
import jax.numpy as jnp

# One number per site; per-layer sites add the layer's index.
EMBEDDING, INPUT, OUTPUT, LATENT = 0, 1, 2, 3
WEIGHT_DROP, HIDDEN, PLAIN = 100, 200, 300


def site_key(key, site):
    """The key of one dropout site within a forward's ``key``.

    Under data parallelism ``key`` is a pair ``(shared, replica)``: weight drop,
    one mask of the whole matrix per global batch, draws from the key every
    replica shares; the masks over sequences from the replica's own, since they
    differ between replicas as between the rows of one batch.
    """
    shared, replica = key if isinstance(key, tuple) else (key, key)
    return jax.random.fold_in(shared if WEIGHT_DROP <= site < HIDDEN else replica, site)


def dropout_mask(key, shape, rate, dtype=jnp.float32):
    """A ``shape`` mask of 0 and 1/(1-rate); entries kept with probability 1-rate."""
    keep = 1.0 - rate
    return jax.random.bernoulli(key, keep, shape).astype(dtype) / jnp.asarray(keep, dtype)


def locked(x, key, rate):
    """Locked (variational) dropout of time-major ``x`` ``(time, batch, features)``.

    One ``(1, batch, features)`` mask per call: each sequence keeps its mask over time.
    """
    if key is None or rate == 0:
        return x
    return x * dropout_mask(key, (1, *x.shape[1:]), rate, x.dtype)


def plain(x, key, rate):
    """Ordinary dropout: a fresh draw per element (the baseline's non-recurrent dropout)."""
    if key is None or rate == 0:
        return x
    return x * dropout_mask(key, x.shape, rate, x.dtype)


def embedding_lookup(embedding, tokens, key, rate):
    """Look up ``tokens`` with whole word types dropped: one ``(vocab, 1)`` draw per call.

    The mask is looked up with the tokens, which equals a lookup in the masked
    matrix but touches (tokens, emsize) values only.
    """
    rows = jnp.take(embedding, tokens, axis=0)
    if key is None or rate == 0:
        return rows
    keep = dropout_mask(key, (embedding.shape[0], 1), rate, embedding.dtype)
    return rows * jnp.take(keep, tokens, axis=0)


def weight_drop(w_hh, key, rate):
    """DropConnect on a recurrent matrix: one mask of the whole matrix per forward."""
    if key is None or rate == 0:
        return w_hh
    return w_hh * dropout_mask(key, w_hh.shape, rate, w_hh.dtype)
