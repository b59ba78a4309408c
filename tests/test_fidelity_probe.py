"""benchmarks/fidelity_probe.py's two probes, run on a tiny MoS and a synthetic stream.

``trace``: every framework from the first one's weights, dropout off, agrees
window by window where rounding has not yet grown (a tiny model at a small
learning rate is not chaotic over a few windows). ``masks``: the lr-0 losses
do not move the weights, repeat for a seed, and tell a planted difference in a
dropout rate apart by many standard errors.
"""

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO
from mosbench.engines import FRAMEWORKS

sys.path.insert(0, str(REPO / "benchmarks"))
SPEC = importlib.util.spec_from_file_location("fidelity_probe",
                                              REPO / "benchmarks" / "fidelity_probe.py")
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)

VOCAB = 40
HP = dict(emsize=8, nhid=12, nhidlast=10, nlayers=3, n_experts=3, init_range=0.1, alpha=2.0,
          beta=1.0, wdecay=1.2e-6, clip=0.25, lr=2.0, batch_size=4, small_batch_size=4,
          bptt=8, variable_bptt=True, max_seq_len_delta=4, dropout=0.4, dropouth=0.25,
          dropouti=0.4, dropoute=0.1, wdrop=0.5, dropoutl=0.3)


def available():
    found = []
    for name in FRAMEWORKS:
        module = {"tensorflow": "tensorflow", "pytorch": "torch"}.get(name, name)
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


@pytest.fixture(scope="module")
def streams():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (HP["batch_size"], 6000 // HP["batch_size"])).astype(np.int32)


def test_trace_agrees_window_by_window_from_one_set_of_weights(streams):
    frameworks = available()
    assert len(frameworks) >= 2, "needs two engines"
    losses = probe.trace(frameworks, HP, streams, VOCAB, seed=3, steps=4, threads=1)
    base = losses[frameworks[0]]
    assert base.shape == (4,) and np.isfinite(base).all()
    for name in frameworks[1:]:
        assert probe.first_parting(base, losses[name], 1e-4) is None, (name, losses)
    table = "\n".join(probe.trace_tables(losses, block=2))
    assert "| 1-2 |" in table and "| 3-4 |" in table and "never" in table


def test_first_parting_names_the_first_window_past_the_threshold():
    a = np.array([1.0, 1.0, 1.0, 1.0])
    assert probe.first_parting(a, a + [0, 1e-7, 1e-3, 1.0], 1e-6) == 3
    assert probe.first_parting(a, a + [0, 1e-7, 1e-3, 1.0], 0.1) == 4
    assert probe.first_parting(a, a, 0.0) is None


def test_masks_probe_repeats_and_tells_a_planted_rate_apart(streams):
    framework = "pytorch" if "pytorch" in available() else available()[0]
    engine = probe.engine_for(framework, HP, VOCAB, seed=5, threads=1)
    # Initial weights, scaled up: an untrained tiny model's loss hardly depends on its masks.
    weights = {name: 4 * values for name, values in engine.weights().items()}
    engine.close()
    # probe.WINDOW_START is past this stream's end: the probe's window, from position 0
    local = streams
    start, probe.WINDOW_START = probe.WINDOW_START, 0
    try:
        first, again = (probe.mask_losses(framework, HP, local, VOCAB, weights, 5, 40,
                                          probe.STREAMS, 1) for _ in range(2))
        planted = probe.mask_losses(framework, {**HP, "dropoutl": 0.9}, local, VOCAB, weights,
                                    5, 40, probe.STREAMS, 1)
    finally:
        probe.WINDOW_START = start
    np.testing.assert_array_equal(first, again)  # the seed repeats every draw
    assert len(set(first.tolist())) == first.size  # every step drew fresh masks
    table = probe.mask_table({"all": {"ours": first, "planted": planted}}, ["ours", "planted"])
    z = float(table[-1].rsplit("(", 1)[1].rstrip(") |"))
    assert abs(z) > 5, table
