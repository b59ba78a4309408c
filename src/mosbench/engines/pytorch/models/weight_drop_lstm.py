"""An LSTM layer with DropConnect on its hidden-to-hidden matrix (weight drop)."""

import torch
from torch import nn

from mosbench.engines.pytorch.models import masks
from mosbench.engines.pytorch.models.fused_lstm import LSTMLayer


class WeightDropLSTM(LSTMLayer):
    """One LSTM layer whose W_hh is dropped once per call (Merity et al. 2018).

    Semantics, as the Keras engine's ``WeightDropLSTM``:
        - Training: ``W_hh' = W_hh * mask``, a (4H, H) mask of 0 and
          1/(1-p) drawn once per forward call and shared by every time step
          and every sequence (under data parallelism, by every replica:
          ``masks.shared_between_replicas``); then the fused kernel runs with ``W_hh'``, so
          the recurrence stays one cuDNN (or oneDNN) call. ``weight_hh_raw``
          is the trained parameter; only kept entries get gradient.
        - Evaluation or p = 0: the raw matrix, no draw.
        - Two biases, ``bias_ih`` and ``bias_hh``, as ``nn.LSTM``.

    Parameters: ``weight_ih`` (4H, input), ``weight_hh_raw`` (4H, H),
    ``bias_ih``, ``bias_hh`` (4H,); gates i, f, g, o.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0):
        super().__init__(input_size, hidden_size)
        self.weight_dropout = weight_dropout
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh_raw = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates))
        self.bias_hh = nn.Parameter(torch.empty(gates))
        self.reset_parameters()

    def recurrent_weight(self) -> torch.Tensor:
        """The W_hh this call uses: masked in training, raw otherwise."""
        raw = self.weight_hh_raw
        if not self.training or self.weight_dropout == 0:
            return raw
        with masks.shared_between_replicas():  # one mask for the global minibatch
            mask = masks.dropout_mask(raw, raw.shape, self.weight_dropout)
        return raw * mask

    def weights(self):
        return self.weight_ih, self.recurrent_weight(), self.bias_ih, self.bias_hh

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_dropout={self.weight_dropout}"
