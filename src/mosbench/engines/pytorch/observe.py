"""PyTorch's embedding-dropout draw, for observing it (:mod:`mosbench.engines.mask_draws`)."""

import numpy as np
import torch

from mosbench.engines.pytorch.models import masks
from mosbench.engines.pytorch.models.embedding_dropout import embedding_dropout


def embedding_rows(engine, tokens, rate):
    """From the engine's own generators (``replica.generators``), as its steps draw."""
    m = engine.model
    ones = torch.ones_like(m.embedding.weight)
    rate = m.dropoute if rate is None else rate
    with masks.drawn_from(**engine.replica.generators), torch.no_grad():
        rows = embedding_dropout(ones, torch.from_numpy(tokens.T.astype(np.int64)), rate, True)
    return rows.numpy().transpose(1, 0, 2)  # time-major, as the model's lookup
