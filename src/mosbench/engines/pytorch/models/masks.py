"""The one place where every PyTorch dropout mask is drawn.

Each dropout site (embedding rows, locked dropout, weight drop, ordinary
dropout) asks :func:`dropout_mask` for its mask and multiplies by it. Keeping
the draw in one function mirrors ``mosbench.engines.tensorflow.models.replica_dropout`` on the
Keras side and gives tests one seam to replace, so both frameworks can be run
on identical masks.

Generators: an engine's steps draw from its own (:func:`drawn_from`), so nothing
else that draws from PyTorch's global generator (a ``DataLoader``, a user's
code) moves the training's masks, and a checkpoint holds exactly what they
depend on. Under data parallelism there are two: the *shared* one, seeded
alike and kept in step on every replica, for weight drop (one DropConnect
mask per global minibatch, drawn inside :func:`shared_between_replicas`), and
a *replica* one, seeded per replica, for the masks over sequences, which must
differ between replicas as they differ between the rows of one batch. On one
device both are the same generator. Without an engine, masks come from the
global generator.
"""

import contextlib

import torch

_generators = {"replica": None, "shared": None}
_sharing = False


@contextlib.contextmanager
def drawn_from(replica, shared):
    """Within the block per-sequence masks come from ``replica``, shared ones from ``shared``."""
    previous = dict(_generators)
    _generators.update(replica=replica, shared=shared)
    try:
        yield
    finally:
        _generators.update(previous)


@contextlib.contextmanager
def shared_between_replicas():
    """Within the block masks come from the shared generator (the same on every replica)."""
    global _sharing
    previous, _sharing = _sharing, True
    try:
        yield
    finally:
        _sharing = previous


def dropout_mask(like: torch.Tensor, shape, rate: float) -> torch.Tensor:
    """A ``shape`` mask of 0 and 1/(1-rate), with ``like``'s dtype and device.

    Entries are kept with probability 1-rate (Keras: ``uniform >= rate``);
    broadcasting the mask against the input decides what the draws are shared
    over (time for locked dropout, the embedding dimension for word dropout).
    """
    keep = 1.0 - rate
    generator = _generators["shared" if _sharing else "replica"]
    return (torch.empty(shape, dtype=like.dtype, device=like.device)
            .bernoulli_(keep, generator=generator).div_(keep))
