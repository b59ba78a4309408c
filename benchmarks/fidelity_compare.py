"""Compare arms of fidelity runs that one ``fidelity.py`` table cannot hold side by side.

``fidelity.py`` compares frameworks under one mask setting. Its mask experiments
(``--masks``, ``--mask-sites``) compare one framework under several settings,
whose runs sit in different ``--results`` folders or were reported in
benchmarks/README.md as per-seed perplexities. This prints fidelity.py's own
comparison table (Welch's interval and the TOST at ``--margin``) for such arms,
the first arm the baseline.

Each ``--arm NAME=SOURCE``: SOURCE is a ``--results`` folder of fidelity.py
(every kept run in its ``runs/``, which must all be one side) or the per-seed
validation perplexities, comma-separated, as the README's tables give them,
the first at ``--first-seed`` and the rest at the seeds after it.

``--all-pairs`` adds every pair of arms (not only each against the first):
the paired difference over the seeds both arms have, Welch's p-value with
Holm's correction over the pairs, Tukey's HSD, and a one-way ANOVA of all arms;
and whether the arms spread alike over seeds (Brown-Forsythe: Levene's test
about the median, per pair with Holm's correction and over all arms), since a
random stream a seed does not reach narrows an engine's spread.

Usage::

    .venv/bin/python benchmarks/fidelity_compare.py \\
        --arm "tensorflow own=379.78,421.28,479.99" \\
        --arm "tensorflow, numpy at weight-drop=results/fidelity-weight-drop"
"""

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import comparison_table, margin_type, summarise  # noqa: E402

from mosbench.reporting.statistics import ALPHA, PRIMARY_METHOD, adjust, welch_test  # noqa: E402


def arm_records(name, source, first_seed=28):
    """fidelity.py's run records of one arm, its side renamed ``name``."""
    folder = Path(source)
    if folder.is_dir():
        runs = [json.loads(p.read_text())["record"] for p in sorted(folder.glob("runs/*.json"))]
        runs = [r for r in runs if r.get("status") == "ok"]
        if not runs:
            raise ValueError(f"--arm {name}: no finished run in {folder / 'runs'}")
        sides = {r["side"] for r in runs}
        if len(sides) > 1:
            raise ValueError(f"--arm {name}: {folder} holds runs of {', '.join(sorted(sides))}; "
                             "an arm is one side")
        return [{**r, "side": name} for r in runs]
    try:
        values = [float(v) for v in source.split(",")]
    except ValueError:
        raise ValueError(f"--arm {name}: {source!r} is neither a folder nor perplexities "
                         "separated by commas") from None
    if any(v <= 1 for v in values):
        raise ValueError(f"--arm {name}: perplexities are above 1, got {source!r}")
    return [{"side": name, "seed": first_seed + i, "status": "ok", "valid_loss": math.log(v)}
            for i, v in enumerate(values)]


def seed_span(seeds):
    """``28-39`` for consecutive seeds, else the seeds one by one."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def pair_rows(names, samples, by_seed):
    """Every pair of arms: paired over their common seeds, Welch with Holm, Tukey's HSD,
    and Brown-Forsythe's test of equal spread with Holm.

    ``samples``: each arm's validation losses; ``by_seed``: the same by seed, for pairing.
    Differences are the first arm's mean validation loss less the second's, in nats.
    """
    tukey = stats.tukey_hsd(*samples)
    tukey_ci = tukey.confidence_interval(confidence_level=1 - ALPHA)
    rows = []
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = names[i], names[j]
        common = sorted(by_seed[i].keys() & by_seed[j].keys())
        row = {"a": a, "b": b, "seeds": common, "paired": None,
               "sd_ratio": float(np.std(samples[i], ddof=1) / np.std(samples[j], ddof=1)),
               "welch": welch_test(samples[i], samples[j]),
               "tukey": (float(tukey.statistic[i, j]), float(tukey_ci.low[i, j]),
                         float(tukey_ci.high[i, j]), float(tukey.pvalue[i, j]))}
        d = np.array([by_seed[i][s] - by_seed[j][s] for s in common])
        if len(d) > 1 and np.ptp(d) > 0:
            test = stats.ttest_1samp(d, 0.0)
            ci = test.confidence_interval(confidence_level=1 - ALPHA)
            row["paired"] = (float(d.mean()), float(ci.low), float(ci.high),
                             float(test.pvalue), int((d < 0).sum()))
        row["spread_p"] = float(stats.levene(samples[i], samples[j], center="median").pvalue)
        rows.append(row)
    welch_p = [r["welch"].p_value if r["welch"] else float("nan") for r in rows]
    for row, q in zip(rows, adjust(welch_p, PRIMARY_METHOD), strict=True):
        row["holm"] = float(q)
    for row, q in zip(rows, adjust([r["spread_p"] for r in rows], PRIMARY_METHOD), strict=True):
        row["spread_holm"] = float(q)
    return rows


def pairs_table(records, names):
    samples = [np.array([r["valid_loss"] for r in records if r["side"] == n]) for n in names]
    by_seed = [{r["seed"]: r["valid_loss"] for r in records if r["side"] == n} for n in names]
    rows = pair_rows(names, samples, by_seed)
    lines = ["| pair (a - b) | seeds paired | paired diff (nats) [95 % CI] | paired p "
             "| a lower in | Welch p | Holm | Tukey HSD diff [95 % CI] | Tukey p "
             "| sd a / sd b | spread p | Holm |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["paired"] is None:
            paired = [f"{len(r['seeds'])} in common", "-", "-"]
        else:
            diff, low, high, p, lower = r["paired"]
            paired = [f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]", f"{p:.3f}",
                      f"{lower} of {len(r['seeds'])}"]
        welch = ["-", "-"] if r["welch"] is None else [f"{r['welch'].p_value:.3f}",
                                                       f"{r['holm']:.3f}"]
        diff, low, high, p = r["tukey"]
        lines.append(f"| {r['a']} - {r['b']} | {seed_span(r['seeds']) or '-'} | "
                     + " | ".join(paired + welch)
                     + f" | {diff:+.3f} [{low:+.3f}, {high:+.3f}] | {p:.3f} "
                     f"| {r['sd_ratio']:.2f} | {r['spread_p']:.3f} "
                     f"| {r['spread_holm']:.3f} |")
    anova = stats.f_oneway(*samples)
    spread = stats.levene(*samples, center="median")
    counts = ", ".join(str(len(x)) for x in samples)
    lines.append(f"one-way ANOVA of the {len(names)} arms (n {counts}): "
                 f"F {anova.statistic:.2f}, p {anova.pvalue:.3f}; their spreads alike "
                 f"(Brown-Forsythe): W {spread.statistic:.2f}, p {spread.pvalue:.3f}; paired: "
                 "scipy.stats.ttest_1samp of the per-seed differences; Welch: "
                 "scipy.stats.ttest_ind(equal_var=False), Holm over the pairs (statsmodels "
                 "multipletests); Tukey: scipy.stats.tukey_hsd; spread: "
                 "scipy.stats.levene(center='median') of the losses")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=SOURCE",
                        help="an arm: a fidelity.py --results folder or perplexities "
                             "v1,v2,...; the first is the baseline")
    parser.add_argument("--margin", type=margin_type, default=math.log(1.01),
                        help="equivalence margin, as fidelity.py's (default 1%%)")
    parser.add_argument("--first-seed", type=int, default=28,
                        help="the seed of a perplexity list's first value (default 28, "
                             "fidelity.py's)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="also compare every pair of arms (paired by seed, Welch with "
                             "Holm, Tukey's HSD, equal spread) and all arms at once (ANOVA, "
                             "equal spread)")
    args = parser.parse_args(argv)
    records, names = [], []
    for arm in args.arm:
        name, sep, source = arm.rpartition("=")
        if not sep or not name or name in names:
            parser.error(f"--arm {arm!r}: give NAME=SOURCE, each NAME once")
        try:
            records += arm_records(name, source, args.first_seed)
        except ValueError as exc:
            parser.error(str(exc))
        names.append(name)
    print("\n".join(comparison_table(summarise(records, names, args.margin), args.margin)))
    if args.all_pairs:
        if len(names) < 2 or any(sum(r["side"] == n for r in records) < 2 for n in names):
            parser.error("--all-pairs needs two arms or more, each of two seeds or more")
        print()
        print("\n".join(pairs_table(records, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
