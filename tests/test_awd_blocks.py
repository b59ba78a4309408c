"""The AWD-LSTM / MoS building blocks against their definitions, one section per block."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mosbench.config import load_config, preset
from mosbench.engines.tensorflow.models import build_model
from mosbench.engines.tensorflow.models.activation_regularisation import (
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.engines.tensorflow.models.embedding_dropout import embedding_dropout
from mosbench.engines.tensorflow.models.locked_dropout import LockedDropout
from mosbench.engines.tensorflow.models.mixture_of_contexts import MixtureOfContexts
from mosbench.engines.tensorflow.models.mixture_of_softmaxes import (
    MixtureOfSoftmaxes,
    mixture_log_probs,
)
from mosbench.engines.tensorflow.models.tied_softmax import TiedSoftmax
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
from mosbench.evaluation.rank import numerical_rank

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


@pytest.fixture(autouse=True)
def _seeded():
    """Initialisers and unseeded SeedGenerators draw from the global seed."""
    keras.utils.set_random_seed(0)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("dataset", "vocab", "model", "expected"), [
    ("ptb", 10000, "awd-lstm", 24_221_600),
    ("wikitext2", 33278, "awd-lstm", 33_556_078),
    ("ptb", 10000, "awd-lstm-mos", 21_500_620),
    ("wikitext2", 33278, "awd-lstm-mos", 34_909_528),
    # MoC is the paper's ablation: MoS's parameters, mixture before the softmax.
    ("ptb", 10000, "awd-lstm-moc", 21_500_620),
    ("wikitext2", 33278, "awd-lstm-moc", 34_909_528),
])
def test_shipped_presets_have_the_reference_parameter_counts(dataset, vocab, model, expected):
    hparams = preset(load_config(CONFIG), dataset, model)
    assert build_model(model, vocab, hparams, use_cudnn=False).count_params() == expected


# ----------------------------------------------------------------- locked dropout


def test_locked_dropout_mask_is_shared_over_time_but_not_over_the_batch():
    rate, (batch, time, features) = 0.3, (64, 7, 50)
    layer = LockedDropout(rate, seed=1)
    out = np.asarray(layer(np.ones((batch, time, features), "float32"), training=True))
    mask = out[:, :1, :]
    np.testing.assert_array_equal(out, np.broadcast_to(mask, out.shape))  # same at every t
    assert len({row.tobytes() for row in mask}) == batch  # each sequence has its own mask
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)
    assert abs((~kept[:, 0]).mean() - rate) < 0.05
    again = np.asarray(layer(np.ones((batch, time, features), "float32"), training=True))
    assert not np.array_equal(again, out)  # a fresh mask per call


def test_locked_dropout_is_the_identity_outside_training():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype("float32")
    np.testing.assert_array_equal(LockedDropout(0.5, seed=0)(x, training=False), x)


# -------------------------------------------------------------------- weight drop


def _numpy_lstm(x, h, c, kernel, recurrent, bias):
    """Reference LSTM in float64, gates i, f, g, o, one fixed recurrent matrix."""
    x, h, c, kernel, recurrent, bias = (np.asarray(a, np.float64)
                                        for a in (x, h, c, kernel, recurrent, bias))
    outputs = []
    for t in range(x.shape[1]):
        i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), (h, c)


def _next_dropped_kernel(layer):
    """The dropped matrix the layer's next training call will use (seed state restored)."""
    state = layer.seed_generator.state.numpy()
    dropped = layer.dropped_recurrent_kernel(True).numpy()
    layer.seed_generator.state.assign(state)
    return dropped


@pytest.fixture
def wdrop():
    """A built weight-drop LSTM (H=16, p=0.4) and a random batch with a random initial state."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 5)).astype("float32")
    h0, c0 = (rng.normal(size=(3, 16)).astype("float32") for _ in range(2))
    layer = WeightDropLSTM(16, weight_dropout=0.4, use_cudnn=False, seed=7)
    layer(x, (h0, c0), training=False)
    return layer, x, (h0, c0)


def _weights(layer):
    return layer.kernel.numpy(), layer.recurrent_bias.numpy() + layer.input_bias.numpy()


def test_weight_drop_uses_one_dropped_matrix_for_every_step_and_sequence(wdrop):
    layer, x, (h0, c0) = wdrop
    raw, (kernel, bias) = layer.recurrent_kernel.numpy(), _weights(layer)
    dropped = _next_dropped_kernel(layer)
    # DropConnect: entries zeroed or scaled by 1/(1-p), about p of them zeroed.
    zero = dropped == 0
    np.testing.assert_allclose(dropped[~zero], raw[~zero] / (1 - 0.4), rtol=1e-6)
    assert abs(zero.mean() - 0.4) < 0.06
    outputs, (h, c) = layer(x, (h0, c0), training=True)
    expected, (h_ref, c_ref) = _numpy_lstm(x, h0, c0, kernel, dropped, bias)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    np.testing.assert_allclose(h, h_ref, atol=1e-5)
    np.testing.assert_allclose(c, c_ref, atol=1e-5)
    assert not np.allclose(outputs, _numpy_lstm(x, h0, c0, kernel, raw, bias)[0], atol=1e-3)


def test_weight_drop_draws_a_new_mask_per_call(wdrop):
    layer, x, state = wdrop
    first = _next_dropped_kernel(layer)
    a, _ = layer(x, state, training=True)
    second = _next_dropped_kernel(layer)
    b, _ = layer(x, state, training=True)
    assert not np.array_equal(first == 0, second == 0)
    assert not np.allclose(a, b, atol=1e-3)


def test_weight_drop_evaluation_uses_the_raw_matrix_deterministically(wdrop):
    layer, x, (h0, c0) = wdrop
    a, _ = layer(x, (h0, c0), training=False)
    b, _ = layer(x, (h0, c0), training=False)
    np.testing.assert_array_equal(a, b)
    kernel, bias = _weights(layer)
    expected, _ = _numpy_lstm(x, h0, c0, kernel, layer.recurrent_kernel.numpy(), bias)
    np.testing.assert_allclose(a, expected, atol=1e-5)


def test_gradient_reaches_only_the_kept_recurrent_entries(wdrop):
    layer, x, state = wdrop
    kept = _next_dropped_kernel(layer) != 0
    weights = tf.constant(np.random.default_rng(2).normal(size=(3, 6, 16)), tf.float32)
    with tf.GradientTape() as tape:
        outputs, _ = layer(x, state, training=True)
        loss = tf.reduce_sum(outputs * weights)
    grad = tape.gradient(loss, layer.recurrent_kernel).numpy()
    assert 0 < kept.mean() < 1
    assert np.all(grad[~kept] == 0)
    assert np.all(grad[kept] != 0)


def test_use_cudnn_true_refuses_to_fall_back_without_a_gpu():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible; this checks the CPU-only refusal")
    layer = WeightDropLSTM(4, 0.5, use_cudnn=True, seed=0)
    x, h = np.ones((2, 3, 5), "float32"), np.zeros((2, 4), "float32")
    with pytest.raises(RuntimeError, match="use_cudnn=True but the cuDNN LSTM kernel"):
        layer(x, (h, h), training=False)


# -------------------------------------------------------------- embedding dropout


def test_embedding_dropout_drops_whole_word_types():
    rate, rng = 0.5, np.random.default_rng(3)
    embeddings = rng.normal(size=(20, 6)).astype("float32")
    tokens = rng.integers(0, 20, size=(8, 30)).astype("int32")  # ~12 occurrences per type
    out = np.asarray(embedding_dropout(embeddings, tokens, rate,
                                       keras.random.SeedGenerator(5), training=True))
    dropped = set()
    for word in np.unique(tokens):
        rows = out[tokens == word]
        if not rows.any():
            dropped.add(int(word))
        else:  # never a partly dropped type: every occurrence kept and rescaled
            np.testing.assert_allclose(rows, np.broadcast_to(embeddings[word] / (1 - rate),
                                                             rows.shape), rtol=1e-6)
    assert 0 < len(dropped) < len(np.unique(tokens))
    plain = embedding_dropout(embeddings, tokens, rate, keras.random.SeedGenerator(5),
                              training=False)
    np.testing.assert_array_equal(plain, embeddings[tokens])


# ------------------------------------------------------------------------- AR/TAR


def test_ar_and_tar_equal_hand_computed_values():
    rng = np.random.default_rng(4)
    dropped, raw = (rng.normal(size=(2, 5, 3)).astype("float32") for _ in range(2))
    ar = 2.0 * np.mean(dropped.astype(np.float64) ** 2)
    tar = 1.5 * np.mean((raw[:, 1:].astype(np.float64) - raw[:, :-1]) ** 2)  # along time
    np.testing.assert_allclose(float(activation_penalty(dropped, 2.0)), ar, rtol=1e-6)
    np.testing.assert_allclose(float(temporal_activation_penalty(raw, 1.5)), tar, rtol=1e-6)


# ------------------------------------------------------------------ mixture heads


def _mos_reference(h, emb, wp, wl, bl, b, k):
    prior = _softmax(h @ wp)  # (B, T, K)
    latent = np.tanh(h @ wl + bl).reshape(*h.shape[:2], k, emb.shape[1])
    probs = np.einsum("btk,btkv->btv", prior, _softmax(latent @ emb.T + b))
    return np.log(probs)


def _moc_reference(h, emb, wp, wl, bl, b, k):
    prior = _softmax(h @ wp)
    latent = np.tanh(h @ wl + bl).reshape(*h.shape[:2], k, emb.shape[1])
    logits = np.einsum("btk,btkv->btv", prior, latent @ emb.T + b)
    return np.log(_softmax(logits))


@pytest.mark.parametrize(("head_cls", "reference"), [
    (MixtureOfSoftmaxes, _mos_reference), (MixtureOfContexts, _moc_reference)])
def test_mixture_heads_match_float64_formulas(head_cls, reference):
    rng, vocab, k, emsize = np.random.default_rng(5), 30, 4, 5
    hidden = rng.normal(size=(2, 3, 7)).astype("float32")
    emb = (2 * rng.normal(size=(vocab, emsize))).astype("float32")
    head = head_cls(vocab, k, emsize, latent_dropout=0.3, seed=0)
    head(hidden, emb, training=False)
    head.bias.assign(rng.normal(size=vocab).astype("float32"))
    ours = head(hidden, emb, training=False)
    assert ours.dtype == tf.float32
    ctx = head.contexts
    weights = [np.float64(w.numpy()) for w in (ctx.prior.kernel, ctx.latent.kernel,
                                               ctx.latent.bias, head.bias)]
    expected = reference(np.float64(hidden), np.float64(emb), *weights, k)
    np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=1e-5)
    other = _moc_reference if reference is _mos_reference else _mos_reference
    assert not np.allclose(ours, other(np.float64(hidden), np.float64(emb), *weights, k),
                           rtol=1e-3)


def test_mixture_log_probs_survives_float16_underflow():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 3, 6)).astype(np.float16)  # (batch, K, vocab)
    logits[..., -1] = logits[..., :-1].max(axis=-1) - 30  # e^-30: below float16's range
    log_prior = np.log(_softmax(rng.normal(size=(2, 3)))).astype(np.float16)
    with np.errstate(divide="ignore", under="ignore"):  # the probability-space formula
        naive = np.log((np.exp(log_prior)[..., None] * _softmax(logits)).sum(axis=-2))
    assert naive.dtype == np.float16 and np.isneginf(naive[..., -1]).all()
    ours = mixture_log_probs(tf.constant(logits), tf.constant(log_prior))
    assert ours.dtype == tf.float32 and np.isfinite(ours).all()
    lp64, logits64 = np.float64(log_prior), np.float64(logits)
    truth = np.log((np.exp(lp64)[..., None] * _softmax(logits64)).sum(axis=-2))
    np.testing.assert_allclose(np.asarray(ours, np.float64), truth, rtol=1e-5)


# ------------------------------------------------------------------ whole model


TINY = dict(emsize=8, nhid=16, nhidlast=12, nlayers=2, dropout=0.4, dropouth=0.3,
            dropouti=0.4, dropoute=0.1, wdrop=0.5, init_range=0.1, n_experts=3, dropoutl=0.3)


def test_awd_mos_evaluation_is_deterministic_and_carries_state():
    model = build_model("awd-lstm-mos", 50, TINY, use_cudnn=False)
    tokens = np.random.default_rng(7).integers(0, 50, size=(3, 10)).astype("int32")
    start = model.initial_state(3)
    eval_a, _, _ = model(tokens, start, training=False)
    eval_b, _, _ = model(tokens, start, training=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, _, _ = model(tokens, start, training=True)
    train_b, _, _ = model(tokens, start, training=True)
    assert not np.allclose(train_a, train_b, atol=1e-4)
    first, states, _ = model(tokens[:, :5], start, training=False)
    second, _, _ = model(tokens[:, 5:], states, training=False)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), eval_a, atol=1e-5)


# ----------------------------------------------------------------- softmax bottleneck


def test_only_mos_escapes_the_softmax_bottleneck():
    rng, n, vocab, d = np.random.default_rng(8), 200, 100, 8
    hidden = rng.normal(size=(1, n, d)).astype("float32")
    emb = rng.normal(size=(vocab, d)).astype("float32")
    ranks = {}
    heads = (TiedSoftmax(vocab), MixtureOfContexts(vocab, 4, d), MixtureOfSoftmaxes(vocab, 4, d))
    for head in heads:
        head(hidden, emb, training=False)
        head.bias.assign(rng.normal(size=vocab).astype("float32"))
        log_probs = np.asarray(head(hidden, emb, training=False), np.float64).reshape(n, vocab)
        ranks[type(head).__name__] = numerical_rank(log_probs)
    assert ranks["TiedSoftmax"] <= d + 2
    assert ranks["MixtureOfContexts"] <= d + 2
    assert ranks["MixtureOfSoftmaxes"] > 5 * (d + 2)
