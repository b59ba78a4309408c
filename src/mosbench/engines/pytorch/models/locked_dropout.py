"""Locked (variational) dropout: one mask per sequence, shared across time."""

import torch
from torch import nn

from mosbench.engines.pytorch.models import masks


class LockedDropout(nn.Module):
    """Dropout whose mask is constant along the time axis (Gal & Ghahramani 2016).

    Inputs are time-major ``(time, batch, features)``, the layout of the
    engine's LSTMs; one ``(1, batch, features)`` mask is drawn per call, so
    each sequence has its own mask, applied at every step, kept units scaled
    by 1/(1-rate). Identity in evaluation mode or at rate 0 (no draw either,
    as the Keras layer).
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        return x * masks.dropout_mask(x, (1, x.size(1), x.size(2)), self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
