"""The plain Keras LSTM language model: dropout semantics, initialisation, names.

Its size and its carried states are the conformance suite's, for every
engine (``test_engine_conformance.py``).
"""

import numpy as np
import pytest

from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import MosbenchError

HP = dict(emsize=12, nhid=12, nlayers=2, dropout=0.5, tie_weights=True, init_range=0.1)


def test_dropout_only_in_training():
    model = build_model("lstm", 30, HP)
    tokens = np.ones((2, 5), dtype="int32")
    state = model.initial_state(2)
    eval_a, _, _ = model(tokens, state, training=False)
    eval_b, _, _ = model(tokens, state, training=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, _, _ = model(tokens, state, training=True)
    train_b, _, _ = model(tokens, state, training=True)
    assert not np.allclose(train_a, train_b)


def test_initialisation_ranges():
    model = build_model("lstm", 30, dict(HP, nhid=16, emsize=16))
    assert np.abs(model.embedding.embeddings.numpy()).max() <= 0.1
    bound = 1 / np.sqrt(16)
    for weight in model.rnns[0].weights:
        assert np.abs(weight.numpy()).max() <= bound
    assert not model.decoder_bias.numpy().any()


def test_unknown_model_name():
    with pytest.raises(MosbenchError, match=r"unknown model 'gru'; allowed: \['lstm', 'awd-lstm'"):
        build_model("gru", 10, HP)
