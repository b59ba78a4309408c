"""The one place where every PyTorch dropout mask is drawn.

Each dropout site (embedding rows, locked dropout, weight drop, ordinary
dropout) asks :func:`dropout_mask` for its mask and multiplies by it. Keeping
the draw in one function mirrors ``mosbench.engines.tensorflow.models.replica_dropout`` on the
Keras side and gives tests one seam to replace, so both frameworks can be run
on identical masks.
"""

import torch


def dropout_mask(like: torch.Tensor, shape, rate: float) -> torch.Tensor:
    """A ``shape`` mask of 0 and 1/(1-rate), with ``like``'s dtype and device.

    Entries are kept with probability 1-rate (Keras: ``uniform >= rate``);
    broadcasting the mask against the input decides what the draws are shared
    over (time for locked dropout, the embedding dimension for word dropout).
    """
    keep = 1.0 - rate
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)
