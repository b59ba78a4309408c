"""The PyTorch engine computes what the Keras models compute, weight for weight.

Both frameworks get the same weights (``engines.pytorch.transfer``), the same
windows and initial states and, in training mode, the same dropout masks: a
NumPy stream that the Keras model draws from at each of its dropout sites and
the PyTorch model replays, site by site in the same order, in its own layout
(time-major activations, ``(out, in)`` weights). Compared: per-token NLL, the
``forward`` log-probabilities, the new states, every gradient of mean NLL +
AR + TAR, 20 clipped SGD steps with weight decay, and parameter counts of
every shipped preset. Negative controls show that a broken weight mapping
is caught. Tolerances: NLL and log-probabilities 1e-5 absolute; gradients
1e-4 relative to the largest entry of each gradient tensor; losses over the
SGD steps 1e-4 relative. ``pytest -s`` prints the largest differences seen.
"""

import importlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mosbench.config import load_config, preset  # noqa: E402
from mosbench.engines.pytorch.models import activation_regularisation as torch_ar  # noqa: E402
from mosbench.engines.pytorch.models import assert_fused_lstm  # noqa: E402
from mosbench.engines.pytorch.models import build_model as build_torch  # noqa: E402
from mosbench.engines.pytorch.models import masks as torch_masks  # noqa: E402
from mosbench.engines.pytorch.transfer import (  # noqa: E402
    keras_to_torch,
    torch_to_keras,
    weight_pairs,
)
from mosbench.engines.tensorflow.models import build_model as build_keras  # noqa: E402
from mosbench.engines.tensorflow.models.activation_regularisation import (  # noqa: E402
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
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
RATES = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "dropoutl")


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)


def _hparams(case, **overrides):
    name, extra = CASES[case]
    return name, {**BASE, **extra, **overrides}


def _pair(case, **overrides):
    """A built Keras model and a PyTorch model holding the same weights."""
    name, hp = _hparams(case, **overrides)
    k = build_keras(name, VOCAB, hp, use_cudnn=False)
    t = build_torch(name, VOCAB, hp)
    keras_to_torch(k, t)
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
    for variable, param, transposed in weight_pairs(k, t):
        kg = k_grads[id(variable)]
        tg = t_grads[id(param)].T if transposed else t_grads[id(param)]
        errors[variable.path] = float(np.abs(kg - tg).max() / max(np.abs(kg).max(), 1e-12))
    return errors


# ------------------------------------------------------------------ parameter counts


def _presets():
    for config_file in ("config.yaml", "demo.yaml"):
        config = load_config(REPO / "config" / config_file)
        for dataset, models in config["presets"].items():
            for model in models:
                yield config, dataset, model


def _vocab(config, dataset):
    """The dataset's vocabulary size, else its source's (synthetic), else PTB's (subsets)."""
    data = config["datasets"][dataset]
    return data["vocab_size"] or config["sources"][data["source"]].get("vocab_size") or 10000


def test_every_preset_has_the_same_parameters_in_both_frameworks():
    counts = {}
    for config, dataset, model in _presets():
        hp, vocab = preset(config, dataset, model), _vocab(config, dataset)
        k = build_keras(model, vocab, hp, use_cudnn=False)
        t = build_torch(model, vocab, hp)
        weight_pairs(k, t)  # every weight has a partner of the right shape, both ways
        counts[dataset, model] = (k.count_params(), t.count_params())
        del k, t
        keras.backend.clear_session()
    mismatched = {key: c for key, c in counts.items() if c[0] != c[1]}
    assert not mismatched
    assert counts["ptb", "awd-lstm-mos"][1] == 21_500_620
    assert counts["wikitext2", "awd-lstm"][1] == 33_556_078
    assert len(counts) == 13


# ---------------------------------------------------- same weights, same numbers


@pytest.mark.parametrize("case", list(CASES))
def test_nll_states_and_gradients_agree_in_eval_mode(case):
    k, t, hp = _pair(case)
    x, y, states = _data(states_of=k)
    k_nll, k_states, k_grads = _keras_step(k, x, y, states, False, hp)
    t_nll, t_states, t_grads = _torch_step(t, x, y, states, False, hp)
    _assert_agree(case, "eval", k, t, (k_nll, k_states, k_grads), (t_nll, t_states, t_grads))
    k_lp = k(tf.constant(x, tf.int32), [tuple(map(tf.constant, s)) for s in states])[0]
    with torch.no_grad():
        t_lp = t(torch.from_numpy(x), [tuple(map(torch.from_numpy, s)) for s in states])[0]
    lp_err = np.abs(k_lp.numpy() - t_lp.numpy()).max()
    print(f"\n{case} eval: forward log-prob max abs diff {lp_err:.2e}")
    assert lp_err < 1e-5
    # forward's log-probabilities hold the same NLL as the fused path
    gathered = -np.take_along_axis(t_lp.numpy(), y[..., None], -1)[..., 0]
    assert np.abs(gathered - t_nll).max() < 1e-5


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


@pytest.mark.parametrize("case", list(CASES))
def test_weights_survive_a_round_trip(case):
    k, t, hp = _pair(case)
    name = CASES[case][0]
    keras.utils.set_random_seed(1)
    other = build_keras(name, VOCAB, hp, use_cudnn=False)
    assert not all(np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(k.trainable_weights, other.trainable_weights, strict=True))
    torch_to_keras(t, other)
    for a, b in zip(k.trainable_weights, other.trainable_weights, strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), a.path
    torch.manual_seed(1)
    back = build_torch(name, VOCAB, hp)
    keras_to_torch(other, back)
    for (na, a), (_, b) in zip(t.named_parameters(), back.named_parameters(), strict=True):
        assert torch.equal(a, b), na


# -------------------------------------------------------- training steps agree


def _windows(steps, seed=3):
    """Consecutive windows of a learnable stream: mostly t -> 7t + 3 (mod V), 20 % noise."""
    rng = np.random.default_rng(seed)
    stream = np.empty((BATCH, steps * TIME + 1), np.int64)
    stream[:, 0] = rng.integers(0, VOCAB, BATCH)
    for i in range(1, stream.shape[1]):
        noise = rng.integers(0, VOCAB, BATCH)
        stream[:, i] = np.where(rng.random(BATCH) < 0.2, noise, (7 * stream[:, i - 1] + 3) % VOCAB)
    return [(stream[:, i * TIME:(i + 1) * TIME], stream[:, i * TIME + 1:(i + 1) * TIME + 1])
            for i in range(steps)]


def _weight_diff(k, t):
    """Largest absolute difference between paired Keras and PyTorch weights."""
    return max(float(np.abs(p.detach().numpy() - (v.numpy().T if tr else v.numpy())).max())
               for v, p, tr in weight_pairs(k, t))


@pytest.mark.parametrize("case", ["lstm", "awd-lstm", "awd-lstm-moc", "awd-lstm-mos"])
def test_twenty_sgd_steps_agree(case):
    """Clipped SGD with weight decay from equal weights, dropout off, state carried over.

    Keras' SGD decays decoupled (w -= lr*wd*w, then w -= lr*g); PyTorch's SGD
    adds wd*w to the (already clipped) gradient: for plain SGD both are
    w - lr*(g + wd*w). The decay here is the demo's lr with wd = 1e-3, so each
    step shrinks the weights by 1-2 %: a side that skipped or clipped it would
    drift far beyond the tolerance (checked against a run without decay).
    """
    name = CASES[case][0]
    demo = preset(load_config(REPO / "config" / "demo.yaml"), "synthetic", name)
    zero = dict.fromkeys(RATES, 0.0)
    k, t, hp = _pair(case, **zero)
    lr, clip, wd = demo["lr"], demo["clip"], 1e-3
    windows = _windows(20)
    undecayed = build_torch(name, VOCAB, hp)
    undecayed.load_state_dict(t.state_dict())

    k_opt = keras.optimizers.SGD(learning_rate=lr, weight_decay=wd)
    variables = k.trainable_weights
    k_states = [tuple(map(tf.constant, s)) for s in _data(states_of=k)[2]]
    k_losses = []
    for x, y in windows:
        with tf.GradientTape() as tape:
            nll, k_states, (raw, dropped) = k.nll(tf.constant(x, tf.int32),
                                                  tf.constant(y, tf.int32), k_states,
                                                  training=True)
            loss = tf.reduce_mean(nll)
            if hp["alpha"]:
                loss += activation_penalty(dropped, hp["alpha"])
            if hp["beta"]:
                loss += temporal_activation_penalty(raw, hp["beta"])
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        grads, _ = tf.clip_by_global_norm(grads, clip)
        k_opt.apply(grads, variables)
        k_losses.append(float(loss))

    def torch_run(model, weight_decay):
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
        model.train()
        states = [tuple(map(torch.from_numpy, s)) for s in _data(states_of=k)[2]]
        losses = []
        for x, y in windows:
            opt.zero_grad(set_to_none=True)
            loss, _, states = _torch_loss(model, x, y, states, hp)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            states = [(h.detach(), c.detach()) for h, c in states]
            losses.append(loss.item())
        return np.array(losses)

    t_losses = torch_run(t, wd)
    rel = np.abs(t_losses - np.array(k_losses)) / np.abs(np.array(k_losses))
    weight_err = _weight_diff(k, t)
    undecayed_losses = torch_run(undecayed, 0.0)
    control = _weight_diff(k, undecayed)
    print(f"\n{case} SGD: losses {k_losses[0]:.4f} -> {k_losses[-1]:.4f}, max rel loss diff "
          f"{rel.max():.2e}, final weights max abs diff {weight_err:.2e} "
          f"(without decay: {control:.2e})")
    assert rel.max() < 1e-4
    assert weight_err < 1e-4
    assert control > 100 * weight_err and control > 1e-3
    assert np.abs(undecayed_losses - t_losses).max() > 1e-4


# ------------------------------------------------------------ negative controls


def _break_recurrent_layout(k, t):
    kernel = k.rnns[0].recurrent_kernel.numpy()  # (H, 4H): reshaped instead of transposed
    t.rnns[0].weight_hh_raw.copy_(torch.from_numpy(kernel.reshape(kernel.shape[::-1])))


def _break_gate_order(k, t):
    w = t.rnns[1].weight_ih  # forget and cell gates swapped
    h = w.shape[0] // 4
    w.copy_(torch.cat([w[:h], w[2 * h:3 * h], w[h:2 * h], w[3 * h:]]))


def _drop_second_bias(k, t):
    t.rnns[2].bias_hh.zero_()


def _transpose_latent(k, t):
    kernel = k.head.contexts.latent.kernel.numpy()  # (nhidlast, K*E), reshaped, not transposed
    t.head.contexts.latent.weight.copy_(torch.from_numpy(kernel.reshape(kernel.shape[::-1])))


@pytest.mark.parametrize(("case", "breakage"), [
    ("awd-lstm", _break_recurrent_layout), ("awd-lstm", _break_gate_order),
    ("awd-lstm-moc", _drop_second_bias), ("awd-lstm-mos", _transpose_latent)])
def test_a_broken_mapping_is_caught(case, breakage):
    k, t, hp = _pair(case)
    x, y, states = _data(states_of=k)
    k_nll = _keras_step(k, x, y, states, False, hp)[0]
    assert np.abs(k_nll - _torch_step(t, x, y, states, False, hp)[0]).max() < 1e-5
    with torch.no_grad():
        breakage(k, t)
    broken = np.abs(k_nll - _torch_step(t, x, y, states, False, hp)[0]).max()
    print(f"\n{case} {breakage.__name__}: NLL max abs diff {broken:.2e}")
    assert broken > 1e-3


def test_the_fused_lstm_check_refuses_a_cpu_model_and_passes_on_cuda():
    _, t, _ = _pair("awd-lstm-mos")
    with pytest.raises(RuntimeError, match="LSTM weights not on a CUDA device: rnns.0"):
        assert_fused_lstm(t)
    if torch.cuda.is_available():
        assert_fused_lstm(t.cuda())
