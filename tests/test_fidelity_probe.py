"""benchmarks/fidelity_probe.py's seven probes, run on a tiny MoS and synthetic streams.

``trace``: every framework from the first one's weights (or given ones), dropout
off, agrees window by window where rounding has not yet grown (a tiny model at a
small learning rate is not chaotic over a few windows). ``masks``: the lr-0 losses
do not move the weights, repeat for a seed, and tell a planted difference in a
dropout rate apart by many standard errors. ``validate``: every framework gives
one weights file the same validation loss, and two files different ones.
``embedding-masks``: every framework's word-type masks keep the rule's
statistics, and a rate other than the one drawn is told apart. ``init``: every
framework's initial tensors have the first one's spread, and a doubled
initialiser range is told apart. ``gradient``: every framework's step follows
the gradient of its own masks' loss (ratio 1), and the control, the same
step scored under another seed's masks, is told apart. ``gradient-noise``:
the mean squared gradient is at least the squared mean, and a planted rate
is told apart by many standard errors.
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


def test_trace_starts_every_framework_from_given_weights(streams):
    """``--weights``: the trace starts from trained weights (here another seed's), not the
    seed's own initial ones, in every framework alike."""
    frameworks = available()
    engine = probe.engine_for(frameworks[-1], HP, VOCAB, 5, 1)
    given = {name: value * 10.0 for name, value in engine.weights().items()}
    engine.close()
    own = probe.trace(frameworks[:1], HP, streams, VOCAB, seed=3, steps=1, threads=1)
    losses = probe.trace(frameworks, HP, streams, VOCAB, seed=3, steps=3, threads=1,
                         weights=given)
    base = losses[frameworks[0]]
    assert abs(base[0] - own[frameworks[0]][0]) > 1e-3, (base, own)
    for name in frameworks[1:]:
        assert probe.first_parting(base, losses[name], 1e-4) is None, (name, losses)


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
    first, again = (probe.mask_losses(framework, HP, streams, VOCAB, weights, 5, 40,
                                      probe.STREAMS, 1, start=0) for _ in range(2))
    planted = probe.mask_losses(framework, {**HP, "dropoutl": 0.9}, streams, VOCAB, weights,
                                5, 40, probe.STREAMS, 1, start=0)
    np.testing.assert_array_equal(first, again)  # the seed repeats every draw
    assert len(set(first.tolist())) == first.size  # every step drew fresh masks
    table = probe.mask_table({"all": {"ours": first, "planted": planted}}, ["ours", "planted"])
    z = float(table[-1].rsplit("(", 1)[1].rstrip(") |"))
    assert abs(z) > 5, table


def test_validate_gives_one_weights_file_one_loss_in_every_framework(tmp_path):
    frameworks = available()
    hp = {**HP, "eval_batch_size": 3}
    valid = np.random.default_rng(1).integers(0, VOCAB, 3 * (4 * hp["bptt"] + 1)).astype(np.int32)
    files = []
    for seed, scale in ((5, 1), (7, 4)):  # two sets of initial weights, the second scaled up
        engine = probe.engine_for(frameworks[0], hp, VOCAB, seed=seed, threads=1)
        files.append(tmp_path / f"seed{seed}.weights.npz")
        np.savez(files[-1], **{name: scale * values for name, values in engine.weights().items()})
        engine.close()
    losses = probe.validation_losses(frameworks, hp, valid, VOCAB, files, seed=0, threads=1)
    rows = [np.array([losses[str(path)][f] for f in frameworks]) for path in files]
    for path, row in zip(files, rows, strict=True):
        assert np.isfinite(row).all() and row.max() - row.min() < 1e-5, (path, losses)
    assert abs(rows[0][0] - rows[1][0]) > 1e-3, losses  # the files are told apart
    table = probe.validation_table(losses, frameworks)
    assert len(table) == 4 and all(str(path) in "\n".join(table) for path in files), table
    assert f"{rows[0][0]:.5f}" in table[2], table


def test_embedding_masks_keep_the_rule_and_tell_a_planted_rate_apart():
    draws, rate = 400, HP["dropoute"]
    n = draws * VOCAB
    for framework in available():
        dropped = probe.embedding_drops(framework, HP, VOCAB, seed=9, draws=draws, threads=1)
        assert dropped.shape == (draws, VOCAB) and dropped.dtype == bool
        stats = probe.embedding_stats(dropped, rate)
        # five binomial standard errors, as tests/test_random_streams.py bounds its draws
        assert abs(stats["drop_rate"] - rate) <= 5 * np.sqrt(rate * (1 - rate) / n), stats
        assert abs(stats["z"]) <= 5, (framework, stats)
        assert stats["chi2_df"] <= 1 + 5 * np.sqrt(2 / VOCAB), (framework, stats)
        assert abs(stats["count_sd"] / stats["binomial_sd"] - 1) <= 5 / np.sqrt(2 * draws), \
            (framework, stats)
        for r in ("neighbour_r", "successive_r"):
            assert abs(stats[r]) <= 5 / np.sqrt(n), (framework, r, stats)
        planted = probe.embedding_stats(dropped, 2 * rate)  # the masks drawn at rate, not 2 rate
        assert abs(planted["z"]) > 20 and planted["chi2_df"] > 5, (framework, planted)
        table = probe.embedding_table({framework: stats, "planted": planted})
        assert table[2].startswith(f"| {framework} | {stats['drop_rate']:.5f} "), table


def test_init_moments_agree_between_engines_and_a_wider_range_is_seen():
    frameworks = available()
    seeds = range(3)
    moments = {f: probe.initial_moments(f, HP, VOCAB, seeds, threads=1) for f in frameworks}
    base = moments[frameworks[0]]
    assert {"embedding", "rnn.0.w_hh", "latent.w", "prior.w", "decoder.b"} <= set(base)
    for name in frameworks[1:]:
        assert set(moments[name]) == set(base)
        for tensor, (mean, sd, low, high) in moments[name].items():
            _, base_sd, base_low, base_high = base[tensor]
            if base_sd == 0:  # the decoder's bias starts at zero everywhere
                assert (sd, low, high) == (0.0, 0.0, 0.0), (name, tensor)
                continue
            # a few dozen to a few thousand entries a tensor, 3 seeds: within 30 %
            assert 0.7 < sd / base_sd < 1.3, (name, tensor, sd, base_sd)
            assert abs(mean) < 3 * sd / np.sqrt(3), (name, tensor)  # centred
            # the same range: the largest |entry| of at least 90 draws comes near its bound
            assert 0.8 < max(-low, high) / max(-base_low, base_high) < 1.25, (name, tensor)
    table = "\n".join(probe.init_table(moments, frameworks))
    assert "| embedding |" in table and "| decoder.b |" in table
    # a planted initialiser range twice the preset's is told apart
    wide = probe.initial_moments(frameworks[-1], {**HP, "init_range": 0.2}, VOCAB, seeds, 1)
    assert wide["embedding"][1] / base["embedding"][1] > 1.7


@pytest.mark.parametrize("framework", available())
def test_each_engine_s_step_follows_the_gradient_of_its_own_masks(framework, streams):
    engine = probe.engine_for(framework, HP, VOCAB, seed=5, threads=1)
    weights = {name: 4 * values for name, values in engine.weights().items()}
    engine.close()
    check = probe.gradient_check(framework, HP, streams, VOCAB, weights, seed=6, lr=0.003,
                                 threads=1, start=0)
    own, other = check["own"] / check["predicted"], check["other"] / check["predicted"]
    print(f"\n{framework}: ratio {own:.4f}, under other masks {other:.4f}")
    assert check["predicted"] < -1e-5  # the step moved the weights measurably
    assert abs(own - 1) < 0.02
    assert other < 0.9  # the control: the check tells other masks' gradient apart
    table = "\n".join(probe.gradient_table({(framework, 6): check}))
    assert f"| {framework} | 6 |" in table


def test_gradient_noise_moments_tell_a_planted_rate_apart(streams):
    """The statistics are the probe's own (framework-neutral): one engine suffices."""
    framework = "pytorch" if "pytorch" in available() else available()[0]
    engine = probe.engine_for(framework, HP, VOCAB, seed=5, threads=1)
    weights = {name: 4 * values for name, values in engine.weights().items()}
    engine.close()
    base, planted = (probe.gradient_moments(framework, hp, streams, VOCAB, weights, 5, 32, 1,
                                            start=0)
                     for hp in (HP, {**HP, "dropoutl": 0.9}))
    for name, (square, square_se, mean, _) in base[0].items():
        assert square > 0 and mean < square + 3 * square_se, name  # E|g|^2 >= |E g|^2
    (a, sa, _, _), (b, sb, _, _) = base[0]["latent.w"], planted[0]["latent.w"]
    print(f"\n{framework}: latent.w E|g|^2 {a:.3e} ± {sa:.1e}, at dropoutl 0.9 {b:.3e} ± {sb:.1e}")
    assert b - a > 3 * (sa + sb)
    table = probe.noise_table({framework: base})
    assert table[2].startswith("| embedding |") and table[-1].startswith("| loss |")
