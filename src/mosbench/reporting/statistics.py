"""Whether two frameworks' figures differ: Welch's two-sample t-test over seeds.

Welch's test does not assume the two frameworks' seeds spread equally (a
framework's kernels can be more or less deterministic than the other's). The
statistic is t = (mean_a - mean_b) / sqrt(s_a²/n_a + s_b²/n_b), with the
Welch-Satterthwaite degrees of freedom; the p-value is two-sided and the
interval is for mean_a - mean_b.
"""

import statistics
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05


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
    return Welch(statistics.fmean(a) - statistics.fmean(b), float(result.statistic),
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


def verdict(result, name_a, name_b, what="perplexity", alpha=ALPHA):
    """A sentence a researcher reads: which is lower, or no significant difference."""
    if result.p_value >= alpha:
        return (f"no significant difference at {alpha:g} (p = {result.p_value:.3g})")
    lower, higher = (name_a, name_b) if result.difference < 0 else (name_b, name_a)
    return (f"{lower} has the lower {what}, significant at {alpha:g} "
            f"(p = {result.p_value:.3g}; {higher} is higher by "
            f"{abs(result.difference):.3g})")
