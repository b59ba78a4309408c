"""AR and TAR (Merity et al. 2017) on the last LSTM layer, as the Keras engine.

AR penalises the *dropped* output, TAR the *raw* one; both average over every
element of a ``(batch, time, hidden)`` tensor, in float32 (the loss' dtype under
autocast).
"""

import torch


def activation_penalty(dropped_output: torch.Tensor, alpha: float) -> torch.Tensor:
    """AR: ``alpha * mean(h**2)``."""
    return alpha * dropped_output.float().square().mean()


def temporal_activation_penalty(raw_output: torch.Tensor, beta: float) -> torch.Tensor:
    """TAR: ``beta * mean((h_t - h_{t-1})**2)`` along the time axis (axis 1)."""
    raw = raw_output.float()
    return beta * (raw[:, 1:] - raw[:, :-1]).square().mean()
