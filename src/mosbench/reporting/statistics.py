"""How two frameworks' figures are compared over seeds: the one implementation of the
frameworks page, the verdict page and ``benchmarks/fidelity.py``.

Every comparison is a framework against the study's baseline
(``run.baseline_framework``), never a fixed pair.

**Ratios on the log scale.** Times, money, memory and throughputs are
compared as the ratio of the compared framework's geometric mean over seeds
to the baseline's, with Welch's two-sample t-test (SciPy's ``ttest_ind``,
unequal variances) on the logarithms: the p-value tests ratio = 1, and the
interval of the difference of the mean logs, exponentiated, is the ratio's
95 % interval. We chose the t interval on log values over a bootstrap over
seeds: with the 2 to 10 seeds a study has, a bootstrap has a handful of
distinct resamples (3 with 2 seeds) and its percentile interval is far too
narrow, while the t interval widens honestly with few seeds; times are
right-skewed and multiplicative, which the log scale respects. The effect
size beside each test is Hedges' g on the same scale (statsmodels
``effectsize_smd``: the bias-corrected standardised mean difference).

**Perplexity on the per-token loss.** log(perplexity) is the mean per-token
loss, so the same test on log perplexity compares losses, not the skewed
perplexity. Beside the test of a difference, a two one-sided test (TOST,
statsmodels ``ttost_ind``, unequal variances) asks whether the two are
equivalent within a declared margin ±d nats (config
``statistics.equivalence_margin_pct``, per model; the default 1 % of
perplexity is log(1.01) = 0.00995 nats). Why 1 %: the MoS paper reports one
run per setting, and the reference code rerun by others (zihangdai/mos,
pull request 9) landed at 56.83 valid / 54.64 test perplexity against the
paper's 56.54 / 54.44, 0.5 % and 0.4 % apart: two runs of the same code on
the same data differ by about half a percent. A margin of twice that is the
smallest difference between frameworks that seed noise alone would not make;
below it, "equivalent" is the honest word. The verdict, in words:
"equivalent within ±1 % ppl" when the TOST rejects, "X lower than Y by
a % ppl [low, high]" when the test of a difference rejects, else
"inconclusive (n = ...)": never a winner without evidence.

**Declared endpoints and multiple testing.** Per workload (data set x model)
the primary endpoints are time and money to the target validation
perplexity, test perplexity (static and dynamic) and the allocator's peak
memory, at the study's full-training GPU count. Every other figure is
secondary. Figures that are another times a constant (money per epoch is
time per epoch times a price; tokens/s is tokens per epoch over time per
epoch) are *derived*: shown with their ratio, not tested a second time.
p-values are adjusted with statsmodels ``multipletests`` within a family: the
primary endpoints of one comparison on one kind of hardware form one family
(over every workload), each secondary question (time per epoch, prediction
time, ...) of one comparison on one hardware another. Primary families use
Holm's step-down method: the verdict page makes confirmatory claims ("X is
faster"), so the chance of any false claim among them (the family-wise error
rate) is held at 5 %; Holm does this under any dependence between the tests
(they share runs) and is never less powerful than Bonferroni. Secondary
families use Benjamini-Hochberg: they are exploratory rows read by the
dozen, where holding the expected share of false discoveries at 5 % keeps
power that family-wise control would spend; its guarantee holds under the
positive dependence tests sharing runs have. Adjusted and raw p-values are
shown side by side; intervals are per comparison (95 %, not simultaneous).

**Across workloads** (the verdict page, as AlgoPerf and MLPerf summarise a
benchmark): the geometric mean of a ratio over the workloads, each weighted
equally, with the t interval of the mean of the workloads' log ratios; its
variance is the sum of the workloads' (independent runs), and its degrees of
freedom are Welch-Satterthwaite's over every sample.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
DEFAULT_MARGIN_PCT = 1.0  # config statistics.equivalence_margin_pct.default
PRIMARY_METHOD = "holm"  # statsmodels multipletests: family-wise error rate
SECONDARY_METHOD = "fdr_bh"  # Benjamini-Hochberg: false discovery rate
METHOD_NAMES = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}


@dataclass(frozen=True)
class Welch:
    """The outcome of :func:`welch_test` for samples a and b."""

    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p_value: float
    ci_low: float  # the (1 - alpha) interval of the difference
    ci_high: float


def welch_test(a, b, alpha=ALPHA):
    """Two-sided Welch t-test of mean(a) = mean(b) (SciPy's ``ttest_ind`` with unequal
    variances); None when it cannot be computed.

    It needs two values on each side, and some spread: two samples whose seeds
    all agree exactly have no error to test against (returned as None too).
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
        return None
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=1 - alpha)
    if not np.isfinite(result.pvalue):
        return None
    return Welch(float(np.mean(a) - np.mean(b)), float(result.statistic),
                 float(result.df), float(result.pvalue), float(interval.low),
                 float(interval.high))


def not_tested_reason(n_a, n_b, name_a="a", name_b="b"):
    """Why :func:`welch_test` gave no result for samples of these sizes."""
    if n_a == 0 or n_b == 0:
        missing = [name for name, n in ((name_a, n_a), (name_b, n_b)) if n == 0]
        return f"no test: {' and '.join(missing)} did not run this cell"
    short = [f"{name} has {n} seed" for name, n in ((name_a, n_a), (name_b, n_b)) if n < 2]
    if short:
        return f"no test: {' and '.join(short)} (a test needs 2 per framework)"
    return "no test: no spread (every seed gave the same value)"


@dataclass(frozen=True)
class Ratio:
    """A framework against the baseline on the log scale (:func:`ratio_test`)."""

    ratio: float  # geometric mean of the compared / geometric mean of the baseline
    n: int  # the compared framework's seeds
    n_baseline: int
    welch: Welch | None = None  # of log(compared) - log(baseline); None: not testable
    hedges_g: float = float("nan")
    log_se2: float = float("nan")  # the squared standard error of the log ratio, Welch's

    @property
    def ci_low(self):
        return math.exp(self.welch.ci_low) if self.welch else float("nan")

    @property
    def ci_high(self):
        return math.exp(self.welch.ci_high) if self.welch else float("nan")

    @property
    def p_value(self):
        return self.welch.p_value if self.welch else float("nan")


def ratio_test(baseline, compared, alpha=ALPHA):
    """``compared`` against ``baseline`` (positive values, one per seed) on the log scale:
    the ratio of geometric means, Welch's test and interval of the log difference, Hedges' g.

    None when a side has no value or some value is not positive (no logarithm).
    """
    from statsmodels.stats.meta_analysis import effectsize_smd

    base = np.asarray([float(v) for v in baseline], float)
    other = np.asarray([float(v) for v in compared], float)
    if not (len(base) and len(other)) or (base <= 0).any() or (other <= 0).any():
        return None
    log_b, log_o = np.log(base), np.log(other)
    ratio = float(np.exp(log_o.mean() - log_b.mean()))
    welch = welch_test(log_o, log_b, alpha)
    if welch is None:
        return Ratio(ratio, len(other), len(base))
    sd_o, sd_b = log_o.std(ddof=1), log_b.std(ddof=1)
    g, _ = effectsize_smd(log_o.mean(), sd_o, len(log_o), log_b.mean(), sd_b, len(log_b))
    return Ratio(ratio, len(other), len(base), welch, float(g),
                 sd_o ** 2 / len(log_o) + sd_b ** 2 / len(log_b))


def margin_nats(pct):
    """An equivalence margin given as a share of perplexity (percent) in nats per token."""
    return math.log1p(pct / 100)


def ppl_change(diff):
    """A loss difference (nats per token) as the relative change of perplexity, in %."""
    return 100 * math.expm1(diff)


def equivalence(baseline, base_losses, name, losses, margin, level=1 - ALPHA):
    """``name``'s per-token losses against the baseline's: difference, interval, TOST, verdict.

    The difference is ``mean(losses) - mean(base_losses)`` in nats per token
    (negative: ``name`` lower); the interval is Welch's (SciPy); equivalence is
    the two one-sided Welch tests of statsmodels at +-``margin``, each at
    ``1 - level``. The verdict (:func:`loss_verdict`): "equivalent within +-m % ppl"
    when the TOST rejects, else "<lower side> lower than <other> by d % ppl
    [interval]" when the interval excludes 0, else "inconclusive (n = ...)".
    """
    from statsmodels.stats.weightstats import ttost_ind

    x, base = np.asarray(losses, float), np.asarray(base_losses, float)
    out = {"side": name, "baseline": baseline, "n": len(x), "n_baseline": len(base),
           "margin": margin, "diff": None, "ci_low": None, "ci_high": None, "p_diff": None,
           "p_tost": None}
    if len(x) and len(base):
        out["diff"] = float(x.mean() - base.mean())
    welch = welch_test(x, base, 1 - level)
    if welch is not None:
        p_tost, _, _ = ttost_ind(x, base, -margin, margin, usevar="unequal")
        out.update(ci_low=welch.ci_low, ci_high=welch.ci_high, p_diff=welch.p_value,
                   p_tost=float(p_tost))
    out["verdict"] = loss_verdict(out, baseline, name, 1 - level)
    return out


def lower_by(diff, ci_low, ci_high, name, baseline, unit="%"):
    """"A lower than B by x <unit> [low, high]" for a log difference ``name - baseline``:
    x = 1 - (A's / B's), the interval's ends mapped the same way."""
    sign = 1 if diff < 0 else -1
    lower, higher = (name, baseline) if sign == 1 else (baseline, name)
    by = sorted(-100 * math.expm1(sign * e) for e in (diff, ci_low, ci_high))
    return f"{lower} lower than {higher} by {by[1]:.2f} {unit} [{by[0]:.2f}, {by[2]:.2f}]"


def loss_verdict(c, baseline, name, alpha=ALPHA, p_diff=None, p_tost=None):
    """:func:`equivalence`'s outcome ``c`` in words; ``p_diff``/``p_tost``: the p-values
    adjusted for multiple testing, where the caller has them (else ``c``'s own)."""
    p_diff = c["p_diff"] if p_diff is None else p_diff
    p_tost = c["p_tost"] if p_tost is None else p_tost
    inconclusive = f"inconclusive (n = {c['n']}, {c['n_baseline']})"
    if p_tost is None or not np.isfinite(p_tost):  # fewer than two runs a side, or no spread
        return inconclusive
    if p_tost < alpha:
        return f"equivalent within ±{ppl_change(c['margin']):.2g} % ppl"
    if p_diff < alpha and (c["ci_low"] > 0 or c["ci_high"] < 0):
        return lower_by(c["diff"], c["ci_low"], c["ci_high"], name, baseline, "% ppl")
    return inconclusive


def ratio_verdict(result, name, baseline, p_adjusted, alpha=ALPHA):
    """A ratio's :func:`ratio_test` in words, significant only when ``p_adjusted`` < alpha."""
    if result is None or result.welch is None:
        n = (0, 0) if result is None else (result.n, result.n_baseline)
        return f"inconclusive (n = {n[0]}, {n[1]})"
    w = result.welch
    if p_adjusted < alpha and (w.ci_low > 0 or w.ci_high < 0):
        return lower_by(w.difference, w.ci_low, w.ci_high, name, baseline)
    return f"inconclusive (n = {result.n}, {result.n_baseline})"


def adjust(p_values, method):
    """statsmodels ``multipletests`` over the finite p-values of a family; NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=ALPHA, method=method)[1]
    return out


@dataclass(frozen=True)
class GeometricMean:
    """A ratio's geometric mean over workloads with its interval (:func:`geometric_mean`)."""

    ratio: float
    ci_low: float
    ci_high: float
    df: float
    workloads: int
    p_value: float = float("nan")  # of ratio = 1, with the same t distribution


def geometric_mean(samples, alpha=ALPHA):
    """The equal-weight geometric mean over workloads of compared / baseline ratios.

    ``samples``: per workload, (baseline values, compared values), each with 2 or
    more positive values. The estimate is exp of the mean of the workloads' log
    ratios (each the difference of mean logs). Its variance is the sum of the
    workloads' Welch variances over W², and its degrees of freedom the
    Welch-Satterthwaite approximation over all 2W samples (for one workload, exactly
    SciPy's Welch interval and p-value); the quantile is SciPy's t. None without a
    workload.
    """
    pieces = []  # per sample: (its share of the variance, its degrees of freedom)
    logs = []
    for baseline, compared in samples:
        log_b, log_o = np.log(np.asarray(baseline, float)), np.log(np.asarray(compared, float))
        logs.append(log_o.mean() - log_b.mean())
        pieces += [(x.var(ddof=1) / len(x), len(x) - 1) for x in (log_o, log_b)]
    if not logs:
        return None
    w = len(logs)
    variance = sum(v for v, _ in pieces) / w ** 2
    estimate = float(np.mean(logs))
    if variance == 0:
        return GeometricMean(math.exp(estimate), float("nan"), float("nan"), float("nan"), w)
    df = (sum(v for v, _ in pieces) ** 2) / sum(v ** 2 / d for v, d in pieces)
    se = math.sqrt(variance)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    return GeometricMean(math.exp(estimate), math.exp(estimate - half),
                         math.exp(estimate + half), float(df), w,
                         float(2 * stats.t.sf(abs(estimate) / se, df)))
