"""Every engine against the workload's spec, against the first framework and against oracles.

One suite, parametrised over :data:`mosbench.engines.FRAMEWORKS`, that a new
engine passes before it is compared with the others; it speaks only the
:class:`~mosbench.engines.interface.Engine` interface and the canonical
weights of :func:`mosbench.workload.weight_shapes`:

* The weights: every shipped preset builds the spec's names, shapes and
  parameter count (the reference's counts as oracles); canonical weights
  round-trip bit for bit, through a ``.npz`` file and through the first
  framework; a mismatch is a MosbenchError naming it.
* The same canonical weights give the same numbers as the first framework
  (``REFERENCE``): per-token NLL and carried states (1e-5 absolute) and every
  gradient of the mean NLL (1e-4 relative to the largest entry of its
  tensor), from carried non-zero states; 20 training steps through
  ``train_step`` (variable window lengths, ``small_batch_size`` chunks,
  AR/TAR, weight decay, an active clip, then NT-ASGD's average): losses 1e-4
  relative at every step, weights and averaged weights 1e-4. A weight loaded
  with a wrong convention (a kernel reshaped instead of transposed, gates
  swapped, a bias dropped) moves the NLL far beyond the tolerance.
* Evaluation: the summed NLL, the log-probability rows and the next-word
  prediction agree, and carried states make two windows one.
* A resume from ``checkpoint_arrays`` is bit-identical, dropout on.
* Dynamic evaluation equals a float64 NumPy oracle of the reference's
  algorithm (zihangdai/mos ``dynamiceval.py``, Krause et al. 2018), and each
  of its three old differences planted back fails.

Gradients cross the interface as one dynamic-evaluation update: with
statistics 1, no decay and a learning rate ``STEP`` it is ``w - STEP * g``,
so ``g = (w - w') / STEP`` (to about 1e-7 relative in float32). Dropout
masks cannot be shared between frameworks through the interface: the
training-mode equality with equal masks stays in ``test_engines_agree.py``
(the frameworks' own mask hooks), and each engine's masks are checked against
the reference's rules in ``test_random_streams.py``.
``pytest -s`` prints the largest differences seen.
"""

import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from toy_stream import AWD, DROPOUTS, LR, LSTM, VOCAB, train, training_windows

from mosbench.config import load_config, preset
from mosbench.data.batching import batchify, windows
from mosbench.data.tokenise import load_split
from mosbench.engines import FRAMEWORKS, engine_class, load_engine
from mosbench.engines.interface import AdaptiveCarry
from mosbench.errors import MosbenchError
from mosbench.evaluation.dynamic_eval import decay_rates
from mosbench.workload import parameter_count, weight_shapes

REPO = Path(__file__).resolve().parents[1]
REFERENCE, OTHERS = FRAMEWORKS[0], FRAMEWORKS[1:]
TRAINED = {"lstm": LSTM, "awd-lstm": {**AWD, "nhidlast": 8}, "awd-lstm-moc": AWD,
           "awd-lstm-mos": AWD}
# Trained 20 steps: the plain model and both mixture heads. The tied softmax is the
# mixtures' body with a simpler head; with dropout off a training step computes what the
# gradient comparison checks, plus AR/TAR, clipping and decay, which the AWD body shares.
STEPPED = ("lstm", "awd-lstm-moc", "awd-lstm-mos")
# Small models, each differing from the base where its model needs (three layers: the
# middle one has other input and output sizes than the outer ones).
BASE = dict(emsize=8, nhid=12, nhidlast=10, nlayers=3, init_range=0.5, n_experts=3,
            tie_weights=True, **dict.fromkeys(DROPOUTS, 0.0))
CASES = {
    "lstm": ("lstm", dict(emsize=12, nlayers=2)),
    "lstm-untied": ("lstm", dict(nlayers=2, tie_weights=False)),
    "awd-lstm": ("awd-lstm", dict(nhidlast=8)),
    "awd-lstm-moc": ("awd-lstm-moc", {}),
    "awd-lstm-mos": ("awd-lstm-mos", {}),
}
BATCH, TIME = 4, 6  # batch != time: a layout mix-up cannot fit
STEP = 2.0**20


def _available(framework):
    try:
        engine_class(framework)
    except MosbenchError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _process_flags():
    """Engines set process-wide flags (threads, precision, determinism): put them back."""
    torch, tf_config = sys.modules.get("torch"), None
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config
    saved_torch = None if torch is None else (
        torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
        torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic)
    tf_deterministic = tf_config is not None and tf_config.is_op_determinism_enabled()
    yield
    if saved_torch is not None:
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1])
        torch.set_float32_matmul_precision(saved_torch[2])
        torch.backends.cudnn.deterministic = saved_torch[3]
    if "tensorflow" in sys.modules and not tf_deterministic:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()


def _engine(framework, model, hp, batch=None, vocab=VOCAB, **placement):
    """An engine of ``framework`` with ``model`` built (and prepared for ``batch`` rows)."""
    _available(framework)
    built = load_engine(framework, **{"seed": 1, "threads": 2, **placement})
    built.build(model, vocab, hp)
    if batch is not None:
        built.prepare_training(hp, batch)
    return built


def _case(case):
    name, extra = CASES[case]
    return name, {**BASE, **extra}


def _largest(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# ------------------------------------------------------------------------- the weights


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


# The reference's parameter counts (shared/reference/mos-reference.md).
REFERENCE_COUNTS = {("ptb", "awd-lstm-mos"): 21_500_620, ("wikitext2", "awd-lstm-mos"): 34_909_528,
                    ("ptb", "awd-lstm"): 24_221_600, ("wikitext2", "awd-lstm"): 33_556_078}


def test_the_spec_counts_the_reference_s_parameters():
    counts = {(dataset, model): parameter_count(model, _vocab(config, dataset),
                                                preset(config, dataset, model))
              for config, dataset, model in _presets()}
    assert len(counts) == 13
    assert {key: counts[key] for key in REFERENCE_COUNTS} == REFERENCE_COUNTS
    # a tied baseline by hand: embedding, per layer W_ih, W_hh and one bias, decoder bias
    tied = dict(emsize=12, nhid=12, nlayers=2, tie_weights=True)
    assert parameter_count("lstm", 50, tied) == 50 * 12 + 2 * (4 * 12 * 24 + 4 * 12) + 50
    assert parameter_count("lstm", 50, {**tied, "tie_weights": False}) == \
        parameter_count("lstm", 50, tied) + 50 * 12
    with pytest.raises(MosbenchError, match=r"unknown model 'gru'; allowed: \['lstm'"):
        weight_shapes("gru", 10, tied)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_preset_builds_the_canonical_weights(framework):
    _available(framework)
    engine = load_engine(framework, seed=1, threads=2)
    for config, dataset, model in _presets():
        hp, vocab = preset(config, dataset, model), _vocab(config, dataset)
        engine.build(model, vocab, hp)
        shapes = weight_shapes(model, vocab, hp)
        weights = engine.weights()
        assert list(weights) == list(shapes), (dataset, model)
        assert {n: a.shape for n, a in weights.items()} == shapes, (dataset, model)
        assert all(a.dtype == np.float32 for a in weights.values()), (dataset, model)
        assert engine.n_params == parameter_count(model, vocab, hp), (dataset, model)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_weights_round_trip_and_a_mismatch_is_named(framework, tmp_path):
    source = _engine(framework, "awd-lstm-mos", AWD)
    target = _engine(framework, "awd-lstm-mos", AWD, seed=5)
    assert _largest(source.weights(), target.weights()) > 0
    np.savez(tmp_path / "model.weights.npz", **source.weights())
    with np.load(tmp_path / "model.weights.npz") as stored:
        target.load_weights(dict(stored))
    assert _largest(source.weights(), target.weights()) == 0
    # through the first framework and back, bit for bit
    reference = _engine(REFERENCE, "awd-lstm-mos", AWD, seed=7)
    reference.load_weights(source.weights())
    target.load_weights(_engine(framework, "awd-lstm-mos", AWD, seed=9).weights())
    target.load_weights(reference.weights())
    assert _largest(source.weights(), target.weights()) == 0

    wider = _engine(framework, "awd-lstm-mos", {**AWD, "nhid": 20})
    with pytest.raises(MosbenchError,
                       match=r"rnn\.0\.w_hh has shape \(64, 16\), expected \(80, 20\)"):
        wider.load_weights(source.weights())
    lstm = _engine(framework, "lstm", LSTM)
    with pytest.raises(MosbenchError, match=r"missing .*rnn\.0\.b_ih.*; unexpected rnn\.0\.b\b"):
        target.load_weights(lstm.weights())


# ---------------------------------------------------- same weights, same numbers


_CARRIES = weakref.WeakKeyDictionary()


def gradient_at(engine, weights, inputs, targets, state_arrays):
    """Mean NLL (no dropout) and its gradient at canonical ``weights``, and the state arrays
    after the window; float64 in and out, through one dynamic-evaluation update.

    One :class:`AdaptiveCarry` per engine keeps its update compiled: with no
    decay the update does not read the carry's trained weights.
    """
    w32 = {n: np.asarray(w, np.float32) for n, w in weights.items()}
    engine.load_weights(w32)
    carry = _CARRIES.setdefault(engine, AdaptiveCarry(trained=w32))
    carry.states = state_arrays
    ones = [np.ones(w.shape) for w in w32.values()]
    zeros = [np.zeros(w.shape) for w in w32.values()]
    (loss,) = engine.adaptive_losses([(inputs, targets)], ones, zeros, lr=STEP, lamb=0.0,
                                     epsilon=0.0, carry=carry)
    moved = engine.weights()
    grads = {n: (w32[n].astype(np.float64) - moved[n]) / STEP for n in w32}
    engine.load_weights(w32)
    return loss, grads, carry.states


def _window(engine, seed=1):
    """Tokens, targets and non-zero state arrays to carry into a window."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (BATCH, TIME)).astype(np.int32)
    y = rng.integers(0, VOCAB, (BATCH, TIME)).astype(np.int32)
    states = [rng.normal(0, 0.5, a.shape).astype(np.float32)
              for a in engine.state_arrays(engine.initial_state(BATCH))]
    return x, y, states


def _scored(engine, x, y, states):
    """Per-token NLL ``(batch, time)`` and the state arrays after the window."""
    rows, after = engine.log_prob_rows(x, engine.states_from_arrays(states))
    nll = -rows[np.arange(x.size), y.reshape(-1)].reshape(x.shape)
    return nll, engine.state_arrays(after)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("framework", OTHERS)
def test_the_same_weights_give_the_first_framework_s_nll_states_and_gradients(framework, case):
    name, hp = _case(case)
    ours, theirs = _engine(framework, name, hp), _engine(REFERENCE, name, hp)
    weights = {n: a.astype(np.float64) for n, a in theirs.weights().items()}
    x, y, states = _window(theirs)
    results = {}
    for side, engine in (("reference", theirs), ("ours", ours)):
        engine.load_weights({n: w.astype(np.float32) for n, w in weights.items()})
        nll, after = _scored(engine, x, y, states)
        total, _ = engine.eval_window(x, y, engine.states_from_arrays(states))
        assert abs(total - nll.sum()) < 1e-3 * abs(total)  # fused and plain paths agree
        loss, grads, grad_states = gradient_at(engine, weights, x, y, states)
        assert abs(loss - nll.mean()) < 1e-5
        assert max(float(np.abs(a - b).max()) for a, b in zip(after, grad_states, strict=True)) \
            < 1e-6
        results[side] = nll, after, grads
    (nll_a, after_a, grads_a), (nll_b, after_b, grads_b) = results["reference"], results["ours"]
    nll_err = float(np.abs(nll_a - nll_b).max())
    state_err = max(float(np.abs(a - b).max()) for a, b in zip(after_a, after_b, strict=True))
    grad_errs = {n: float(np.abs(grads_a[n] - grads_b[n]).max() / np.abs(grads_a[n]).max())
                 for n in grads_a}
    worst = max(grad_errs, key=grad_errs.get)
    print(f"\n{case} {framework}: NLL {nll_err:.2e}, states {state_err:.2e}, gradients "
          f"{grad_errs[worst]:.2e} ({worst})")
    assert nll_err < 1e-5 and state_err < 1e-5
    assert all(np.abs(g).max() > 0 for g in grads_a.values())  # every weight has a gradient
    assert grad_errs[worst] < 1e-4, grad_errs


def _reshaped(w):
    return w.T.reshape(w.shape)  # an (in, out) kernel reshaped instead of transposed


def _gates_swapped(w):
    h = w.shape[0] // 4  # forget and cell gates swapped
    return np.concatenate([w[:h], w[2 * h:3 * h], w[h:2 * h], w[3 * h:]])


BREAKAGES = {  # a wrong convention, one weight at a time
    "recurrent kernel reshaped": ("awd-lstm", "rnn.0.w_hh", _reshaped),
    "gates swapped": ("awd-lstm", "rnn.1.w_ih", _gates_swapped),
    "second bias dropped": ("awd-lstm-moc", "rnn.2.b_hh", np.zeros_like),
    "latent kernel reshaped": ("awd-lstm-mos", "latent.w", _reshaped),
    "untied decoder reshaped": ("lstm-untied", "decoder.w", _reshaped),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
@pytest.mark.parametrize("framework", OTHERS)
def test_a_weight_in_a_wrong_convention_is_caught(framework, breakage):
    case, weight, broken = BREAKAGES[breakage]
    name, hp = _case(case)
    ours, theirs = _engine(framework, name, hp), _engine(REFERENCE, name, hp)
    weights = theirs.weights()
    x, y, states = _window(theirs)
    expected = _scored(theirs, x, y, states)[0]
    ours.load_weights({**weights, weight: broken(weights[weight])})
    difference = float(np.abs(_scored(ours, x, y, states)[0] - expected).max())
    print(f"\n{breakage}: NLL max abs diff {difference:.2e}")
    assert difference > 1e-3


@pytest.mark.parametrize("model", STEPPED)
@pytest.mark.parametrize("framework", OTHERS)
def test_twenty_steps_and_the_average_equal_the_first_framework_s(framework, model):
    """Batch 6 in chunks of 4 and 2; clip and weight decay active (checked below)."""
    hp = TRAINED[model]
    theirs, ours = _engine(REFERENCE, model, hp, 6), _engine(framework, model, hp, 6)
    ours.load_weights(theirs.weights())
    data = training_windows(6, 20)
    held_out = training_windows(6, 1, seed=9)[0]
    initial = ours.weights()
    losses = {side: train(engine, data, average_from=10)[0]
              for side, engine in (("reference", theirs), ("ours", ours))}
    rel = np.abs(losses["ours"] - losses["reference"]) / losses["reference"]
    weight_error = _largest(theirs.weights(), ours.weights())
    evaluations = {}
    with theirs.averaged(), ours.averaged():
        averaged_error = _largest(theirs.weights(), ours.weights())
        for side, engine in (("reference", theirs), ("ours", ours)):
            evaluations[side] = engine.eval_window(*held_out, engine.initial_state(6))[0]
    eval_rel = abs(evaluations["ours"] / evaluations["reference"] - 1)
    moved = _largest(initial, ours.weights())
    print(f"\n{model} {framework}: losses {losses['reference'][0]:.4f} -> "
          f"{losses['reference'][-1]:.4f}, max rel diff {rel.max():.2e}; weights "
          f"{weight_error:.2e}, averaged {averaged_error:.2e}; averaged eval rel "
          f"{eval_rel:.2e}; the weights moved up to {moved:.2e}")
    assert rel.max() < 1e-4
    assert weight_error < 1e-4 and averaged_error < 1e-4 and eval_rel < 1e-5
    assert moved > 1e-2  # far beyond the tolerance: the agreement is not vacuous


@pytest.mark.parametrize("framework", OTHERS)
def test_steps_without_clipping_or_decay_equal_the_first_framework_s(framework):
    """clip 0 and wdecay 0 are settings of their own (the plain gradient step), not defaults."""
    hp = {**TRAINED["lstm"], "clip": 0.0, "wdecay": 0.0}
    theirs, ours = _engine(REFERENCE, "lstm", hp, 6), _engine(framework, "lstm", hp, 6)
    ours.load_weights(theirs.weights())
    data = training_windows(6, 3)
    expected, got = train(theirs, data)[0], train(ours, data)[0]
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    assert _largest(theirs.weights(), ours.weights()) < 1e-4


def test_clipping_and_decay_are_active_in_the_comparison():
    """The comparison's clip and weight decay change the result: neither is vacuous."""
    framework = FRAMEWORKS[-1]  # one that is compared
    data = training_windows(6, 5)
    reference = train(_engine(framework, "awd-lstm-mos", AWD, 6), data)[0]
    unclipped = train(_engine(framework, "awd-lstm-mos", {**AWD, "clip": 1e6}, 6), data)[0]
    undecayed = train(_engine(framework, "awd-lstm-mos", {**AWD, "wdecay": 0.0}, 6), data)[0]
    print(f"\nunclipped {np.abs(unclipped - reference).max():.2e}, "
          f"undecayed {np.abs(undecayed - reference).max():.2e}")
    assert np.abs(unclipped - reference).max() > 1e-3
    assert np.abs(undecayed - reference).max() > 1e-4


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("model", ["lstm", "awd-lstm-mos"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_evaluation_steps_agree_and_carried_states_join_windows(framework, model):
    """eval_window's summed NLL, log_prob_rows' rows (batch-major), predict_next, and two
    windows with the states carried equal to one long window."""
    built = _engine(framework, model, TRAINED[model])
    x, y = training_windows(3, 1, lengths=(10,))[0]
    total, _ = built.eval_window(x, y, built.initial_state(3))
    rows, _ = built.log_prob_rows(x, built.initial_state(3))
    assert rows.shape == (x.size, VOCAB) and rows.dtype == np.float64
    assert abs(-rows[np.arange(x.size), y.reshape(-1)].sum() - total) < 1e-3
    first, states = built.log_prob_rows(x[:, :6], built.initial_state(3))
    second, _ = built.log_prob_rows(x[:, 6:], states)
    joined = np.concatenate([first.reshape(3, 6, -1), second.reshape(3, 4, -1)], axis=1)
    assert np.abs(joined - rows.reshape(3, 10, -1)).max() < 1e-5
    states = built.initial_state(1)
    for token in x[0]:
        word, states = built.predict_next(int(token), states)
    assert word == int(rows[x.shape[1] - 1].argmax())  # row 0's last context
    assert built.allocator_peak_mb()[0] is None and built.allocator_peak_mb()[1]


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_resume_is_bit_identical(tmp_path, framework):
    hp = {**AWD, **DROPOUTS}
    data = training_windows(6, 6, lengths=(6, 4))  # two lengths: few traces where compiled

    def fresh(**placement):
        return _engine(framework, "awd-lstm-mos", hp, 6, deterministic=True, **placement)

    straight = fresh()
    straight_losses, _ = train(straight, data, average_from=2)
    expected = straight.checkpoint_arrays()
    straight.close()
    first = fresh()
    first_losses, states = train(first, data[:3], average_from=2)
    np.savez(tmp_path / "checkpoint.npz", **first.checkpoint_arrays(),
             **{f"hidden/{i}": a for i, a in enumerate(first.state_arrays(states))})
    first.close()
    resumed = fresh(seed=2)
    with np.load(tmp_path / "checkpoint.npz") as stored:
        resumed.restore_checkpoint({k: stored[k] for k in stored.files
                                    if not k.startswith("hidden/")})
        hidden = [stored[f"hidden/{i}"] for i in range(4)]
    states = resumed.states_from_arrays(hidden)
    later = []
    for x, y in data[3:]:
        loss, states = resumed.train_step(x, y, states, LR, True)
        later.append(loss)
    got = resumed.checkpoint_arrays()
    resumed.close()
    assert list(straight_losses) == first_losses.tolist() + later
    assert expected.keys() == got.keys()
    assert {f"model/{n}" for n in weight_shapes("awd-lstm-mos", VOCAB, hp)} <= got.keys()
    assert not [k for k in expected if not np.array_equal(expected[k], got[k])]
    assert int(got["average/count"]) == 4
    assert len(set(straight_losses)) == len(straight_losses)  # training moved


# ------------------------------------------------------------------ dynamic evaluation

DE_HP = dict(emsize=6, nhid=10, nhidlast=8, nlayers=2, dropout=0.3, dropouth=0.3, dropouti=0.3,
             dropoute=0.1, wdrop=0.3, init_range=0.5, n_experts=3, dropoutl=0.3)
DE_LR, EPSILON, BPTT, STAT_BATCH = 0.05, 1e-2, 5, 8
CORRECT = {"statistic": "sum", "normaliser": "sum", "cap": True}
PLANTED = {  # the three differences in the algorithm, each planted back alone
    "root mean square statistic": {"statistic": "mean"},
    "mean-over-tensors normaliser": {"normaliser": "mean"},
    "uncapped decay rate": {"cap": False},
}


def oracle(engine, train_ids, ids, lamb, statistic="sum", normaliser="sum", cap=True):
    """Per-segment losses and the adapted weights, in float64.

    Written from the algorithm's description: statistics are the root of the
    summed squared gradients, decay rates are normalised by the sum of the
    tensors' mean statistics and capped at 1/lamb, and each segment is scored
    before its update. Only a segment's gradient comes from the engine
    (:func:`gradient_at`, at the oracle's weights).
    """
    trained = engine.weights()
    w0 = {n: value.astype(np.float64) for n, value in trained.items()}
    squares, count = {n: np.zeros_like(w) for n, w in w0.items()}, 0
    states = None
    for inputs, targets in windows(batchify(train_ids, STAT_BATCH), BPTT):
        _, grads, states = gradient_at(engine, w0, inputs, targets, states)
        squares = {n: s + grads[n] ** 2 for n, s in squares.items()}
        count += 1
    ms = {n: np.sqrt(s / count) if statistic == "mean" else np.sqrt(s)
          for n, s in squares.items()}
    means = [m.mean() for m in ms.values()]
    norm = sum(means) if normaliser == "sum" else np.mean(means)
    rates = {n: m / norm for n, m in ms.items()}
    if cap:
        rates = {n: np.minimum(r, 1.0 / lamb) for n, r in rates.items()}
    weights, losses, states = dict(w0), [], None
    for inputs, targets in windows(batchify(ids, 1), BPTT):
        loss, grads, states = gradient_at(engine, weights, inputs, targets, states)
        losses.append(loss)  # before the update
        weights = {n: w + lamb * rates[n] * (w0[n] - w) - DE_LR * grads[n] / (ms[n] + EPSILON)
                   for n, w in weights.items()}
    engine.load_weights(trained)
    return np.array(losses), list(weights.values()), list(rates.values())


@pytest.fixture(scope="module", params=FRAMEWORKS)
def dynamic_setting(tiny_data, request):
    _available(request.param)
    engine = load_engine(request.param)
    engine.build("awd-lstm-mos", 40, DE_HP)
    train_ids = load_split(tiny_data, "train")[0][:1200]
    ids = load_split(tiny_data, "test")[0][:61]  # 12 segments of 5
    rates = oracle(engine, train_ids, ids, lamb=1.0)[2]
    top = max(float(r.max()) for r in rates)
    # A lamb under which the cap binds for some weights but not for all.
    lamb = 2.0 / top
    assert any((r > 1 / lamb).any() for r in rates) and any((r < 1 / lamb).any() for r in rates)
    return engine, train_ids, ids, lamb


def ours(engine, train_ids, ids, lamb):
    trained = engine.weights()
    statistics = engine.gradient_statistics(windows(batchify(train_ids, STAT_BATCH), BPTT),
                                            STAT_BATCH)
    assert [s.shape for s in statistics] == [w.shape for w in trained.values()]
    segments = list(windows(batchify(ids, 1), BPTT))
    assert all(targets.size == BPTT for _, targets in segments)
    losses = engine.adaptive_losses(segments, statistics, decay_rates(statistics, lamb),
                                    lr=DE_LR, lamb=lamb, epsilon=EPSILON)
    adapted = [value.astype(np.float64) for value in engine.weights().values()]
    engine.load_weights(trained)
    return np.array(losses), adapted


def differences(a, b):
    """Largest loss and weight differences between two (losses, weights) results."""
    loss = float(np.abs(a[0] - b[0]).max())
    weight = max(float(np.abs(x - y).max()) for x, y in zip(a[1], b[1], strict=True))
    return loss, weight


def test_dynamic_evaluation_matches_the_reference_algorithm(dynamic_setting):
    engine, train_ids, ids, lamb = dynamic_setting
    result = ours(engine, train_ids, ids, lamb)
    expected = oracle(engine, train_ids, ids, lamb, **CORRECT)
    loss, weight = differences(result, expected[:2])
    print(f"\n{engine.framework}: largest differences: loss {loss:.2e}, weight {weight:.2e}")
    assert loss < 1e-6 and weight < 1e-6, (loss, weight)
    # The weights moved well beyond the tolerance, so equality is not vacuous.
    trained = engine.weights().values()
    assert max(float(np.abs(a - w).max()) for a, w in zip(result[1], trained, strict=True)) > 1e-3


@pytest.mark.parametrize("planted", PLANTED)
def test_each_old_difference_planted_back_fails(dynamic_setting, planted):
    engine, train_ids, ids, lamb = dynamic_setting
    result = ours(engine, train_ids, ids, lamb)
    wrong = oracle(engine, train_ids, ids, lamb, **{**CORRECT, **PLANTED[planted]})
    loss, weight = differences(result, wrong[:2])
    print(f"\n{engine.framework} {planted}: loss {loss:.2e}, weight {weight:.2e}")
    assert max(loss, weight) > 1e-4, (planted, loss, weight)
