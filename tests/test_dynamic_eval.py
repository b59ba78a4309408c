"""Dynamic evaluation against a float64 NumPy oracle of the reference algorithm.

The oracle is written from the algorithm's description (zihangdai/mos
``dynamiceval.py`` as its README runs it, Krause et al. 2018): statistics are
the root of the summed squared gradients, decay rates are normalised by the
sum of the tensors' mean statistics and capped at 1/lamb, and each segment is
scored before its update. Its arithmetic runs in float64 on NumPy arrays; only
the gradient of a segment comes from the model (evaluated at the oracle's
weights, one function per framework), so what is tested is each engine's
implementation of the algorithm. Each of the reference's
choices, swapped for the alternative we used to have, moves the result far
outside the tolerance: the test can tell them apart.
"""

import importlib.util

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import REPO
from mosbench.config import validate_config
from mosbench.data.batching import batchify, windows
from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.evaluation.dynamic_eval import decay_rates

HP = dict(emsize=6, nhid=10, nhidlast=8, nlayers=2, dropout=0.3, dropouth=0.3, dropouti=0.3,
          dropoute=0.1, wdrop=0.3, init_range=0.5, n_experts=3, dropoutl=0.3)
LR, EPSILON, BPTT, STAT_BATCH = 0.05, 1e-2, 5, 8
CORRECT = {"statistic": "sum", "normaliser": "sum", "cap": True}
PLANTED = {  # the three differences in the algorithm, each planted back alone
    "root mean square statistic": {"statistic": "mean"},
    "mean-over-tensors normaliser": {"normaliser": "mean"},
    "uncapped decay rate": {"cap": False},
}


def keras_gradient_at(engine, weights, inputs, targets, states):
    """The Keras model's mean NLL and gradient at ``weights`` (float64 arrays in and out)."""
    model = engine.model
    for variable, value in zip(model.trainable_variables, weights, strict=True):
        variable.assign(value.astype(np.float32))
    with tf.GradientTape() as tape:
        nll, states, _ = model.nll(tf.constant(inputs), tf.constant(targets), states)
        loss = tf.reduce_mean(nll)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g).numpy().astype(np.float64) for g in grads], states


def torch_gradient_at(engine, weights, inputs, targets, states):
    """The PyTorch model's mean NLL and gradient at ``weights`` (float64 arrays in and out)."""
    import torch

    model = engine.model.eval()
    params = list(model.parameters())
    with torch.no_grad():
        for param, value in zip(params, weights, strict=True):
            param.copy_(torch.from_numpy(value.astype(np.float32)))
    nll, states, _ = model.nll(torch.tensor(inputs, dtype=torch.long),
                               torch.tensor(targets, dtype=torch.long), states)
    loss = nll.mean()
    grads = torch.autograd.grad(loss, params)
    return (float(loss.detach()), [g.double().numpy() for g in grads],
            [(h.detach(), c.detach()) for h, c in states])


GRADIENT_AT = {"tensorflow": keras_gradient_at}
if importlib.util.find_spec("torch") is not None:
    GRADIENT_AT["pytorch"] = torch_gradient_at


def oracle(engine, train_ids, ids, lamb, statistic="sum", normaliser="sum", cap=True):
    """Per-segment losses and the adapted weights, in float64."""
    gradient_at = GRADIENT_AT[engine.framework]
    trained = engine.weights()
    w0 = [value.astype(np.float64) for value in trained.values()]
    squares, count = [np.zeros_like(w) for w in w0], 0
    states = engine.initial_state(STAT_BATCH)
    for inputs, targets in windows(batchify(train_ids, STAT_BATCH), BPTT):
        _, grads, states = gradient_at(engine, w0, inputs, targets, states)
        squares = [s + g * g for s, g in zip(squares, grads, strict=True)]
        count += 1
    ms = [np.sqrt(s / count) if statistic == "mean" else np.sqrt(s) for s in squares]
    means = [m.mean() for m in ms]
    norm = sum(means) if normaliser == "sum" else np.mean(means)
    rates = [m / norm for m in ms]
    if cap:
        rates = [np.minimum(r, 1.0 / lamb) for r in rates]
    weights, losses = [w.copy() for w in w0], []
    states = engine.initial_state(1)
    for inputs, targets in windows(batchify(ids, 1), BPTT):
        loss, grads, states = gradient_at(engine, weights, inputs, targets, states)
        losses.append(loss)  # before the update
        weights = [w + lamb * r * (a - w) - LR * g / (m + EPSILON)
                   for w, r, a, g, m in zip(weights, rates, w0, grads, ms, strict=True)]
    engine.load_weights(trained)
    return np.array(losses), weights, rates


@pytest.fixture(scope="module", params=list(GRADIENT_AT))
def setting(tiny_data, request):
    engine = load_engine(request.param)
    engine.build("awd-lstm-mos", 40, HP)
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
    segments = list(windows(batchify(ids, 1), BPTT))
    assert all(targets.size == BPTT for _, targets in segments)
    losses = engine.adaptive_losses(segments, statistics, decay_rates(statistics, lamb), lr=LR,
                                    lamb=lamb, epsilon=EPSILON)
    adapted = [value.astype(np.float64) for value in engine.weights().values()]
    engine.load_weights(trained)
    return np.array(losses), adapted


def differences(a, b):
    """Largest loss and weight differences between two (losses, weights) results."""
    loss = float(np.abs(a[0] - b[0]).max())
    weight = max(float(np.abs(x - y).max()) for x, y in zip(a[1], b[1], strict=True))
    return loss, weight


def test_dynamic_evaluation_matches_the_reference_algorithm(setting):
    engine, train_ids, ids, lamb = setting
    result = ours(engine, train_ids, ids, lamb)
    expected = oracle(engine, train_ids, ids, lamb, **CORRECT)
    loss, weight = differences(result, expected[:2])
    print(f"largest differences: loss {loss:.2e}, weight {weight:.2e}")
    assert loss < 1e-6 and weight < 1e-6, (loss, weight)
    # The weights moved well beyond the tolerance, so equality is not vacuous.
    trained = engine.weights().values()
    assert max(float(np.abs(a - w).max()) for a, w in zip(result[1], trained, strict=True)) > 1e-3


@pytest.mark.parametrize("planted", PLANTED)
def test_each_old_difference_planted_back_fails(setting, planted):
    engine, train_ids, ids, lamb = setting
    result = ours(engine, train_ids, ids, lamb)
    wrong = oracle(engine, train_ids, ids, lamb, **{**CORRECT, **PLANTED[planted]})
    loss, weight = differences(result, wrong[:2])
    print(f"{planted}: loss {loss:.2e}, weight {weight:.2e}")
    assert max(loss, weight) > 1e-4, (planted, loss, weight)


# The reference README's settings (zihangdai/mos): PTB passes --lamb 0.075 and keeps the
# defaults lr 0.002, epsilon 0.001; WikiText-2 passes --epsilon 0.002 and keeps lamb 0.02.
# Statistics at batch 100 over the whole training data, adaptation at batch 1, bptt 5.
REFERENCE_DYNAMIC_EVAL = {
    "ptb": {"lr": 0.002, "lamb": 0.075, "epsilon": 0.001},
    "wikitext2": {"lr": 0.002, "lamb": 0.02, "epsilon": 0.002},
}
REFERENCE_LOOP = {"bptt": 5, "batch_size": 1, "stat_batch_size": 100, "stat_max_batches": None}


def dynamic_eval_mismatches(config):
    """(dataset, key, ours, reference) wherever the MoS presets differ from the README."""
    found = []
    for dataset, expected in REFERENCE_DYNAMIC_EVAL.items():
        options = config["presets"][dataset]["awd-lstm-mos"]["dynamic_eval"]
        for key, value in {**expected, **REFERENCE_LOOP}.items():
            if options[key] != value:
                found.append((dataset, key, options[key], value))
    return found


def full_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_paper_grid_runs_dynamic_evaluation_with_the_readme_settings():
    assert dynamic_eval_mismatches(validate_config(full_config())) == []


def test_the_old_wikitext2_lamb_planted_back_fails():
    config = full_config()
    config["presets"]["wikitext2"]["awd-lstm-mos"]["dynamic_eval"]["lamb"] = 0.075
    assert dynamic_eval_mismatches(validate_config(config)) == [
        ("wikitext2", "lamb", 0.075, 0.02)]
