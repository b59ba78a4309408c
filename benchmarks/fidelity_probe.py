"""Where two engines' whole runs part: seven probes on fidelity.py's model and the real PTB.

``fidelity.py`` says whether whole runs end at the same perplexity; when they
do not, these probes split the question (issue 24):

- ``init``: whether the engines draw their initial weights from one
  distribution at full size. Every framework builds the model for ``--seeds``
  seeds from ``--seed``; per canonical tensor, the mean, standard deviation
  and extremes over those draws, and each framework's standard deviation
  over the first framework's (1 when the initialiser's range is the same;
  ``trace`` and ``masks`` start every engine from one set of weights, so only
  this probe sees the initialisers).
- ``validate``: whether the validation pass is where they part. Every
  framework scores every ``--weights`` file (a ``model.weights.npz`` in
  canonical names, from any engine's run) on PTB's validation split, with the
  preset's eval batch size and bptt (``evaluate_loss``, as ``mosbench
  evaluate`` scores). One row per file, one column per framework, and the
  largest difference between engines: equal losses mean the engines'
  evaluations agree, so different perplexities come from the weights, that
  is from training.
- ``trace``: every framework from the *same* weights (the first framework's
  initial ones, drawn with ``--seed``, or ``--weights``' trained ones), every
  dropout off, over the first
  ``--steps`` windows of the PTB epoch (the windows and learning rates the
  procedure draws for that seed). With no randomness left, the engines'
  per-window training losses differ only by floating-point rounding: the table
  says at which window they first part by 1e-6, 1e-4, 1e-2 and 0.1 nats, and
  the mean loss of blocks of windows. Equal losses over the first windows show
  that the step's arithmetic (forward, backward, clipping, decay, SGD, the
  states carried between windows) is the same; how soon rounding grows into
  whole nats shows how chaotic training is there, so how far apart two runs
  of one engine may end for reasons no test can hold fixed.
- ``masks``: the dropout streams' distribution at full size. Given trained
  weights (``--weights``, a ``model.weights.npz`` in canonical names, from any
  engine), every framework takes ``--draws`` training steps at learning rate 0
  on one fixed window from zero states: the weights never move, so the losses
  differ only by the masks drawn. Each stream runs alone at its preset rate
  (the others at 0), then all together. If two engines draw their masks from
  the same distribution (rates, scaling, what shares a mask, independence),
  the mean losses agree within their standard errors; a mean apart by several
  errors points at that stream. ``--start`` moves the window.
- ``gradient``: whether each engine's update follows the gradient of the
  loss under the masks its own forward drew (a backward that redrew a mask,
  or reused an old one, would still pass every probe above: ``masks`` sees
  losses only, ``trace`` has no masks). With no clipping, decay, AR or TAR
  the update is ``-lr`` times the NLL's gradient ``g``, so from ``--weights``
  a fresh engine takes one step at ``--lr`` (loss L0 under its first masks,
  weights W1), and a second fresh engine with the same seed (so the same
  first masks) scores W1 at lr 0 (L1). To first order L1 - L0 = g.(W1 - W)
  = -|W1 - W|^2 / lr: the ratio of the measured change to that is 1 when
  the gradient belongs to the forward's masks. The control scores W and W1
  under another seed's masks: the ratio a backward with other masks would
  give (the gradients' overlap between two draws, well below 1). One row
  per seed of ``--seeds`` from ``--seed``, the window at ``--start``.
- ``gradient-noise``: the masks' effect on the gradient, which training
  follows (``masks`` sees the loss). ``--draws`` plain steps (as
  ``gradient``'s) at lr 1 from ``--weights``, reloaded before each, so each
  weight change is minus one gradient under fresh masks. Per canonical
  tensor: the mean squared gradient E|g|^2 and the squared mean gradient
  |E g|^2 (unbiased: the products of different batches' means, 8 batches),
  with standard errors (over draws; by the jackknife over batches). Engines
  whose masks act alike give the same two figures for every tensor.
- ``embedding-masks``: embedding dropout's word-type masks themselves, the
  stream whose losses vary most in ``masks``. Every framework's engine, built
  at the real vocabulary size, draws its mask of every word type ``--draws``
  times through its own generator (:mod:`mosbench.engines.mask_draws`, as
  tests/test_random_streams.py draws it). Per framework: the drop rate and
  its distance from the preset's ``dropoute`` in binomial standard errors;
  the per-word drop rates' chi-square per degree of freedom (about 1 when
  every word type is dropped at that rate); the spread of the dropped count
  per draw against the binomial's; the correlation of neighbouring word
  types and of successive draws (about 0 when the draws are independent).

The model is fidelity.py's (the ``ptb`` AWD-LSTM-MoS preset scaled to emsize
200, nhid 400, nhidlast 200, 5 experts), tokenised from ``--data`` by
``mosbench tokenise`` in a scratch folder (the train split for ``trace`` and
``masks``, the valid split for ``validate``, the vocabulary for
``embedding-masks``). Each framework runs in this process, one after the
other, on ``--threads`` threads.

    .venv/bin/python benchmarks/fidelity_probe.py init --seeds 6
    .venv/bin/python benchmarks/fidelity_probe.py trace --steps 200
    .venv/bin/python benchmarks/fidelity_probe.py masks --weights run/model.weights.npz
    .venv/bin/python benchmarks/fidelity_probe.py validate --weights runs/*/model.weights.npz
    .venv/bin/python benchmarks/fidelity_probe.py embedding-masks --draws 2000
    .venv/bin/python benchmarks/fidelity_probe.py gradient --weights run/model.weights.npz
    .venv/bin/python benchmarks/fidelity_probe.py gradient-noise --weights run/model.weights.npz
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mosbench.config import load_config
from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.engines.mask_draws import embedding_factors
from mosbench.evaluation.perplexity import evaluate_loss
from mosbench.training.bptt import epoch_windows, restore_rng
from mosbench.training.train import fresh_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import (  # noqa: E402  (the benchmark's own model and data)
    DATASET,
    DEFAULT_DATA,
    MODEL,
    REPO,
    SCALED,
    check_ptb,
    machine_lines,
    prepare_data,
    write_config,
)

STREAMS = ("wdrop", "dropoute", "dropouti", "dropouth", "dropout", "dropoutl")
THRESHOLDS = (1e-6, 1e-4, 1e-2, 0.1)
WINDOW_START = 5000  # the masks probe's fixed window: 5000 positions into the train streams
PROBES = ("init", "trace", "masks", "validate", "embedding-masks", "gradient",
          "gradient-noise")
OTHER_MASKS = 1000  # gradient: the control's seed is the row's seed plus this
DRAWS = {"masks": 200, "embedding-masks": 2000, "gradient-noise": 320}  # --draws default
BATCHES = 8  # gradient-noise: |E g|^2 from the products of these batches' means
SEEDS = {"init": 6, "gradient": 3}  # --seeds by default


def engine_for(framework, hp, vocab, seed, threads):
    """A built engine, its training prepared, as ``mosbench train`` makes one."""
    engine = load_engine(framework, threads=threads, seed=seed)
    engine.build(MODEL, vocab, hp)
    engine.prepare_training(hp, hp["batch_size"])
    return engine


def without_dropout(hp):
    return {**hp, **dict.fromkeys(STREAMS, 0.0)}


def fixed_window(streams, start, bptt):
    """The ``bptt`` inputs (and their targets) from position ``start``: the window the
    masks and gradient probes use every time."""
    window = streams[:, start:start + bptt + 1]
    if window.shape[1] < bptt + 1:
        raise SystemExit(f"fidelity_probe: no whole window at position {start} of "
                         f"{streams.shape[1]}; give a smaller --start")
    return window


def read_weights(path):
    """``{name: array}`` of a ``model.weights.npz`` (canonical names, any engine's)."""
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


# ------------------------------------------------------------------------------ trace


def trace(frameworks, hp, streams, vocab, seed, steps, threads, weights=None):
    """``{framework: per-window training losses}``, all from ``weights`` (trained ones) or
    else from the first framework's initial weights."""
    hp = without_dropout(hp)
    initial, losses = weights, {}
    for framework in frameworks:
        engine = engine_for(framework, hp, vocab, seed, threads)
        if initial is None:
            initial = engine.weights()
        else:
            engine.load_weights(initial)
        rng = restore_rng(fresh_state(hp, seed)["rng"])
        states, out, started = engine.initial_state(hp["batch_size"]), [], time.monotonic()
        windows = epoch_windows(rng, streams.shape[1], hp["bptt"], hp["variable_bptt"],
                                hp.get("max_seq_len_delta"))
        for start, length, scale in windows:
            if len(out) == steps:
                break
            window = streams[:, start:start + length + 1]
            nll, states = engine.train_step(window[:, :-1], window[:, 1:], states,
                                            hp["lr"] * scale, False)
            out.append(float(nll))
        engine.close()
        losses[framework] = np.array(out)
        print(f"{framework}: {len(out)} windows in {time.monotonic() - started:.0f} s",
              flush=True)
    return losses


def first_parting(a, b, threshold):
    """The first window (1-based) where two loss traces differ by more than ``threshold``."""
    apart = np.flatnonzero(np.abs(a - b) > threshold)
    return int(apart[0]) + 1 if apart.size else None


def trace_tables(losses, block=50):
    base_name, *others = list(losses)
    base = losses[base_name]
    lines = [f"| side | {' | '.join(f'first window apart by > {t:g}' for t in THRESHOLDS)} |",
             "|---|" + "---:|" * len(THRESHOLDS),
             f"| {base_name} (baseline) |" + " |" * len(THRESHOLDS)]
    for name in others:
        cells = [first_parting(base, losses[name], t) for t in THRESHOLDS]
        lines.append(f"| {name} | " + " | ".join("never" if c is None else str(c)
                                                for c in cells) + " |")
    lines += ["", "mean training loss per block of windows",
              "| windows | " + " | ".join(losses) + " |", "|---|" + "---:|" * len(losses)]
    for start in range(0, len(base), block):
        end = min(start + block, len(base))
        lines.append(f"| {start + 1}-{end} | " + " | ".join(
            f"{v[start:end].mean():.4f}" for v in losses.values()) + " |")
    return lines


# ------------------------------------------------------------------------------ masks


def mask_losses(framework, hp, streams, vocab, weights, seed, draws, only, threads,
                start=WINDOW_START):
    """``draws`` training losses at lr 0 on the window at ``start``, ``only`` stream(s) on."""
    rates = {s: (hp[s] if s in only else 0.0) for s in STREAMS}
    engine = engine_for(framework, {**hp, **rates}, vocab, seed, threads)
    engine.load_weights(weights)
    window = fixed_window(streams, start, hp["bptt"])
    losses = []
    for _ in range(draws):
        nll, _ = engine.train_step(window[:, :-1], window[:, 1:],
                                   engine.initial_state(hp["batch_size"]), 0.0, False)
        losses.append(float(nll))
    engine.close()
    return np.array(losses)


def mask_table(results, frameworks):
    """One row per stream: each side's mean ± standard error, and each against the first."""
    base = frameworks[0]
    head = "| streams on | " + " | ".join(f"{f} mean ± se" for f in frameworks) + " | " + \
        " | ".join(f"{f} − {base} (z)" for f in frameworks[1:]) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(frameworks) - 1)]
    for label, by_side in results.items():
        stats = {f: (v.mean(), v.std(ddof=1) / math.sqrt(v.size)) for f, v in by_side.items()}
        cells = [f"{m:.5f} ± {se:.5f}" for m, se in stats.values()]
        for f in frameworks[1:]:
            diff = stats[f][0] - stats[base][0]
            z = diff / math.hypot(stats[f][1], stats[base][1])
            cells.append(f"{diff:+.5f} ({z:+.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------ gradient


def plain_step(hp):
    """Settings under which an update is -lr times the NLL's gradient: no clip, decay, AR, TAR."""
    return {**hp, "clip": 0.0, "wdecay": 0.0, "alpha": 0.0, "beta": 0.0}


def first_step(framework, hp, vocab, weights, seed, window, lr, threads):
    """A fresh engine's first training step from ``weights``: its loss and the weights after."""
    engine = engine_for(framework, hp, vocab, seed, threads)
    engine.load_weights({name: np.asarray(v, np.float32) for name, v in weights.items()})
    nll, _ = engine.train_step(window[:, :-1], window[:, 1:],
                               engine.initial_state(hp["batch_size"]), lr, False)
    after = {name: np.asarray(v, np.float64) for name, v in engine.weights().items()}
    engine.close()
    return float(nll), after


def gradient_check(framework, hp, streams, vocab, weights, seed, lr, threads,
                   start=WINDOW_START):
    """One step's loss change under its own masks and under another seed's, and the
    first-order change ``-|W1 - W|^2 / lr`` that the gradient of its own masks predicts."""
    hp = plain_step(hp)
    window = fixed_window(streams, start, hp["bptt"])
    before, after = first_step(framework, hp, vocab, weights, seed, window, lr, threads)
    moved = {name: after[name] - np.asarray(weights[name], np.float64) for name in after}

    def change(masks_seed):
        """L(W1) - L(W), both under the first masks of ``masks_seed``."""
        at_w = before if masks_seed == seed else first_step(
            framework, hp, vocab, weights, masks_seed, window, 0.0, threads)[0]
        return first_step(framework, hp, vocab, after, masks_seed, window, 0.0, threads)[0] \
            - at_w

    return {"predicted": -sum(float(np.sum(d * d)) for d in moved.values()) / lr,
            "own": change(seed), "other": change(seed + OTHER_MASKS)}


def gradient_table(checks):
    lines = ["| framework | seed | predicted change | own masks: change | ratio "
             "| other masks: change | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for (framework, seed), c in checks.items():
        lines.append(f"| {framework} | {seed} | {c['predicted']:+.6f} | {c['own']:+.6f} | "
                     f"{c['own'] / c['predicted']:.4f} | {c['other']:+.6f} | "
                     f"{c['other'] / c['predicted']:.4f} |")
    return lines


def off_diagonal_mean(gram):
    """The mean of a Gram matrix's off-diagonal entries: products of different batches."""
    n = gram.shape[0]
    return (gram.sum() - np.trace(gram)) / (n * (n - 1))


def gradient_moments(framework, hp, streams, vocab, weights, seed, draws, threads,
                     start=WINDOW_START, batches=BATCHES):
    """``{tensor: (E|g|^2, its se, |E g|^2, its se)}`` over ``draws`` masks at fixed weights,
    and the mean loss with its se."""
    hp = plain_step(hp)
    window = fixed_window(streams, start, hp["bptt"])
    engine = engine_for(framework, hp, vocab, seed, threads)
    weights = {name: np.asarray(v, np.float32) for name, v in weights.items()}
    per = max(draws // batches, 1)
    means = {name: np.zeros((batches, v.size)) for name, v in weights.items()}
    squares = {name: [] for name in weights}
    losses = []
    for draw in range(per * batches):
        engine.load_weights(weights)
        nll, _ = engine.train_step(window[:, :-1], window[:, 1:],
                                   engine.initial_state(hp["batch_size"]), 1.0, False)
        losses.append(float(nll))
        for name, after in engine.weights().items():
            g = (weights[name] - np.asarray(after, np.float64)).ravel()  # lr 1: -gradient
            means[name][draw // per] += g / per
            squares[name].append(float(g @ g))
    engine.close()
    moments = {}
    for name, m in means.items():
        gram = m @ m.T
        keep = [np.delete(np.delete(gram, b, 0), b, 1) for b in range(batches)]
        jack = np.array([off_diagonal_mean(g) for g in keep])
        sq = np.array(squares[name])
        moments[name] = (sq.mean(), sq.std(ddof=1) / math.sqrt(sq.size), off_diagonal_mean(gram),
                         math.sqrt((batches - 1) / batches * np.sum((jack - jack.mean()) ** 2)))
    loss = np.array(losses)
    return moments, (loss.mean(), loss.std(ddof=1) / math.sqrt(loss.size))


def noise_table(results):
    """A row per tensor, each framework's E|g|^2 and |E g|^2 with errors; then the losses."""
    frameworks = list(results)
    lines = ["| tensor | " + " | ".join(f"{f} E\\|g\\|² | {f} \\|E g\\|²" for f in frameworks)
             + " |", "|---|" + "---:|" * (2 * len(frameworks))]
    for name in results[frameworks[0]][0]:
        cells = [f"{a:.4e} ± {sa:.1e} | {b:.4e} ± {sb:.1e}"
                 for a, sa, b, sb in (results[f][0][name] for f in frameworks)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| loss | " + " | ".join(f"{m:.5f} ± {se:.5f} | " for m, se in
                                          (results[f][1] for f in frameworks)) + " |")
    return lines


# ------------------------------------------------------------------------------ init


def initial_moments(framework, hp, vocab, seeds, threads):
    """``{tensor: (mean, std, min, max)}`` of ``framework``'s initial weights over ``seeds``."""
    draws = {}
    for seed in seeds:
        engine = load_engine(framework, threads=threads, seed=seed)
        engine.build(MODEL, vocab, hp)
        for name, array in engine.weights().items():
            draws.setdefault(name, []).append(np.asarray(array, np.float64))
        engine.close()
    return {name: (float(np.mean(a)), float(np.mean([x.std() for x in a])), float(np.min(a)),
                   float(np.max(a))) for name, a in draws.items()}


def init_table(moments, frameworks):
    """One row per tensor: each framework's mean ± std [min, max], and its std over the first's."""
    base = frameworks[0]
    lines = ["| tensor | " + " | ".join(f"{f} mean, std [min, max]" for f in frameworks) + " | "
             + " | ".join(f"std {f} / {base}" for f in frameworks[1:]) + " |",
             "|---|" + "---:|" * (2 * len(frameworks) - 1)]
    for name, first in moments[base].items():
        cells = [f"{m:+.5f}, {sd:.5f} [{lo:+.5f}, {hi:+.5f}]"
                 for m, sd, lo, hi in (moments[f][name] for f in frameworks)]
        cells += [f"{moments[f][name][1] / first[1]:.4f}" if first[1] else
                  ("equal" if moments[f][name][1] == 0 else "baseline constant")
                  for f in frameworks[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------ validate


def validation_losses(frameworks, hp, valid, vocab, weights_files, seed, threads):
    """``{weights file: {framework: loss}}``: every framework scores every file on ``valid``."""
    losses = {str(path): {} for path in weights_files}
    for framework in frameworks:
        engine = load_engine(framework, threads=threads, seed=seed)
        engine.build(MODEL, vocab, hp)
        for path in weights_files:
            engine.load_weights(read_weights(path))
            losses[str(path)][framework] = evaluate_loss(engine, valid, hp["eval_batch_size"],
                                                         hp["bptt"], f"{framework} validate")
        engine.close()
        print(f"{framework}: scored {len(weights_files)} weights file(s)", flush=True)
    return losses


def validation_table(losses, frameworks):
    """One row per weights file: each framework's validation loss and the largest gap."""
    lines = ["| weights | " + " | ".join(f"scored by {f}" for f in frameworks) +
             " | largest difference |", "|---|" + "---:|" * (len(frameworks) + 1)]
    for path, by_framework in losses.items():
        values = [by_framework[f] for f in frameworks]
        lines.append(f"| {path} | " + " | ".join(f"{v:.5f}" for v in values) +
                     f" | {max(values) - min(values):.1e} |")
    return lines


# ------------------------------------------------------------------------------ embedding masks


def embedding_drops(framework, hp, vocab, seed, draws, threads):
    """``(draws, vocab)``: whether each draw of ``framework``'s engine drops each word type."""
    engine = engine_for(framework, hp, vocab, seed, threads)
    tokens = np.arange(vocab, dtype=np.int32).reshape(1, vocab)
    dropped = np.stack([embedding_factors(engine, tokens)[0] == 0 for _ in range(draws)])
    engine.close()
    return dropped


def binary_correlation(a, b):
    """Pearson's r of two equally long boolean arrays, counted without float copies."""
    n = a.size
    pa, pb = np.count_nonzero(a) / n, np.count_nonzero(b) / n
    pab = np.count_nonzero(a & b) / n
    spread = math.sqrt(pa * (1 - pa) * pb * (1 - pb))
    return (pab - pa * pb) / spread if spread else math.nan


def embedding_stats(dropped, rate):
    """What ``(draws, vocab)`` drops say against the rule: whole word types dropped at ``rate``.

    ``z``: the drop rate's difference from ``rate`` in binomial standard errors;
    ``chi2_df``: the per-word drop rates' chi-square per degree of freedom
    (1 +- sqrt(2/vocab) by chance); ``count_sd`` and ``binomial_sd``: the spread
    of the dropped count per draw and the binomial's; ``neighbour_r`` and
    ``successive_r``: the correlation of neighbouring word types and of
    successive draws (0 +- 1/sqrt(draws * vocab) by chance).
    """
    draws, vocab = dropped.shape
    variance = rate * (1 - rate)
    drop_rate = np.count_nonzero(dropped) / dropped.size
    per_word = dropped.mean(axis=0)
    counts = dropped.sum(axis=1)
    return {"drop_rate": drop_rate,
            "z": (drop_rate - rate) / math.sqrt(variance / dropped.size),
            "chi2_df": float(((per_word - rate) ** 2).sum() / (variance / draws) / vocab),
            "count_sd": float(counts.std()),
            "binomial_sd": math.sqrt(vocab * variance),
            "neighbour_r": binary_correlation(dropped[:, :-1], dropped[:, 1:]),
            "successive_r": binary_correlation(dropped[:-1], dropped[1:])}


def embedding_table(stats):
    """One row per framework: :func:`embedding_stats`' figures."""
    lines = ["| framework | drop rate (z) | per-word χ²/df | per-draw count sd (binomial) | "
             "neighbour r | successive r |", "|---|---:|---:|---:|---:|---:|"]
    for framework, s in stats.items():
        lines.append(f"| {framework} | {s['drop_rate']:.5f} ({s['z']:+.1f}) | "
                     f"{s['chi2_df']:.3f} | {s['count_sd']:.1f} ({s['binomial_sd']:.1f}) | "
                     f"{s['neighbour_r']:+.4f} | {s['successive_r']:+.4f} |")
    return lines


# ------------------------------------------------------------------------------ main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=PROBES)
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                        help="the engines, the first the baseline (default: all)")
    parser.add_argument("--seed", type=int, default=31, help="the engines' seed (default 31)")
    parser.add_argument("--seeds", type=int, help="init: seeds from --seed (6); "
                        "gradient: rows, a seed each (3)")
    parser.add_argument("--lr", type=float, default=0.01,
                        help="gradient: the step's learning rate (0.01)")
    parser.add_argument("--steps", type=int, default=200, help="trace: windows (default 200)")
    parser.add_argument("--weights", type=Path, nargs="+",
                        help="masks, gradient (and trace, optionally): trained weights, a "
                             "model.weights.npz in canonical names; validate: one or more")
    parser.add_argument("--streams", nargs="+", choices=(*STREAMS, "all"),
                        default=[*STREAMS, "all"], help="masks: which rows (default: each, all)")
    parser.add_argument("--start", type=int, default=WINDOW_START,
                        help=f"masks, gradient: the window's first position "
                             f"({WINDOW_START})")
    parser.add_argument("--draws", type=int,
                        help="masks: steps per row (200); embedding-masks: draws per "
                             "framework (2000); gradient-noise: steps per framework (320)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of PTB's train/valid/test.txt (default ../shared/data/ptb)")
    parser.add_argument("--threads", type=int, default=1, help="threads per engine (1)")
    args = parser.parse_args(argv)
    one_weights = ("masks", "gradient", "gradient-noise")
    if (args.probe in one_weights and args.weights is None) or \
            (args.weights is not None and len(args.weights) != 1 and args.probe != "validate"):
        parser.error(f"{args.probe} needs one --weights (fidelity.py --work DIR keeps each "
                     "run's)")
    if args.probe == "validate" and args.weights is None:
        parser.error("validate needs --weights, one or more model.weights.npz")
    draws = DRAWS.get(args.probe) if args.draws is None else args.draws
    seeds = range(args.seed, args.seed + (args.seeds or SEEDS.get(args.probe, 1)))

    config = load_config(REPO / "config" / "config.yaml")
    check_ptb(args.data, config)
    print("\n".join(machine_lines(args.threads)))
    print("command:", " ".join(["benchmarks/fidelity_probe.py", *(argv or sys.argv[1:])]))
    with tempfile.TemporaryDirectory(prefix="mosbench-probe-") as scratch:
        work = Path(scratch)
        config_path, hp = write_config(work, {**SCALED, "epochs": 1}, args.threads)
        prepare_data(work, args.data, config_path, hp, None, work)
        ids, meta = load_split(work / "results" / "data" / DATASET, "train")
        valid, _ = load_split(work / "results" / "data" / DATASET, "valid")
        streams, vocab = np.array(batchify(ids, hp["batch_size"])), meta["vocab_size"]

    if args.probe == "trace":
        weights = None if args.weights is None else read_weights(args.weights[0])
        losses = trace(args.frameworks, hp, streams, vocab, args.seed, args.steps, args.threads,
                       weights)
        print("\n".join(trace_tables(losses)))
        return 0
    if args.probe == "init":
        moments = {f: initial_moments(f, hp, vocab, seeds, args.threads)
                   for f in args.frameworks}
        print(f"initial weights of {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}) a side: "
              "mean over seeds of each tensor's mean and std, extremes over all")
        print("\n".join(init_table(moments, args.frameworks)))
        return 0
    if args.probe == "validate":
        losses = validation_losses(args.frameworks, hp, valid, vocab, args.weights, args.seed,
                                   args.threads)
        print(f"validation loss (nats per token) on PTB valid, eval batch size "
              f"{hp['eval_batch_size']}, bptt {hp['bptt']}")
        print("\n".join(validation_table(losses, args.frameworks)))
        return 0
    if args.probe == "embedding-masks":
        stats = {}
        for framework in args.frameworks:
            dropped = embedding_drops(framework, hp, vocab, args.seed, draws, args.threads)
            stats[framework] = embedding_stats(dropped, hp["dropoute"])
            print(f"{framework}: done", flush=True)
        print(f"embedding dropout at the preset's rate {hp['dropoute']:g} over {vocab} word "
              f"types, {draws} draws a side (z: the difference over its binomial standard "
              f"error; chi2/df 1 +- {math.sqrt(2 / vocab):.3f} and r 0 +- "
              f"{1 / math.sqrt(draws * vocab):.4f} by chance)")
        print("\n".join(embedding_table(stats)))
        return 0
    weights = read_weights(args.weights[0])
    if args.probe == "gradient-noise":
        results = {f: gradient_moments(f, hp, streams, vocab, weights, args.seed, draws,
                                       args.threads, args.start) for f in args.frameworks}
        print(f"{draws} plain steps at lr 1 a side from the same weights, the window at "
              f"position {args.start}, zero states; |E g|^2 from {BATCHES} batches' means")
        print("\n".join(noise_table(results)))
        return 0
    if args.probe == "gradient":
        checks = {(f, seed): gradient_check(f, hp, streams, vocab, weights, seed, args.lr,
                                            args.threads, args.start)
                  for f in args.frameworks for seed in seeds}
        print(f"one step at lr {args.lr:g} without clip, decay, AR or TAR on the window at "
              f"position {args.start}, zero states; change = L(W1) - L(W); predicted = "
              f"-|W1 - W|^2 / lr; other masks: seed + {OTHER_MASKS}")
        print("\n".join(gradient_table(checks)))
        return 0
    results = {}
    for label in args.streams:
        only = STREAMS if label == "all" else (label,)
        results[label] = {f: mask_losses(f, hp, streams, vocab, weights, args.seed,
                                         draws, only, args.threads, args.start)
                          for f in args.frameworks}
        print(f"{label}: done", flush=True)
    print(f"training loss at lr 0 on the window at position {args.start}, zero states, "
          f"{draws} draws a side (z: the difference over its standard error)")
    print("\n".join(mask_table(results, args.frameworks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
