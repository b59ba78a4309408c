"""The plain LSTM language model: size, state carrying, dropout semantics."""

import numpy as np
import pytest

from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import MosbenchError

HP = dict(emsize=12, nhid=12, nlayers=2, dropout=0.5, tie_weights=True, init_range=0.1)


def test_parameter_count_of_a_tied_model():
    model = build_model("lstm", 50, HP)
    lstm = 4 * 12 * (12 + 12) + 4 * 12  # kernel, recurrent kernel, one bias
    assert model.count_params() == 50 * 12 + 2 * lstm + 50  # embedding, layers, decoder bias
    untied = build_model("lstm", 50, dict(HP, tie_weights=False))
    assert untied.count_params() == model.count_params() + 12 * 50


def test_carried_state_equals_one_long_window():
    model = build_model("lstm", 30, HP)
    tokens = np.random.default_rng(0).integers(0, 30, size=(3, 10)).astype("int32")
    whole, _, _ = model(tokens, model.initial_state(3), training=False)
    first, states, _ = model(tokens[:, :6], model.initial_state(3), training=False)
    second, _, _ = model(tokens[:, 6:], states, training=False)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)


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
