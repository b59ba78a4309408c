"""Embedding dropout: drop whole word types, not single coordinates."""

import torch
import torch.nn.functional as F

from mosbench.engines.pytorch.models import masks


def embedding_dropout(weight: torch.Tensor, tokens: torch.Tensor, rate: float,
                      training: bool) -> torch.Tensor:
    """Look up ``tokens`` in ``weight`` ``(vocab, emsize)`` with whole rows dropped.

    One draw per word type (a ``(vocab, 1)`` mask): every occurrence of a
    dropped word is zero, the others are scaled by 1/(1-rate). The mask is
    looked up with the tokens and applied to the looked-up rows, which equals
    looking up in the masked matrix but touches (tokens, emsize) values, not
    (vocab, emsize). No ``padding_idx``: every row learns through the lookup.
    """
    rows = F.embedding(tokens, weight)
    if not training or rate == 0:
        return rows
    keep = masks.dropout_mask(weight, (weight.size(0), 1), rate)
    # In place is safe: the lookup's backward needs only the indices.
    return rows.mul_(F.embedding(tokens, keep))
