"""The softmax output layer tied to the input embedding."""

import torch
import torch.nn.functional as F
from torch import nn

from mosbench.engines.pytorch.models.softmax_nll import linear_softmax_nll


def decoder_logits(hidden, weight, bias) -> torch.Tensor:
    """``h W^T + b`` in float32: the product in the compute dtype, the bias added in float32.

    As the Keras engine under a mixed policy (under autocast the matmul runs in
    bfloat16 or float16, the logits and the loss in float32); in plain float32
    it is ``F.linear(h, W, b)``. The bias is added in place: the product's
    backward needs only its inputs.
    """
    return F.linear(hidden, weight).float().add_(bias)


def decoder_nll(hidden, weight, bias, targets) -> torch.Tensor:
    """Per-token NLL of ``targets`` under ``softmax(h W^T + b)``, without log-probabilities.

    ``hidden`` ``(..., d)``, ``weight`` ``(vocab, d)``, ``bias`` ``(vocab,)``,
    ``targets`` int ``(...)``; returns float32 ``(...)``. The matmul and the
    loss are one memory-frugal op (:func:`~.softmax_nll.linear_softmax_nll`);
    no (tokens, vocab) log-probabilities are formed.
    """
    nll = linear_softmax_nll(hidden.reshape(-1, hidden.size(-1)), weight, bias,
                             targets.reshape(-1).long())
    return nll.view(targets.shape)


class TiedSoftmax(nn.Module):
    """``log_softmax(h E^T + b)``: the decoder weight is the embedding E itself.

    Only the decoder bias (zeros at init) belongs here; the embedding is
    passed in, so its gradient sums the lookup's and the decoder's.
    Log-probabilities are float32 whatever the input dtype.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden, embedding):
        """``(..., emsize)``, ``(vocab, emsize)`` -> ``(..., vocab)`` log-probabilities."""
        return F.log_softmax(decoder_logits(hidden, embedding, self.decoder_bias), dim=-1)

    def nll(self, hidden, embedding, targets):
        """Per-token NLL of ``targets`` ``(...)``: :func:`decoder_nll`."""
        return decoder_nll(hidden, embedding, self.decoder_bias, targets)
