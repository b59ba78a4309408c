"""benchmarks/fidelity.py's statistics on planted numbers: a difference, none, too few runs.

Only the verdict part of the benchmark runs here (no training): per-seed
validation losses of two sides, compared with Welch's interval and the two
one-sided tests at the default margin of 1 % of perplexity.
"""

import importlib.util
import math
import re

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("statsmodels", reason="benchmarks/fidelity.py needs statsmodels")

SPEC = importlib.util.spec_from_file_location("fidelity", REPO / "benchmarks" / "fidelity.py")
fidelity = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fidelity)

MARGIN = math.log(1.01)  # the default: 1 % of perplexity
SPREAD = 0.002  # seed-to-seed spread of the loss, nats: about 0.2 % of perplexity


def losses(mean, n, seed):
    return mean + np.random.default_rng(seed).normal(0.0, SPREAD, n)


def test_a_planted_difference_names_the_lower_side_with_its_interval():
    base, other = losses(6.0, 5, 1), losses(6.0 - 0.05, 5, 2)  # about 4.9 % lower ppl
    c = fidelity.compare("tensorflow", base, "pytorch", other, MARGIN)
    assert c["diff"] < 0 and c["ci_high"] < 0
    found = c["verdict"]
    assert found.startswith("pytorch lower than tensorflow by ")
    by, low, high = map(float, re.findall(r"(\d+\.\d+)", found))
    assert low < by < high and low < 100 * -math.expm1(-0.05) < high


def test_the_baseline_can_be_the_lower_side():
    c = fidelity.compare("tensorflow", losses(6.0, 5, 3), "pytorch", losses(6.05, 5, 4), MARGIN)
    assert c["verdict"].startswith("tensorflow lower than pytorch by ")


def test_equal_sides_are_equivalent_within_the_margin():
    c = fidelity.compare("tensorflow", losses(6.0, 5, 5), "pytorch", losses(6.0, 5, 6), MARGIN)
    assert c["p_tost"] < 0.05
    assert c["verdict"] == "equivalent within ±1 % ppl"


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_seeds_are_inconclusive(n):
    # n = 2 with a wide spread: neither a difference nor equivalence can be shown
    base = losses(6.0, n, 7) if n == 1 else np.array([6.0, 6.03])
    other = losses(6.0, n, 8) if n == 1 else np.array([6.01, 5.99])
    c = fidelity.compare("tensorflow", base, "pytorch", other, MARGIN)
    assert c["verdict"] == f"inconclusive (n = {n}, {n})"


def test_the_margin_is_given_in_nats_or_as_a_share_of_perplexity():
    assert fidelity.margin_type("2%") == pytest.approx(math.log(1.02))
    assert fidelity.margin_type("0.01") == 0.01
    for bad in ("0", "-1%", "one"):
        with pytest.raises(Exception, match="margin|expected"):
            fidelity.margin_type(bad)
