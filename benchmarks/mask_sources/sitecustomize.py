"""``fidelity.py --masks``: an engine's dropout masks from another random source.

Python imports ``sitecustomize`` at start-up from the first folder on the path
that has one; ``fidelity.py`` puts this folder first on ``PYTHONPATH`` of the
``mosbench train`` it starts (and of any process that one starts) and sets:

- ``MOSBENCH_MASK_SOURCE``: ``numpy`` (every mask of the engine drawn by one
  NumPy PCG64 generator seeded with ``[MOSBENCH_MASK_SEED, 4242]``, kept where
  ``uniform >= rate``, the same rule as the engines' own and as
  ``tests/test_engines_agree.py``'s shared masks) or ``torch-rand`` (PyTorch's
  masks from ``torch.rand`` on the engine's own generator instead of
  ``bernoulli_``, which on Intel CPUs draws through MKL's MCG31) or
  ``tf-stateless`` (TensorFlow's masks from ``tf.random.stateless_uniform``,
  the engine's own op, drawn in the graph, but keyed by seeds ``[B, n]`` that
  the host counts, ``B`` drawn by NumPy from ``[MOSBENCH_MASK_SEED, 4242]``,
  ``n`` the call's number: the engine's own kind of draw from streams
  unrelated to the engine's generators) or ``tf-site-seeds`` (TensorFlow: the
  engine's own draw and keying, ``[S_i, t]`` with ``t`` from the site's
  Keras ``SeedGenerator``, but each site's ``S_i`` drawn by NumPy from
  ``[MOSBENCH_MASK_SEED, 4242]`` in Keras's range in place of the one Keras
  drew) or ``tf-crossed-seeds`` (TensorFlow: the same, each site's ``S_i``
  the one Keras drew for that site in the run of the next seed, so a run's
  masks are exactly the native masks of run ``seed + 1``, its initial weights
  and windows its own) or ``tf-engine`` (TensorFlow: the engine's own
  generators and draws passed through the seams, the control that must give
  the native run back digit for digit);
- ``MOSBENCH_MASK_FRAMEWORK``: the engine whose seam is replaced, the same
  seams the step-level equality tests replace (PyTorch's
  ``masks.dropout_mask``; Keras's locked and embedding dropout's
  ``dropout_mask`` and weight drop's ``dropped_recurrent_kernel``);
- ``MOSBENCH_MASK_SITES`` (TensorFlow only; default all): a comma-separated
  subset of ``weight-drop``, ``locked``, ``embedding``, the seams given the
  source; the others keep the engine's own draws, so each site's part in a
  difference can be told apart.

Nothing else changes, so a run differs from the engine's own only in where its
masks come from. Without ``MOSBENCH_MASK_SOURCE`` this file does nothing.
"""

import os
import sys

SOURCE = os.environ.get("MOSBENCH_MASK_SOURCE")
FRAMEWORK = os.environ.get("MOSBENCH_MASK_FRAMEWORK")
AVAILABLE = {"numpy": ("pytorch", "tensorflow"), "torch-rand": ("pytorch",),  # source: engines
             "tf-stateless": ("tensorflow",), "tf-site-seeds": ("tensorflow",),
             "tf-crossed-seeds": ("tensorflow",), "tf-engine": ("tensorflow",)}
# Keras's mask seams, each replaceable alone (PyTorch's sites share one seam)
SITES = {"tensorflow": ("weight-drop", "locked", "embedding")}


def numpy_masks(seed):
    """A function ``(shape, rate) -> float32 mask of 0 and 1/(1-rate)``, drawn in call order."""
    import numpy as np

    rng = np.random.default_rng([int(seed), 4242])

    def draw(shape, rate):
        shape = tuple(int(s) for s in shape)
        keep = rng.random(shape, dtype=np.float32) >= rate
        return (keep / np.float32(1.0 - rate)).astype(np.float32)

    return draw


def install_pytorch(source, seed):
    import torch

    from mosbench.engines.pytorch.models import masks

    if source == "numpy":
        draw = numpy_masks(seed)

        def dropout_mask(like, shape, rate):
            return torch.from_numpy(draw(shape, rate)).to(like)
    else:
        def dropout_mask(like, shape, rate):
            generator = masks._generators["shared" if masks._sharing else "replica"]
            uniform = torch.rand(shape, dtype=like.dtype, device=like.device,
                                 generator=generator)
            return (uniform >= rate).to(like.dtype).div_(1.0 - rate)

    masks.dropout_mask = dropout_mask


def tf_stateless_masks(seed):
    """Like :func:`numpy_masks` (``shape`` may be symbolic), drawn in the graph by
    ``tf.random.stateless_uniform`` from seeds ``[B, n]`` the host hands out in call order."""
    import itertools

    import numpy as np
    import tensorflow as tf

    base = int(np.random.default_rng([int(seed), 4242]).integers(1, 2**31 - 1))
    calls = itertools.count()

    def next_seed():
        return np.array([base, next(calls)], np.int64)

    def draw(shape, rate, seed_generator=None):
        pair = tf.numpy_function(next_seed, [], tf.int64, stateful=True)
        pair.set_shape([2])
        keep = tf.random.stateless_uniform(shape, seed=pair) >= rate
        return tf.cast(keep, tf.float32) / (1.0 - rate)

    return draw


def keras_seed_of_next_run(seed, draws=10_000):
    """For a seed Keras drew in the run of ``seed`` (``make_default_seed``: Python's
    ``randint(1, 1e9)`` after ``keras.utils.set_random_seed(seed)``), the one Keras drew at
    the same place in the run of ``seed + 1``."""
    import random

    own, following = random.Random(int(seed)), random.Random(int(seed) + 1)
    places = {}
    for _ in range(draws):
        places.setdefault(own.randint(1, 10**9), following.randint(1, 10**9))

    def of(site_seed):
        if site_seed not in places:
            raise SystemExit(f"tf-crossed-seeds: site seed {site_seed} is not among the first "
                             f"{draws} seeds Keras draws for seed {seed}: the engine no "
                             "longer seeds its generators through keras.utils.set_random_seed")
        return places[site_seed]

    return of


def tf_site_masks(seed, site_seeds="numpy"):
    """Masks as the engine draws them, ``stateless_uniform`` keyed ``[S_i, t]`` by the site's
    ``SeedGenerator`` (which still advances ``t``), with ``S_i``, by ``site_seeds``: one NumPy
    draws from ``[seed, 4242]`` in Keras's range, a site at a time in the order they are
    first traced (``numpy``); the one Keras drew for the site in the run of ``seed + 1``
    (``next-run``); the generator's own, the engine's draw exactly (``own``; one device: the
    engine adds nothing for the replica there)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng([int(seed), 4242])
    next_run = keras_seed_of_next_run(seed) if site_seeds == "next-run" else None
    site_seeds_of = {}  # id(generator) -> (generator, its S_i): traced again, the same S_i

    def site_seed(generator):
        if site_seeds == "numpy":
            return int(rng.integers(1, 10**9, endpoint=True))
        with tf.init_scope():  # S_i never changes: read it once, outside any trace
            return next_run(int(generator.state.numpy()[0]))

    def draw(shape, rate, seed_generator):
        key = tf.cast(seed_generator.next(), tf.int64)
        if site_seeds != "own":
            if id(seed_generator) not in site_seeds_of:
                site_seeds_of[id(seed_generator)] = (seed_generator, site_seed(seed_generator))
            key = tf.stack([tf.constant(site_seeds_of[id(seed_generator)][1], tf.int64),
                            key[1]])
        keep = tf.random.stateless_uniform(shape, seed=key) >= rate
        return tf.cast(keep, tf.float32) / (1.0 - rate)

    draw.site_seeds = site_seeds_of
    return draw


def install_tensorflow(seed, sites=SITES["tensorflow"], source="numpy"):
    import tensorflow as tf

    from mosbench.engines.tensorflow.models import embedding_dropout, locked_dropout
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM

    if source == "numpy":
        draw = numpy_masks(seed)

        def mask_of(shape, rate, seed_generator=None):
            # the draw runs on the host, in step order
            mask = tf.numpy_function(lambda s: draw(s, rate), [shape], tf.float32,
                                     stateful=True)
            return tf.reshape(mask, shape)
    elif source == "tf-stateless":
        mask_of = tf_stateless_masks(seed)
    else:
        mask_of = tf_site_masks(seed, {"tf-site-seeds": "numpy", "tf-crossed-seeds": "next-run",
                                       "tf-engine": "own"}[source])

    def dropout_mask(shape, rate, seed_generator=None, dtype="float32"):
        # shapes may be symbolic inside tf.function
        shape = tf.stack([tf.cast(s, tf.int64) for s in shape])
        return tf.cast(mask_of(shape, rate, seed_generator), dtype)

    own_kernel = WeightDropLSTM.dropped_recurrent_kernel

    def dropped_recurrent_kernel(self, training):
        if training and self.weight_dropout > 0:
            kernel = self.recurrent_kernel
            return kernel * dropout_mask(tuple(kernel.shape), self.weight_dropout,
                                         self.seed_generator)
        return own_kernel(self, training)

    if "embedding" in sites:
        embedding_dropout.dropout_mask = dropout_mask
    if "locked" in sites:
        locked_dropout.dropout_mask = dropout_mask
    if "weight-drop" in sites:
        WeightDropLSTM.dropped_recurrent_kernel = dropped_recurrent_kernel
    return mask_of


def install(source, framework, seed, sites=None):
    """``sites``: the seams given ``source`` (None: all of the engine's). Returns TensorFlow's
    mask draw (its ``site_seeds``: each generator's ``S_i`` once traced), else None."""
    if framework not in AVAILABLE.get(source, ()):
        raise SystemExit(f"MOSBENCH_MASK_SOURCE={source!r} is not available for "
                         f"MOSBENCH_MASK_FRAMEWORK={framework!r}: " + "; ".join(
                             f"{s} for {', '.join(f)}" for s, f in AVAILABLE.items()))
    if sites is not None:
        allowed = SITES.get(framework, ())
        wrong = [s for s in sites if s not in allowed]
        if wrong or not sites:
            raise SystemExit(f"MOSBENCH_MASK_SITES={','.join(sites)!r}: allowed for "
                             f"{framework}: {', '.join(allowed) or 'none (one seam for all)'}")
    drawn = None
    if framework == "pytorch":
        install_pytorch(source, seed)
    else:
        drawn = install_tensorflow(seed, SITES[framework] if sites is None else tuple(sites),
                                   source)
    where = "" if sites is None else f" at {', '.join(sites)}"
    print(f"mask_sources: {framework}'s dropout masks from {source}{where}", file=sys.stderr)
    return drawn


if SOURCE:
    _sites = os.environ.get("MOSBENCH_MASK_SITES")
    install(SOURCE, FRAMEWORK, os.environ.get("MOSBENCH_MASK_SEED", "0"),
            None if _sites is None else _sites.split(","))
