"""Every model's fused training/evaluation loss (``model.nll``) against its plain path.

The plain path is the model's ``call``: full log-probabilities, then the
target's entry gathered (``token_nll``). Two models built from the same seed
draw the same dropout masks in the same order, so even in training mode the
losses and every weight's gradient must agree.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mosbench.engines.tensorflow.models import build_model
from mosbench.workload import MODELS

AWD = dict(emsize=8, nhid=16, nhidlast=8, nlayers=2, dropout=0.4, dropouth=0.3,
           dropouti=0.4, dropoute=0.1, wdrop=0.5, init_range=0.1, n_experts=3, dropoutl=0.3)
LSTM = dict(emsize=8, nhid=8, nlayers=2, dropout=0.5, tie_weights=True, init_range=0.1)
VOCAB = 40


def token_nll(log_probs, targets):
    """The plain path's loss: each target's entry of the full log-probabilities, negated."""
    return -tf.squeeze(tf.gather(log_probs, targets[..., None], batch_dims=2), -1)


def _model(name, seed=11, xla=False):
    keras.utils.set_random_seed(seed)
    hparams = {**(LSTM if name == "lstm" else AWD), "xla_decoder": xla}
    model = build_model(name, VOCAB, hparams, use_cudnn=False)
    for v in model.trainable_variables:  # non-zero biases, so their gradients are tested
        if "bias" in v.path:
            v.assign(tf.random.uniform(v.shape, -0.5, 0.5, seed=1))
    return model


def _loss_and_grads(model, fast, tokens, targets, training):
    states = model.initial_state(tokens.shape[0])
    with tf.GradientTape() as tape:
        if fast:
            nll, _, _ = model.nll(tokens, targets, states, training=training)
        else:
            log_probs, _, _ = model(tokens, states, training=training)
            nll = token_nll(log_probs, targets)
        loss = tf.reduce_mean(nll)
    grads = tape.gradient(loss, model.trainable_variables)
    return nll.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize(("training", "xla"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_loss_equals_the_log_probabilities_path(name, training, xla):
    rng = np.random.default_rng(4)
    tokens = tf.constant(rng.integers(0, VOCAB, size=(3, 6)), tf.int32)
    targets = tf.constant(rng.integers(0, VOCAB, size=(3, 6)), tf.int32)
    plain, fast = _model(name), _model(name, xla=xla)
    expected, expected_grads = _loss_and_grads(plain, False, tokens, targets, training)
    got, grads = _loss_and_grads(fast, True, tokens, targets, training)
    assert got.shape == (3, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for variable, a, b in zip(fast.trainable_variables, grads, expected_grads, strict=True):
        assert np.abs(b).max() > 0, variable.path  # every weight is on the gradient path
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=variable.path)
