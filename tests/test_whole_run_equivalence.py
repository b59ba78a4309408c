"""Whole training runs are equivalent between frameworks; planted differences are not.

Step-level tests (test_engines_agree.py, test_pytorch_engine.py) and the seed-reach
tests (test_random_streams.py) can pass while whole runs still differ. Here each
framework of :data:`mosbench.engines.FRAMEWORKS` trains :data:`SEEDS` runs of a small
AWD-LSTM-MoS (every dropout on) for about 310 stochastic steps of one epoch on a
synthetic Markov corpus of 50 words, and every framework is compared with the first
(the baseline): a JAX engine added later joins by itself.

**A run** is the procedure's own pieces, in process: the real engine
(:func:`mosbench.engines.load_engine`, built once per seed), ``batchify``, the
variable window lengths of ``training/bptt.py`` drawn from the generator
``train.fresh_state`` makes, the learning rate scaled by ``seq_len / bptt``, the
engine's ``train_step`` (forward, backward, AR/TAR, clip, SGD with weight decay) with
the state carried across windows, then ``evaluate_loss`` on the validation stream. Every
run reads the same windows (the generator of seed :data:`WINDOWS_SEED`): the window
stream is framework-neutral and test_random_streams.py proves it follows the job's seed,
and holding it fixed leaves the seed-to-seed spread to the engines' own streams
(initial weights and dropout masks) and makes the first steps of all runs read the
same tokens. Recorded per run: the mean training NLL over the run (token-weighted, as
``train.py``'s epoch ``train_loss``), the validation NLL at the end, and each step's
training NLL.

**The verdict** of a framework against the baseline, over the seeds; it is
"equivalent" when all three checks pass:

* ``train`` and ``valid``: the two one-sided Welch tests of the mean (statsmodels
  ``ttost_ind``, through ``benchmarks/fidelity.py``'s ``compare``) reject a difference
  of at least the margin, at p < :data:`ALPHA`. **Margin rule**: :data:`K` times the
  pooled seed-to-seed standard deviation of the two sides,
  ``K * sqrt((s_base**2 + s_other**2) / 2)``. With 6 seeds a side the TOST then passes
  while the difference of the means is below about 2.4 pooled standard deviations: on
  a fresh draw of equivalent engines (another machine: AVX2 or AVX-512 moves every
  chaotic run) it fails about twice in a thousand (0.0017) per quantity.
* ``initial spread``: the seed-to-seed variance of the mean training loss of the first
  :data:`FIRST_STEPS` steps, the loss of (nearly) the initial weights on windows every
  run shares, equal on both sides: a two-sided F test, failing at p <
  :data:`SPREAD_ALPHA` (one false alarm in a hundred fresh draws).

**Why these statistics** (measured on this machine, an AVX-512 Intel Xeon, 6 seeds): a
planted difference is applied to one framework (PyTorch, the cheaper to rerun) by
monkeypatching the one piece it breaks, and each must fail the verdict.

* *A different initialiser range* (every LSTM tensor uniform(+-2/sqrt(hidden)) instead
  of +-1/sqrt(hidden)) moves the whole run: mean training and validation loss 5.2 and
  4.6 pooled standard deviations lower (TOST p = 0.99 and 0.95), so both TOSTs fail.
* *A seed that does not reach one stream*: PyTorch's initial weights drawn from a
  constant seed (``torch.manual_seed(0)``; the mask generator still seeded). It does
  **not** narrow the spread of the end of a run: training is chaotic, and the streams
  that still follow the seed decorrelate the runs nearly as fully as all of them do
  (training and validation loss sd 0.018 and 0.064 against the baseline's 0.032 and
  0.073, F = 0.31 and 0.77, p = 0.23 and 0.78; both TOSTs pass). What it narrows is
  the spread of the first steps, where the initial weights decide the loss: sd 0.0014
  against 0.0087 (baseline) and 0.0084 (unplanted PyTorch), F = 0.025, p = 0.001; the
  initial spread fails. The same plant on the mask generator (``mask_seed`` a
  constant) is caught by nothing here: it moves neither the mean nor the spread of the
  outcomes (validation loss sd 0.076 against 0.097 unplanted and 0.073 baseline;
  initial spread F = 1.65), which is what a whole-run comparison reads.
  test_random_streams.py proves that every mask stream follows the seed.
* *A locked-dropout mask shared over the batch* (``(1, 1, F)`` instead of ``(1, B, F)``)
  is not caught either, and no whole-run statistic tried caught it within this
  budget: each sequence's mask has the same distribution, so the expected loss is the
  same; only the gradient noise grows. Training and validation loss +0.28 and +0.75
  pooled sd, initial spread F = 1.19; the seed-to-seed spread of the step-to-step
  change of the training loss +23 % (about one standard deviation of that statistic);
  with dropout rates 0.4/0.3 validation +1.1 sd, with batches of 32 +0.5 sd.
  test_random_streams.py catches it (the agreement of neighbouring sequences' masks).

About 50 s of CPU time (130 s on two cores shared with other work): the unplanted runs
are made once per module and serve the main verdicts and the plants; each plant reruns
PyTorch only. PyTorch runs on one thread (:data:`THREADS`), restored afterwards.
"""

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mosbench.data.batching import batchify
from mosbench.data.synthetic import sample_splits, transition_matrix
from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.evaluation.perplexity import evaluate_loss
from mosbench.training.bptt import epoch_windows, restore_rng
from mosbench.training.train import fresh_state

pytest.importorskip("statsmodels", reason="the equivalence test (TOST) needs statsmodels")

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("fidelity", REPO / "benchmarks" / "fidelity.py")
fidelity = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fidelity)

MODEL, VOCAB = "awd-lstm-mos", 50
SEEDS = tuple(range(1, 7))
WINDOWS_SEED = 24
# Small enough for about 1.5 s of CPU a run, large enough that every seed leaves the
# unigram plateau (loss about 3.10) within the run: one layer fewer, or lr 2, stays there.
HP = dict(emsize=16, nhid=24, nhidlast=16, nlayers=2, n_experts=3, init_range=0.1,
          dropout=0.2, dropouth=0.15, dropouti=0.15, dropoute=0.05, wdrop=0.2, dropoutl=0.15,
          alpha=2.0, beta=1.0, wdecay=1.2e-6, clip=0.25, lr=5.0, batch_size=8,
          small_batch_size=8, bptt=10, max_seq_len_delta=5, variable_bptt=True,
          eval_batch_size=10, tie_weights=True)
SOURCE = dict(kind="synthetic", order=1, vocab_size=VOCAB, successors=4, zipf_exponent=1.0,
              smoothing=0.02, eos_prob=0.06, tokens={"train": 24000, "valid": 2000, "test": 10},
              seed=24)
# PyTorch's two intra-op threads spin against TensorFlow's pools in one process: on two
# busy cores a run took 160 s instead of 6 s. The job's own `threads` setting, one thread.
THREADS = {"pytorch": 1}
IMPORTS = {"tensorflow": "tensorflow", "pytorch": "torch"}

ALPHA = 0.05  # each one-sided test of the TOST
K = 3.5  # margin = K pooled seed-to-seed standard deviations
FIRST_STEPS = 3
SPREAD_ALPHA = 0.01


@dataclass
class Run:
    framework: str
    seed: int
    train: float  # token-weighted mean training NLL over the run's steps
    valid: float  # validation NLL per token at the end
    steps: np.ndarray = field(repr=False)  # each step's training NLL


def corpus():
    """Training and validation token ids of the synthetic source (a seeded Markov chain)."""
    P, _ = transition_matrix(SOURCE)
    splits = sample_splits(P, SOURCE["tokens"], SOURCE["seed"])
    return tuple(splits[s].astype(np.int32) for s in ("train", "valid"))


def whole_run(framework, seed, train_ids, valid_ids, hp=HP):
    """One epoch of training by the procedure's pieces, then validation (see the docstring)."""
    engine = load_engine(framework, seed=seed, threads=THREADS.get(framework))
    try:
        engine.build(MODEL, VOCAB, hp)
        batch = hp["batch_size"]
        engine.prepare_training(hp, batch)
        streams = batchify(train_ids, batch)
        rng = restore_rng(fresh_state(hp, WINDOWS_SEED)["rng"])
        states = engine.initial_state(batch)
        losses, lengths = [], []
        for start, length, scale in epoch_windows(rng, streams.shape[1], hp["bptt"],
                                                  hp["variable_bptt"], hp["max_seq_len_delta"]):
            window = streams[:, start:start + length + 1]
            nll, states = engine.train_step(window[:, :-1], window[:, 1:], states,
                                            hp["lr"] * scale, False)
            assert math.isfinite(nll), f"{framework} seed {seed}: the loss became {nll}"
            losses.append(nll)
            lengths.append(length)
        valid = evaluate_loss(engine, valid_ids, hp["eval_batch_size"], hp["bptt"], "validate")
    finally:
        if hasattr(engine, "close"):
            engine.close()
    losses = np.array(losses)
    return Run(framework, seed, float(np.average(losses, weights=lengths)), float(valid), losses)


# ---------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    checks: dict  # name -> (passed, what was found)

    @property
    def equivalent(self):
        return all(passed for passed, _ in self.checks.values())

    def failed(self):
        return {name for name, (passed, _) in self.checks.items() if not passed}

    def __str__(self):
        return "\n".join(f"  {'pass' if passed else 'FAIL'} {name}: {text}"
                         for name, (passed, text) in self.checks.items())


def verdict(base_runs, runs):
    """``runs`` against ``base_runs`` (one per seed each): the three checks of the docstring."""
    base, name = base_runs[0].framework, runs[0].framework
    checks = {}
    for quantity in ("train", "valid"):
        x = np.array([getattr(r, quantity) for r in base_runs])
        y = np.array([getattr(r, quantity) for r in runs])
        spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        c = fidelity.compare(base, x, name, y, K * spread, level=1 - ALPHA)
        passed = c["p_tost"] is not None and c["p_tost"] < ALPHA
        checks[quantity] = (passed, f"{name} {y.mean():.4f} vs {base} {x.mean():.4f}, "
                                    f"difference {c['diff']:+.4f} = {c['diff'] / spread:+.2f} "
                                    f"pooled sd ({spread:.4f}), margin {K * spread:.4f}, "
                                    f"TOST p = {c['p_tost']:.4f}")
    from scipy import stats

    x = np.array([r.steps[:FIRST_STEPS].mean() for r in base_runs])
    y = np.array([r.steps[:FIRST_STEPS].mean() for r in runs])
    ratio = y.var(ddof=1) / x.var(ddof=1)
    dfs = (len(y) - 1, len(x) - 1)
    p = min(1.0, 2 * min(stats.f.cdf(ratio, *dfs), stats.f.sf(ratio, *dfs)))
    checks["initial spread"] = (p >= SPREAD_ALPHA,
                                f"sd of the first {FIRST_STEPS} steps' loss {y.std(ddof=1):.4f} "
                                f"vs {x.std(ddof=1):.4f}, F = {ratio:.3f}, p = {p:.4f}")
    return Verdict(checks)


# ------------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def data():
    return corpus()


@pytest.fixture(scope="module")
def runs(data):
    """Each framework's unplanted runs, made once for the module when first asked for."""
    made = {}
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None

    def of(framework):
        pytest.importorskip(IMPORTS.get(framework, framework))
        if framework not in made:
            made[framework] = [whole_run(framework, seed, *data) for seed in SEEDS]
        return made[framework]

    yield of
    if torch_threads:
        torch.set_num_threads(torch_threads)  # the engine's `threads` is process-wide


@pytest.mark.parametrize("framework", FRAMEWORKS[1:])
def test_whole_runs_are_equivalent_to_the_first_framework(framework, runs):
    found = verdict(runs(FRAMEWORKS[0]), runs(framework))
    print(f"\n{framework} against {FRAMEWORKS[0]}, {len(SEEDS)} seeds:\n{found}")
    assert found.equivalent, f"{framework} differs from {FRAMEWORKS[0]}:\n{found}"


# ---------------------------------------------------------------------------- the plants


def _scaled_lstm_init(monkeypatch):
    from torch import nn

    from mosbench.engines.pytorch.models.fused_lstm import LSTMLayer

    def reset_parameters(self):
        bound = 2 * self.hidden_size ** -0.5  # the rule is 1/sqrt(hidden)
        for p in self.parameters(recurse=False):
            nn.init.uniform_(p, -bound, bound)

    monkeypatch.setattr(LSTMLayer, "reset_parameters", reset_parameters)


def _initial_weights_from_a_constant_seed(monkeypatch):
    from mosbench.engines.pytorch import engine

    configure = engine.configure

    def constant_seed(**settings):
        return configure(**{**settings, "seed": 0})  # torch.manual_seed(0): the weights

    monkeypatch.setattr(engine, "configure", constant_seed)


# plant -> (how, the checks it must fail)
PLANTS = {
    "initialiser range x2": (_scaled_lstm_init, {"train", "valid"}),
    "initial weights ignore the seed": (_initial_weights_from_a_constant_seed,
                                        {"initial spread"}),
}


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_difference_fails_the_verdict(plant, runs, data, monkeypatch):
    if "pytorch" not in FRAMEWORKS:
        pytest.skip("the plants are made in the PyTorch engine")
    pytest.importorskip("torch")
    base = runs(FRAMEWORKS[0])
    how, expected = PLANTS[plant]
    how(monkeypatch)
    planted = [whole_run("pytorch", seed, *data) for seed in SEEDS]
    found = verdict(base, planted)
    print(f"\npytorch with '{plant}' against {FRAMEWORKS[0]}:\n{found}")
    assert not found.equivalent, f"'{plant}' passed as equivalent:\n{found}"
    assert expected <= found.failed(), f"'{plant}' should fail {sorted(expected)}:\n{found}"
