"""A learnable toy stream and tiny presets, shared by the engine tests.

The stream is mostly t -> 7t + 3 (mod VOCAB) with 20 % noise, so a few SGD steps
lower its loss measurably; the presets are the smallest models that keep every
part of the real ones (two layers, a narrower last layer, three experts).
"""

import numpy as np

VOCAB, LR = 40, 20.0  # LR: with clip 0.1 every step is clipped
AWD = dict(emsize=8, nhid=16, nhidlast=12, nlayers=2, init_range=0.5, n_experts=3,
           dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0, dropoutl=0.0,
           alpha=2.0, beta=1.0, wdecay=1e-3, clip=0.1, lr=LR, small_batch_size=4)
LSTM = dict(emsize=12, nhid=12, nlayers=2, dropout=0.0, tie_weights=True, init_range=0.5,
            alpha=0.0, beta=0.0, wdecay=1e-3, clip=0.1, lr=LR, small_batch_size=4)
DROPOUTS = dict(dropout=0.3, dropouth=0.3, dropouti=0.3, dropoute=0.2, wdrop=0.4, dropoutl=0.3)


def stream(batch, steps, seed=3):
    """A learnable stream: ``(batch, steps)`` int32 ids below VOCAB."""
    rng = np.random.default_rng(seed)
    ids = np.empty((batch, steps), np.int32)
    ids[:, 0] = rng.integers(0, VOCAB, batch)
    for i in range(1, steps):
        noise = rng.integers(0, VOCAB, batch)
        ids[:, i] = np.where(rng.random(batch) < 0.2, noise, (7 * ids[:, i - 1] + 3) % VOCAB)
    return ids


def training_windows(batch, count, lengths=(6, 4, 7, 5), seed=3):
    """``count`` consecutive (inputs, targets) windows of varying length (variable BPTT)."""
    sizes = [lengths[i % len(lengths)] for i in range(count)]
    ids = stream(batch, sum(sizes) + 1, seed)
    starts = np.cumsum([0, *sizes[:-1]])
    return [(ids[:, s:s + n], ids[:, s + 1:s + n + 1])
            for s, n in zip(starts, sizes, strict=True)]


def train(built, data, lr=LR, average_from=None, states=None):
    """Train on ``data``; returns the losses and the states to carry on."""
    states = states if states is not None else built.initial_state(data[0][0].shape[0])
    losses = []
    for i, (x, y) in enumerate(data):
        if i == average_from:
            built.start_average()
        loss, states = built.train_step(x, y, states, lr, average_from is not None
                                        and i >= average_from)
        losses.append(loss)
    return np.array(losses), states
