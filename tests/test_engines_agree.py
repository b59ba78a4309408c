"""With equal dropout masks, the PyTorch models compute what the Keras models compute.

The engine conformance suite (``test_engine_conformance.py``) compares every
framework with the first through the Engine interface, dropout off: the
interface cannot hand one framework's masks to another. Here both models get
the same canonical weights (each engine's ``canonical_parts``, the naming its
``weights()`` uses), the same windows and initial states and, in training
mode, the same dropout masks: a NumPy stream that the Keras model draws from
at each of its dropout sites and the PyTorch model replays, site by site in
the same order, in its own layout (time-major activations, ``(out, in)``
weights). Compared: per-token NLL, the ``forward`` log-probabilities, the new
states and every gradient of mean NLL + AR + TAR. Tolerances: NLL and
log-probabilities 1e-5 absolute; gradients 1e-4 relative to the largest entry
of each gradient tensor. ``pytest -s`` prints the largest differences seen.
"""

import importlib

import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mosbench.engines.pytorch.engine import canonical_parts as torch_parts  # noqa: E402
from mosbench.engines.pytorch.models import activation_regularisation as torch_ar  # noqa: E402
from mosbench.engines.pytorch.models import build_model as build_torch  # noqa: E402
from mosbench.engines.pytorch.models import masks as torch_masks  # noqa: E402
from mosbench.engines.tensorflow.engine import canonical_parts as keras_parts  # noqa: E402
from mosbench.engines.tensorflow.models import build_model as build_keras  # noqa: E402
from mosbench.engines.tensorflow.models.activation_regularisation import (  # noqa: E402
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM  # noqa: E402

VOCAB, BATCH, TIME = 50, 4, 6  # batch != time: a mask in the wrong layout cannot fit

# Small models with every dropout on; each differs from the base where its model needs.
BASE = dict(emsize=8, nhid=12, nhidlast=10, nlayers=3, dropout=0.3, dropouth=0.2,
            dropouti=0.25, dropoute=0.15, wdrop=0.4, dropoutl=0.35, n_experts=3,
            init_range=0.5, tie_weights=True, alpha=2.0, beta=1.0)
CASES = {
    "lstm": ("lstm", dict(emsize=12, nlayers=2, alpha=0.0, beta=0.0)),
    "lstm-untied": ("lstm", dict(nlayers=2, tie_weights=False, alpha=0.0, beta=0.0)),
    "awd-lstm": ("awd-lstm", dict(nhidlast=8)),
    "awd-lstm-moc": ("awd-lstm-moc", {}),
    "awd-lstm-mos": ("awd-lstm-mos", {}),
}


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)


def _hparams(case, **overrides):
    name, extra = CASES[case]
    return name, {**BASE, **extra, **overrides}


def _pair(case, **overrides):
    """A built Keras model and a PyTorch model holding the same canonical weights."""
    name, hp = _hparams(case, **overrides)
    k = build_keras(name, VOCAB, hp, use_cudnn=False)
    t = build_torch(name, VOCAB, hp)
    params = torch_parts(t)
    assert params.keys() == keras_parts(k).keys()
    with torch.no_grad():
        for weight, (variable, transposed) in keras_parts(k).items():
            value = variable.numpy()
            params[weight][0].copy_(torch.from_numpy(np.ascontiguousarray(
                value.T if transposed else value)))
    return k, t, hp


def _data(seed=1, batch=BATCH, time=TIME, states_of=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (batch, time))
    y = rng.integers(0, VOCAB, (batch, time))
    states = [tuple(rng.normal(0, 0.5, tuple(s.shape)).astype(np.float32) for s in layer)
              for layer in states_of.initial_state(batch)]
    return x, y, states


class SharedMasks:
    """Dropout masks from one NumPy stream: Keras draws them, PyTorch replays them.

    PyTorch asks in its own layout; a mask whose shape differs has its first
    two axes swapped ((B,1,F) -> (1,B,F), (B,T,F) -> (T,B,F), (H,4H) -> (4H,H)).
    """

    def __init__(self, seed=7):
        self.rng = np.random.default_rng(seed)
        self.drawn, self.replayed = [], 0

    def draw(self, shape, rate):
        shape = tuple(int(s) for s in shape)
        mask = ((self.rng.random(shape) >= rate) / (1.0 - rate)).astype(np.float32)
        self.drawn.append(mask)
        return mask

    def replay(self, shape):
        mask = self.drawn[self.replayed]
        self.replayed += 1
        if mask.shape != tuple(shape):
            mask = np.swapaxes(mask, 0, 1)
        assert mask.shape == tuple(shape), f"mask {self.replayed}: {mask.shape} vs {shape}"
        return np.ascontiguousarray(mask)


@pytest.fixture
def shared_masks(monkeypatch):
    """Route every dropout site of both frameworks through one :class:`SharedMasks`."""
    book = SharedMasks()

    def keras_mask(shape, rate, seed_generator, dtype="float32"):
        return tf.constant(book.draw(shape, rate), dtype=dtype)

    for module in ("mosbench.engines.tensorflow.models.locked_dropout",
                   "mosbench.engines.tensorflow.models.embedding_dropout"):
        monkeypatch.setattr(importlib.import_module(module), "dropout_mask", keras_mask)
    unmasked = WeightDropLSTM.dropped_recurrent_kernel

    def dropped_recurrent_kernel(self, training):
        if training and self.weight_dropout > 0:
            kernel = self.recurrent_kernel
            return kernel * book.draw(kernel.shape, self.weight_dropout)
        return unmasked(self, training)

    def dropout_call(self, inputs, training=False):  # the plain LSTM's keras.layers.Dropout
        if training and self.rate > 0:
            return inputs * book.draw(inputs.shape, self.rate)
        return inputs

    monkeypatch.setattr(WeightDropLSTM, "dropped_recurrent_kernel", dropped_recurrent_kernel)
    monkeypatch.setattr(keras.layers.Dropout, "call", dropout_call)
    monkeypatch.setattr(torch_masks, "dropout_mask",
                        lambda like, shape, rate: torch.from_numpy(book.replay(shape)).to(like))
    return book


def _keras_step(model, x, y, states, training, hp):
    """Per-token NLL, new states and the gradients (by variable id) of mean NLL + AR + TAR."""
    variables = model.trainable_weights
    with tf.GradientTape() as tape:
        nll, new_states, (raw, dropped) = model.nll(
            tf.constant(x, tf.int32), tf.constant(y, tf.int32),
            [(tf.constant(h), tf.constant(c)) for h, c in states], training=training)
        loss = tf.reduce_mean(nll)
        if hp["alpha"]:
            loss += activation_penalty(dropped, hp["alpha"])
        if hp["beta"]:
            loss += temporal_activation_penalty(raw, hp["beta"])
    grads = tape.gradient(loss, variables)
    return (nll.numpy(), [tuple(s.numpy() for s in layer) for layer in new_states],
            {id(v): tf.convert_to_tensor(g).numpy() for v, g in zip(variables, grads, strict=True)})


def _torch_loss(model, x, y, states, hp):
    """Mean NLL plus AR/TAR of one window (as the engines minimise), the NLL and the states."""
    nll, new_states, (raw, dropped) = model.nll(torch.from_numpy(x), torch.from_numpy(y), states)
    loss = nll.mean()
    if hp["alpha"]:
        loss = loss + torch_ar.activation_penalty(dropped, hp["alpha"])
    if hp["beta"]:
        loss = loss + torch_ar.temporal_activation_penalty(raw, hp["beta"])
    return loss, nll, new_states


def _torch_step(model, x, y, states, training, hp):
    model.train(training)
    model.zero_grad(set_to_none=True)
    loss, nll, new_states = _torch_loss(
        model, x, y, [(torch.from_numpy(h), torch.from_numpy(c)) for h, c in states], hp)
    loss.backward()
    return (nll.detach().numpy(), [tuple(s.detach().numpy() for s in layer)
                                   for layer in new_states],
            {id(p): p.grad.numpy() for p in model.parameters()})


def _grad_errors(k, t, k_grads, t_grads):
    """Largest gradient difference per weight, relative to that gradient's largest entry."""
    errors = {}
    params = torch_parts(t)
    for name, (variable, transposed) in keras_parts(k).items():
        kg = k_grads[id(variable)]
        tg = t_grads[id(params[name][0])]
        tg = tg.T if transposed else tg
        errors[name] = float(np.abs(kg - tg).max() / max(np.abs(kg).max(), 1e-12))
    return errors


# ------------------------------------------- same weights, same masks, same numbers


@pytest.mark.parametrize("case", list(CASES))
def test_nll_states_and_gradients_agree_in_training_mode_with_equal_masks(case, shared_masks):
    k, t, hp = _pair(case)
    x, y, states = _data(states_of=k)
    k_out = _keras_step(k, x, y, states, True, hp)
    masks_drawn = len(shared_masks.drawn)
    t_out = _torch_step(t, x, y, states, True, hp)
    assert shared_masks.replayed == masks_drawn  # PyTorch used every mask, no more
    name, layers = CASES[case][0], hp["nlayers"]
    # lstm: embedding output and every layer; AWD: word, input, per layer W_hh and the
    # dropout after it, plus the latent contexts of the mixtures
    expected = layers + 1 if name == "lstm" else 2 + 2 * layers + (name != "awd-lstm")
    assert masks_drawn == expected
    assert all((m == 0).any() for m in shared_masks.drawn if m.size > 20)  # masks really drop
    _assert_agree(case, "train", k, t, k_out, t_out)
    eval_nll = _torch_step(t, x, y, states, False, hp)[0]
    assert np.abs(eval_nll - t_out[0]).max() > 1e-2  # the dropouts changed the loss

    # forward() in training mode: fresh masks, drawn again by Keras, replayed by PyTorch
    k_lp = k(tf.constant(x, tf.int32), [tuple(map(tf.constant, s)) for s in states],
             training=True)[0]
    t.train()
    with torch.no_grad():
        t_lp = t(torch.from_numpy(x), [tuple(map(torch.from_numpy, s)) for s in states])[0]
    assert shared_masks.replayed == len(shared_masks.drawn) == 2 * masks_drawn
    lp_err = np.abs(k_lp.numpy() - t_lp.numpy()).max()
    print(f"{case} train: forward log-prob max abs diff {lp_err:.2e}")
    assert lp_err < 1e-5


def _assert_agree(case, mode, k, t, k_out, t_out):
    (k_nll, k_states, k_grads), (t_nll, t_states, t_grads) = k_out, t_out
    assert k_nll.shape == t_nll.shape == (BATCH, TIME)
    assert t_nll.dtype == np.float32
    nll_err = float(np.abs(k_nll - t_nll).max())
    state_err = max(float(np.abs(a - b).max())
                    for ks, ts in zip(k_states, t_states, strict=True)
                    for a, b in zip(ks, ts, strict=True))
    grad_errs = _grad_errors(k, t, k_grads, t_grads)
    worst = max(grad_errs, key=grad_errs.get)
    print(f"\n{case} {mode}: NLL max abs diff {nll_err:.2e}, states {state_err:.2e}, "
          f"gradient max rel diff {grad_errs[worst]:.2e} ({worst})")
    assert nll_err < 1e-5
    assert state_err < 1e-5
    assert grad_errs[worst] < 1e-4, grad_errs
