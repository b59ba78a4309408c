"""The frameworks page, its Welch t-test, the cost of a result, provenance splits, data-pipeline
files and the figures, on hand-made run files (tests/test_aggregate.py writes them)."""

import math
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_aggregate import make_run, stub_inventory

from mosbench.errors import MosbenchError
from mosbench.io import write_json
from mosbench.reporting.aggregate import aggregate
from mosbench.reporting.frameworks import EXACT, Sample, _compare
from mosbench.reporting.statistics import (
    adjust,
    equivalence,
    geometric_mean,
    loss_verdict,
    not_tested_reason,
    ratio_test,
    ratio_verdict,
    welch_test,
)


def test_welch_test_by_hand():
    # welch_test is SciPy's; these are the independent check, worked out on paper.
    # a = 1, 3 and b = 4, 6: both variances 2, squared standard errors 1 and 1, so
    # t = (2 - 5) / sqrt(2) and df = (1 + 1)^2 / (1^2/1 + 1^2/1) = 2. With 2 degrees of
    # freedom Student's t has a closed form: P(|T| > t) = 1 - t / sqrt(2 + t^2).
    result = welch_test([1.0, 3.0], [4.0, 6.0])
    t = -3 / math.sqrt(2)
    assert result.t == pytest.approx(t) and result.df == pytest.approx(2.0)
    assert result.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))  # 0.168
    half = 4.302653 * math.sqrt(2)  # t(0.975, 2) from a printed table
    assert (result.ci_low, result.ci_high) == pytest.approx((-3 - half, -3 + half), rel=1e-6)
    # unequal sizes and variances: a = 10, 12, 14 (var 4, n 3), b = 11, 11.5, 12, 12.5
    # (var 5/12, n 4): se^2 = 4/3 and 5/48; Welch-Satterthwaite
    # df = (4/3 + 5/48)^2 / ((4/3)^2 / 2 + (5/48)^2 / 3)
    result = welch_test([10.0, 12.0, 14.0], [11.0, 11.5, 12.0, 12.5])
    se_a, se_b = 4 / 3, 5 / 48
    assert result.t == pytest.approx(0.25 / math.sqrt(se_a + se_b))
    assert result.df == pytest.approx((se_a + se_b) ** 2 / (se_a ** 2 / 2 + se_b ** 2 / 3))
    assert result.df == pytest.approx(2.31529, rel=1e-5)


def test_welch_test_needs_two_seeds_a_side_and_some_spread():
    assert welch_test([1.0], [2.0, 3.0]) is None
    assert welch_test([2.0, 2.0], [2.0, 2.0]) is None
    assert not_tested_reason(1, 3, "tensorflow", "pytorch") == (
        "no test: tensorflow has 1 seed (a test needs 2 per framework)")
    assert not_tested_reason(0, 3, "tensorflow", "pytorch") == (
        "no test: tensorflow did not run this cell")


def test_ratio_test_is_welch_on_the_logarithms_with_hedges_g():
    # the ratio of geometric means, and SciPy's Welch test and interval on the logs
    base, other = [10.0, 11.0, 12.0], [8.0, 8.5, 9.2]
    result = ratio_test(base, other)
    logs = stats.ttest_ind(np.log(other), np.log(base), equal_var=False)
    interval = logs.confidence_interval()
    assert result.ratio == pytest.approx(stats.gmean(other) / stats.gmean(base))
    assert result.p_value == pytest.approx(logs.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (math.exp(interval.low), math.exp(interval.high)))
    # Hedges' g by hand: the pooled-sd standardised difference times 1 - 3 / (4 (n1+n2) - 9)
    lo, lb = np.log(other), np.log(base)
    pooled = math.sqrt((lo.var(ddof=1) + lb.var(ddof=1)) / 2)
    assert result.hedges_g == pytest.approx((lo.mean() - lb.mean()) / pooled * (1 - 3 / 15))
    assert ratio_test([1.0, 2.0], [0.0, 1.0]) is None  # no logarithm of 0
    assert ratio_test([1.0], [2.0, 3.0]).welch is None  # one seed: a ratio, no test


def test_verdicts_never_name_a_winner_without_the_adjusted_test():
    result = ratio_test([10.0, 11.0, 12.0], [8.0, 8.5, 9.2])  # p about 0.022
    assert ratio_verdict(result, "pytorch", "tensorflow", result.p_value).startswith(
        "pytorch lower than tensorflow by ")
    # the same test, adjusted above 0.05 in its family: no winner
    assert ratio_verdict(result, "pytorch", "tensorflow", 0.066) == "inconclusive (n = 3, 3)"
    slower = ratio_test([8.0, 8.5, 9.2], [10.0, 11.0, 12.0])
    assert ratio_verdict(slower, "pytorch", "tensorflow", slower.p_value).startswith(
        "tensorflow lower than pytorch by ")
    assert ratio_verdict(ratio_test([1.0], [2.0]), "pytorch", "tensorflow",
                         float("nan")) == "inconclusive (n = 1, 1)"


def test_adjustment_within_a_family_by_hand():
    # Holm: sorted p 0.01, 0.03, 0.04 times 3, 2, 1, made monotone: 0.03, 0.06, 0.06;
    # Benjamini-Hochberg: p * 3 / rank, made monotone from the top: 0.03, 0.04, 0.04
    p = [0.01, 0.04, float("nan"), 0.03]
    assert adjust(p, "holm")[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert adjust(p, "fdr_bh")[[0, 1, 3]] == pytest.approx([0.03, 0.04, 0.04])
    assert math.isnan(adjust(p, "holm")[2])  # an untested row stays untested


def test_geometric_mean_over_workloads():
    rng = np.random.default_rng(5)
    base, other = rng.lognormal(0.0, 0.1, 4), rng.lognormal(-0.2, 0.05, 3)
    # one workload: exactly SciPy's Welch interval and p-value on the logs
    one = geometric_mean([(base, other)])
    welch = stats.ttest_ind(np.log(other), np.log(base), equal_var=False)
    assert (one.ci_low, one.ci_high) == pytest.approx(
        tuple(math.exp(e) for e in welch.confidence_interval()))
    assert one.p_value == pytest.approx(welch.pvalue) and one.df == pytest.approx(welch.df)
    # the equal-weight geometric mean of the workloads' ratios
    second = (rng.lognormal(1.0, 0.1, 3), rng.lognormal(1.3, 0.1, 3))
    two = geometric_mean([(base, other), second])
    ratios = [stats.gmean(o) / stats.gmean(b) for b, o in ((base, other), second)]
    assert two.ratio == pytest.approx(stats.gmean(ratios)) and two.workloads == 2
    # the interval covers the true geometric mean about 95 % of the time (3 workloads of
    # 3 seeds a side, true log ratios -0.1, 0.2, 0.05: geometric mean exp(0.05))
    covered = 0
    for _ in range(400):
        samples = [(rng.lognormal(0, 0.2, 3), rng.lognormal(d, 0.1, 3))
                   for d in (-0.1, 0.2, 0.05)]
        mean = geometric_mean(samples)
        covered += mean.ci_low < math.exp(0.05) < mean.ci_high
    assert 0.9 < covered / 400 < 0.99
    assert geometric_mean([]) is None


def test_equivalence_and_a_difference_in_words():
    margin = math.log(1.01)
    same = equivalence("tensorflow", [6.000, 6.001, 5.999, 6.0005],
                       "pytorch", [6.0003, 5.9995, 6.001, 6.0], margin)
    assert same["verdict"] == "equivalent within ±1 % ppl"
    # adjusted above 0.05 in its family, the same TOST shows nothing
    assert loss_verdict(same, "tensorflow", "pytorch", p_tost=0.2, p_diff=0.9) == (
        "inconclusive (n = 4, 4)")
    apart = equivalence("tensorflow", [6.0, 6.01, 6.02], "pytorch", [5.9, 5.91, 5.915],
                        margin)
    assert apart["ci_high"] < 0 and apart["p_tost"] > 0.05
    assert apart["verdict"].startswith("pytorch lower than tensorflow by ")
    assert "% ppl [" in apart["verdict"]


def _inventory_stub(monkeypatch):
    stub_inventory(monkeypatch, lambda f: [("LSTM", "built in", None),
                                           ("Embedding", "built in", None),
                                           ("NT-ASGD", "written", 40),
                                           ("MoS head", "written", 30 + len(f))])


def _patch(path, **changes):
    data = pd.read_json(path, typ="series").to_dict()
    data.update(changes)
    write_json(path, data)


PPL = {"tensorflow": (60.0, 61.0, 62.5), "pytorch": (55.0, 56.0, 56.5)}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """PTB awd-lstm-mos: 3 seeds per framework on 1 GPU (PyTorch clearly lower ppl), on
    2 GPUs TensorFlow only, one seed each on the CPU; memory, latency and provenance.

    Aggregated once for the module (the tests read it and write elsewhere), the inventory
    stubbed while the module runs."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _inventory_stub(monkeypatch)
        yield _grid(tmp_path_factory.mktemp("grid"))


def _grid(tmp_path):
    files = []
    cells = [(f, s, 1) for f in PPL for s in (1, 2, 3)] + [("tensorflow", s, 2) for s in (1, 2)]
    cells += [(f, 1, 0) for f in PPL]
    for framework, seed, gpus in cells:
        ppl = PPL[framework][seed - 1]
        train, metrics = make_run(tmp_path / "runs", "ptb", "awd-lstm-mos", seed, gpus, ppl,
                                  ppl - 2, [80.0, 65.0, ppl], framework=framework,
                                  dynamic_valid_ppl=ppl - 8)
        fast = 1.3 if framework == "pytorch" else 1.0
        _patch(train, measurements={
            "tokens_per_s": fast * {0: 100, 1: 1000 + 10 * seed, 2: 1800 + 10 * seed}[gpus],
            "host_rss_peak_mb": 900.0 + seed, "allocator_peak_mb": 500.0 * fast + seed,
            "first_step_s": 3.0 * fast + 0.1 * seed, "time_to_first_step_s": 10.0 + seed,
            "gpu_memory_peak_mb": 2000.0 / fast + seed,
            "data_stream_tokens_per_s": 1e5, "data_cache_memory_tokens_per_s": 5e5},
            provenance={"framework": framework, "framework_version": "2.21.0"
                        if framework == "tensorflow" else "2.13.0",
                        "libraries": "keras 3.15.1" if framework == "tensorflow" else None,
                        "cuda_version": "12.8" if gpus else None, "cudnn_version": None,
                        "nvidia_driver": "570.1" if gpus else None,
                        "gpu_model": "NVIDIA H100" if gpus else None, "gpu_count": gpus,
                        "cpu_model": "AMD EPYC 9654", "hostname": "node1",
                        "python_version": "3.11.7", "git_commit": "abc1234",
                        "git_dirty": False})
        files.append((train, metrics))
    train_files, metrics_files = (list(f) for f in zip(*files, strict=True))
    reference = {"ptb": {"awd-lstm-mos": {"valid_ppl": 56.54, "dynamic_valid_ppl": 48.33,
                                          "dynamic_test_ppl": 47.69, "source": "paper"}}}
    prices = {"currency": "USD", "gpu_hour": 3.6, "cpu_hour": 0.36}
    paths = aggregate(train_files, metrics_files, tmp_path / "out", reference=reference,
                      prices=prices, comparison={"frameworks": list(PPL)})  # the two it planted
    return paths, train_files, metrics_files


def _rows(paths):
    table = pd.read_csv(paths["frameworks_csv"])
    data = table["question"] == "Data loading"
    assert table.loc[data, "gpus"].isna().all() and set(table.loc[data, "device"]) == {"cpu",
                                                                                      "gpu"}
    table = table[~data].astype({"gpus": int})
    assert (table["device"] == table["gpus"].map({0: "cpu", 1: "gpu", 2: "gpu"})).all()
    return table.set_index(["gpus", "figure"])


def test_frameworks_page_tests_perplexity_against_scipy(grid):
    paths, _, _ = grid
    runs = pd.read_csv(paths["runs"])
    gpu = runs[runs["gpus"] >= 1]  # one processor: perplexity pooled over 1 and 2 GPUs
    one_gpu = runs[runs["gpus"] == 1]
    rows = _rows(paths)
    for figure, cell in (("best_valid_ppl", gpu), ("test_ppl", gpu),
                         ("dynamic_valid_ppl", gpu), ("allocator_peak_mb", one_gpu),
                         ("first_step_s", one_gpu)):
        row = rows.loc[(1, figure)]
        tf, pt = (np.log(cell.loc[cell["framework"] == f, figure]) for f in PPL)
        expected = stats.ttest_ind(pt, tf, equal_var=False)  # compared - baseline, on logs
        assert row["p_value"] == pytest.approx(expected.pvalue), figure
        assert row["t"] == pytest.approx(expected.statistic), figure
        assert row["ratio"] == pytest.approx(math.exp(pt.mean() - tf.mean())), figure
        assert row["ratio_ci_low"] == pytest.approx(
            math.exp(expected.confidence_interval().low)), figure
        assert (row["baseline"], row["framework"]) == ("tensorflow", "pytorch")
    pooled = rows.loc[(1, "best_valid_ppl")]
    assert pooled["tensorflow_n"] == 5 and pooled["pytorch_n"] == 3
    assert pooled["pooled_gpus"] == "1, 2" and (2, "best_valid_ppl") not in rows.index
    # primary endpoints at the full-training count (1 GPU): test ppl and the allocator's
    # peak, Holm over the two (time to target has no TensorFlow seed that reached it)
    primary = rows[(rows["endpoint"] == "primary") & rows["p_value"].notna()]
    assert sorted(primary.index) == [(1, "allocator_peak_mb"), (1, "test_ppl")]
    primary = primary.sort_values("p_value")
    low, high = primary["p_value"]
    assert primary["p_adjusted"].tolist() == pytest.approx([2 * low, max(2 * low, high)])
    assert set(primary["adjustment"]) == {"Holm over 2 tests"}
    # secondary: Benjamini-Hochberg within a question; derived rows are not tested again
    assert rows.loc[(1, "best_valid_ppl"), "adjustment"].startswith("Benjamini-Hochberg")
    for figure, source in (("tokens_per_s", "epoch_time_s"), ("cost_per_epoch", "epoch_time_s"),
                           ("total_cost", "total_time_s")):
        row = rows.loc[(1, figure)]
        assert row["derived_from"] == source and math.isnan(row["p_value"])
        assert row["adjustment"].startswith("derived")
    assert "better" not in rows
    test_ppl = rows.loc[(1, "test_ppl")]
    assert test_ppl["significant"] and test_ppl["equivalence"] == test_ppl["verdict"]
    assert test_ppl["verdict"].startswith("pytorch lower than tensorflow by ")
    assert test_ppl["margin_nats"] == pytest.approx(math.log(1.01))
    assert test_ppl["p_tost"] > 0.05  # 8 % apart: not equivalent within 1 %
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    d = rows.loc[(1, "best_valid_ppl"), "log_difference"]
    assert f"- valid ppl (pooled over 1, 2 GPUs), pytorch − tensorflow: {d:+.4f} nats " in text
    assert ("| Perplexity | valid ppl (pooled over 1, 2 GPUs) | 60.90 ± 1.02 (5) | "
            "55.83 ± 0.76 (3) | pytorch | 0.917 [0.892, 0.943] |") in text
    assert text.index("## Data loading") < text.index("## ptb · awd-lstm-mos · CPU")
    assert text.index("## ptb · awd-lstm-mos · CPU") < text.index("## Compile and start-up")
    assert "| ptb | awd-lstm-mos | 1 | pytorch vs tensorflow | 3.20 / 4.10 | 1.28 [" in text
    # ease of use side by side: 2 built in, 2 written and their lines per framework
    assert "| tensorflow | 2 | 2 | 80 |" in text and "| pytorch | 2 | 2 | 77 |" in text


def test_verdict_page(grid):
    paths, _, _ = grid
    text = paths["verdict_md"].read_text(encoding="utf-8")
    assert text.startswith("# Verdict")
    gpu = text[text.index("## NVIDIA H100 · 1 GPU"):]
    assert "| ptb | awd-lstm-mos | pytorch vs tensorflow |" in gpu
    # significant after Holm: bold in Markdown; the memory ratio 1.30 and the test ppl
    assert "| **1.30 [1.29, 1.30]** |" in gpu
    assert "| **pytorch lower than tensorflow by 8.60 % ppl [5.93, 11.19]** |" in gpu
    line = next(li for li in gpu.splitlines() if li.startswith("| geometric mean"))
    assert "| 1 workload | pytorch vs tensorflow |" in line and "(1 of 1 workload)" in line
    cpu = text[text.index("## AMD EPYC 9654 · CPU"):text.index("## NVIDIA H100")]
    assert "inconclusive (n = 1, 1)" in cpu and "**" not in cpu  # one seed: nothing shown
    page = paths["verdict_html"].read_text(encoding="utf-8")
    assert page.count('class="verdict"') == 2  # one Styler table per processor
    assert page.count(" better") + page.count(" worse") >= 3  # the coloured cells only


def test_a_baseline_from_the_config_and_a_third_framework(grid, tmp_path):
    # every framework against run.baseline_framework: here pytorch, and a third engine
    _, train_files, metrics_files = grid
    paths = aggregate(train_files, metrics_files, tmp_path / "again", comparison={
        "frameworks": ["tensorflow", "pytorch", "jax"], "baseline": "pytorch",
        "primary_gpus": 1, "margins": {"awd-lstm-mos": math.log(1.05)}})
    table = pd.read_csv(paths["frameworks_csv"])
    table = table[table["question"] != "Data loading"]
    assert set(zip(table["baseline"], table["framework"], strict=True)) == {
        ("pytorch", "tensorflow"), ("pytorch", "jax")}
    row = table[(table["gpus"] == 1) & (table["figure"] == "test_ppl")
                & (table["framework"] == "tensorflow")].iloc[0]
    assert row["ratio"] > 1 and row["margin_nats"] == pytest.approx(math.log(1.05))
    assert row["verdict"].startswith("pytorch lower than tensorflow by ")
    jax = table[table["framework"] == "jax"]
    assert (jax["jax_reason"] == "not run").all() and jax["p_value"].isna().all()
    assert {"pytorch_n", "tensorflow_n", "jax_n"} <= set(table.columns)
    text = paths["verdict_md"].read_text(encoding="utf-8")
    assert "| jax vs pytorch |" in text and "| tensorflow vs pytorch |" in text
    with pytest.raises(MosbenchError, match=r"run.baseline_framework.*allowed: \['tensorflow'"):
        aggregate(train_files, metrics_files, tmp_path / "bad",
                  comparison={"frameworks": ["tensorflow"], "baseline": "pytorch"})


def test_gpu_memory_headline_is_the_allocator_and_nvml_is_secondary(grid):
    # The allocators' peaks (summed over replicas/devices) compare like with like; NVML's
    # figure, with CUDA contexts and cached memory, follows it and says it is secondary.
    paths, _, _ = grid
    rows = _rows(paths)
    allocator, nvml = rows.loc[(1, "allocator_peak_mb")], rows.loc[(1, "gpu_memory_peak_mb")]
    assert allocator["measure"] == (
        "GPU memory peak, framework allocator, summed over replicas/devices (MiB)")
    assert nvml["measure"] == (
        "GPU memory reserved by the driver, secondary (NVML, job's processes; MiB)")
    assert (allocator["endpoint"], nvml["endpoint"]) == ("primary", "secondary")
    assert allocator["verdict"].startswith("tensorflow lower than pytorch by ")
    assert nvml["verdict"].startswith("pytorch lower than tensorflow by ")
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    cell = text[text.index("## ptb · awd-lstm-mos · 1 GPU"):]
    assert 0 < cell.index("| Hardware use | GPU memory peak, framework allocator") < cell.index(
        "| Hardware use | GPU memory reserved by the driver, secondary")
    assert "GPU memory: the headline is the framework allocator's peak" in text


def test_frameworks_page_says_why_a_cell_is_empty(grid):
    paths, _, _ = grid
    rows = _rows(paths)
    two = rows.loc[(2, "epoch_time_s")]  # TensorFlow only
    assert two["pytorch_reason"] == "not run" and math.isnan(two["p_value"])
    assert two["note"] == "no value from pytorch"
    assert two["verdict"] == "untested: no value from pytorch"
    cpu = rows.loc[(0, "best_valid_ppl")]  # one seed each
    assert cpu["note"] == ("tensorflow has 1 seed and pytorch has 1 seed (a test needs 2 per "
                           "framework)")
    assert cpu["verdict"] == "inconclusive (n = 1, 1)" and not cpu["significant"]
    assert rows.loc[(0, "efficiency"), "tensorflow_reason"] == "CPU job: no multi-GPU scaling"
    assert rows.loc[(2, "efficiency"), "tensorflow_mean"] == pytest.approx(
        100 * (1815 / 1020) / 2)
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    assert "| Perplexity | valid ppl | 60.00 (1 seed: no std) | 55.00 (1 seed: no std) |" in text
    assert "– (tensorflow has 1 seed and pytorch has 1 seed" in text
    assert ("| Time per epoch | epoch time (s) | 3.00 ± 0 (2) | not run | pytorch | – | "
            "– (no value from pytorch) |") in text
    assert ("- valid ppl, pytorch vs tensorflow: no test: tensorflow has 1 seed and pytorch "
            "has 1 seed") in text


def test_cost_of_a_result(grid):
    paths, _, _ = grid
    runs = pd.read_csv(paths["runs"]).set_index(["framework", "gpus", "seed"])
    # make_run: epochs of 2, 3, 4 s; target 58.24 (published 56.54 + 3 %, rounded up):
    # pytorch's seeds (55, 56, 56.5) reach it at epoch 3 (9 s of training); tensorflow's
    # (60 and worse) never do
    one = runs.loc[("pytorch", 1, 1)]
    assert one["target_valid_ppl"] == 58.24 and one["epochs_to_target"] == 3
    assert one["time_to_target_s"] == pytest.approx(9.0)
    assert one["cost_to_target"] == pytest.approx(9.0 / 3600 * 3.6)
    assert one["total_time_s"] == pytest.approx(10.0)  # train_time_s only: nothing else timed
    assert one["total_cost"] == pytest.approx(10.0 / 3600 * 3.6)
    assert runs.loc[("tensorflow", 2, 1), "total_cost"] == pytest.approx(10 / 3600 * 7.2)
    tf = runs.loc[("tensorflow", 1, 1)]
    assert math.isnan(tf["time_to_target_s"])
    assert "time_to_target_s: target valid ppl 58.24 not reached in 3 epochs (best 60.00)" in (
        tf["absent"])
    assert "eval_time_s: metrics.json has no result_eval_s" in tf["absent"]
    assert "eval_job_wall_s: the aggregate was not given the evaluate jobs' benchmark files" in (
        tf["absent"])
    table = pd.read_csv(paths["result_cost_csv"]).set_index(["framework", "gpus"])
    assert table.loc[("pytorch", 1), "n_reached"] == 3
    assert table.loc[("tensorflow", 1), "n_reached"] == 0
    text = paths["result_cost_md"].read_text(encoding="utf-8")
    assert "| ptb | awd-lstm-mos | 1 | pytorch | 3 | 10.0 ± 0 | – | – | 10.0 ± 0 |" in text
    assert "| 58.24 | 3 of 3 | 9.00 ± 0 |" in text
    page = paths["frameworks_md"].read_text(encoding="utf-8")
    assert "| 9.00 ± 0 (3 of 3 seeds reached the target) |" in page
    assert ("0 of 3 seeds reached the target; absent: target valid ppl 58.24 not reached in 3 "
            "epochs (best 60.00)") in page


def test_evaluation_time_of_the_result_and_the_evaluate_job(tmp_path, monkeypatch):
    _inventory_stub(monkeypatch)
    train, metrics = make_run(tmp_path, "ptb", "lstm", 1, 2, 90.0, 85.0, [120.0, 90.0],
                              framework="pytorch", result_eval_s=12.5)
    bench = tmp_path / "benchmarks" / "evaluate" / "pytorch" / "ptb" / "lstm" / "seed1-gpus2.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n30.5\t0:00:30\t900\n")
    reference = {"ptb": {"lstm": {"target_valid_ppl": 100.0, "valid_ppl": 86.2,
                                  "source": "Zaremba"}}}
    paths = aggregate([train], [metrics], tmp_path / "out", reference=reference,
                      prices={"currency": "EUR", "gpu_hour": 2.0, "cpu_hour": 0.1},
                      evaluate_benchmarks=[bench])
    row = pd.read_csv(paths["runs"]).iloc[0]
    # the evaluation the result needs (metrics.json) is in the cost; the job's wall time
    # (its own measurements, start-up) is shown beside it
    assert row["eval_time_s"] == 12.5 and row["eval_job_wall_s"] == 30.5
    assert row["total_time_s"] == pytest.approx(22.5)
    assert row["total_cost"] == pytest.approx(22.5 / 3600 * 4.0)
    assert row["target_valid_ppl"] == 100.0  # the config's target before the published one
    assert row["epochs_to_target"] == 2 and row["time_to_target_s"] == pytest.approx(5.0)
    published = pd.read_csv(paths["published_csv"])
    assert published["metric"].tolist() == ["valid_ppl"]  # a target is not published
    bad = bench.with_name("whatever.tsv")
    bad.write_text("s\n1\n")
    with pytest.raises(MosbenchError, match="whatever.tsv: its path should end in"):
        aggregate([train], [metrics], tmp_path / "out", evaluate_benchmarks=[bad])


def test_published_rows_say_why_ours_is_missing(grid):
    paths, _, _ = grid
    published = pd.read_csv(paths["published_csv"])
    one = published[(published["gpus"] == 1) & (published["framework"] == "pytorch")]
    assert one["metric"].tolist() == ["valid_ppl", "dynamic_valid_ppl", "dynamic_test_ppl"]
    dynamic = one.set_index("metric")
    assert dynamic.loc["dynamic_valid_ppl", "ours_mean"] == pytest.approx(55.83 - 8, abs=0.01)
    assert dynamic.loc["dynamic_valid_ppl", "difference"] == pytest.approx(
        55.8333 - 8 - 48.33, abs=1e-3)
    assert math.isnan(dynamic.loc["dynamic_test_ppl", "ours_mean"])
    assert "dynamic_eval block" in dynamic.loc["dynamic_test_ppl", "note"]
    text = paths["published_md"].read_text(encoding="utf-8")
    assert "| dynamic_test_ppl | 3 | – (no run of this cell reported it: evaluate computes" in (
        text)
    summary = pd.read_csv(paths["summary_csv"])
    assert summary["dynamic_valid_ppl_mean"].notna().all()


def test_runs_on_different_gpus_are_not_averaged(tmp_path, monkeypatch):
    _inventory_stub(monkeypatch)
    files = []
    for seed, gpu in ((1, "NVIDIA A100"), (2, "NVIDIA A100"), (3, "NVIDIA H100"), (4, None)):
        train, metrics = make_run(tmp_path / "runs", "ptb", "lstm", seed, 1, 80.0 + seed,
                                  78.0 + seed, [90.0, 80.0 + seed])
        if gpu:
            _patch(train, provenance={"framework": "tensorflow", "framework_version": "2.21.0",
                                      "keras_version": "3.15.1", "gpu_model": gpu,  # older
                                      "cpu_model": "Xeon", "git_dirty": True})
        files.append((train, metrics))
    train_files, metrics_files = (list(f) for f in zip(*files, strict=True))
    paths = aggregate(train_files, metrics_files, tmp_path / "out")
    runs = pd.read_csv(paths["runs"])
    assert {"framework_version", "libraries", "cuda_version", "cudnn_version",
            "nvidia_driver", "gpu_model", "gpu_count", "cpu_model", "hostname",
            "python_version", "git_commit", "git_dirty"} <= set(runs.columns)
    assert runs.set_index("seed").loc[3, "gpu_model"] == "NVIDIA H100"
    summary = pd.read_csv(paths["summary_csv"]).set_index("environment")
    assert len(summary) == 3
    a100 = "NVIDIA A100; tensorflow 2.21.0; keras 3.15.1"  # an older run's keras_version read
    assert summary.loc[a100, "n_seeds"] == 2
    assert summary.loc[a100, "best_valid_ppl_mean"] == pytest.approx(81.5)  # seeds 1, 2
    assert summary.loc["NVIDIA H100; tensorflow 2.21.0; keras 3.15.1", "n_seeds"] == 1
    assert summary.loc["unknown", "n_seeds"] == 1  # a train.json without provenance
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "| dataset | model | gpus | framework | env | seeds |" in text
    assert ("- ptb / lstm / 1 / tensorflow: split into 3 rows, not averaged, because its seeds "
            "ran on different hardware or library versions (seeds 1, 2 on " + a100) in text
    assert "- E1: " + a100 in text
    page = paths["frameworks_md"].read_text(encoding="utf-8")
    assert "## Seeds not averaged together" in page
    assert "## ptb · lstm · 1 GPU (NVIDIA A100)" in page
    scaling = pd.read_csv(paths["scaling_csv"])
    assert len(scaling) == 3  # one curve per environment


def test_data_loading_comes_from_the_data_pipeline_files(tmp_path, monkeypatch):
    _inventory_stub(monkeypatch)
    files = []
    for framework in ("tensorflow", "pytorch"):
        for gpus in (0, 1):
            train, metrics = make_run(tmp_path / "runs", "ptb", "lstm", 1, gpus, 80.0, 78.0,
                                      [90.0, 80.0], framework=framework)
            _patch(train, measurements={"data_stream_tokens_per_s": 1.0,  # old figure: ignored
                                        "tokens_per_s": 500.0})
            files.append((train, metrics))
    pipeline = []
    for framework, speed in (("tensorflow", 2e6), ("pytorch", 3e6)):
        pipeline.append(tmp_path / "dp" / framework / "ptb" / "cpu" / "data_pipeline.json")
        write_json(pipeline[-1], {
            "framework": framework, "dataset": "ptb", "device": "cpu",
            "data_preprocess_s": 1.5, "data_parquet_load_s": 0.05,
            "data_stream_tokens_per_s": speed, "data_cache_memory_tokens_per_s": 4 * speed,
            "data_cache_file_tokens_per_s": None,
            "absent": {"data_cache_file_tokens_per_s": "no scratch disk"},
            "provenance": {"framework": framework}})
    train_files, metrics_files = (list(f) for f in zip(*files, strict=True))
    paths = aggregate(train_files, metrics_files, tmp_path / "out",
                      data_pipeline_files=pipeline,
                      comparison={"frameworks": ["tensorflow", "pytorch"]})
    runs = pd.read_csv(paths["runs"]).set_index(["framework", "gpus"])
    assert runs.loc[("pytorch", 0), "data_stream_tokens_per_s"] == 3e6
    assert math.isnan(runs.loc[("pytorch", 1), "data_stream_tokens_per_s"])  # no gpu file
    assert "no data-pipeline measurement for pytorch/ptb/gpu" in runs.loc[("pytorch", 1),
                                                                           "absent"]
    assert "data_cache_file_tokens_per_s: no scratch disk" in runs.loc[("pytorch", 0), "absent"]
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "Measured once per framework, data set and device" in text
    assert "| ptb | cpu | pytorch | 1.50 | 0.0500 | 3,000,000 | 1.2e+07 |" in text
    page = paths["frameworks_md"].read_text(encoding="utf-8")
    assert ("| Data loading | streaming from Parquet, tokens/s | 2,000,000 | 3,000,000 "
            "| pytorch | 1.50 |") in page
    assert "| Data loading | memory cache over streaming (×) | 4.00 | 4.00 | pytorch | 1.00 |" in (
        page)
    assert "### ptb · gpu" in page and "no data-pipeline measurement" in page
    bad = tmp_path / "bad.json"
    write_json(bad, {"framework": "pytorch", "dataset": "ptb", "device": "tpu"})
    with pytest.raises(MosbenchError, match=r"device 'tpu'; allowed: \['cpu', 'gpu'\]"):
        aggregate(train_files, metrics_files, tmp_path / "out", data_pipeline_files=[bad])


def _ink(path):
    """The share of pixels that are not the white background."""
    image = matplotlib.image.imread(path)[..., :3]
    return float((image.min(axis=-1) < 0.95).mean())


def test_no_figure_is_blank_and_each_is_legible(grid):
    paths, _, _ = grid
    for name in ("valid_ppl_png", "scaling_png", "memory_png", "latency_png",
                 "result_cost_png"):
        image = matplotlib.image.imread(paths[name])
        height, width = image.shape[:2]
        assert height >= 400 and width >= 800, name  # 110 dpi: at least ~7 x 3.6 inches
        assert _ink(paths[name]) > 0.03, name  # lines, bars and points, not text alone


TF_UNTIMED = ("TensorFlow traces and optimises a step's graph within the step's first call, "
              "whose time (first_step_s) cannot be split from running the step")
EAGER = "PyTorch runs eagerly: the engine compiles nothing"
# (framework, gpus): per seed 1-3, (compiles, compile_s) or the reason the figure is absent.
# 1 GPU: both counts the same over seeds, a TensorFlow-like side that times its compiles;
# 2 GPUs: counts with a retrace or two, TensorFlow's seconds absent; CPU: a JAX-like baseline
# that gives no count.
COMPILE_RUNS = {
    ("jax", 1): [(14, 20.5), (14, 21.0), (14, 21.5)],
    ("tensorflow", 1): [(9, 30.0), (9, 31.0), (9, 32.5)],
    ("pytorch", 1): [(EAGER, EAGER)] * 3,
    ("jax", 2): [(14, 20.0), (15, 22.0), (14, 21.0)],
    ("tensorflow", 2): [(9, TF_UNTIMED), (9, TF_UNTIMED), (10, TF_UNTIMED)],
    ("jax", 0): [("the jax engine does not count its compiles",) * 2] * 3,
    ("tensorflow", 0): [(9, TF_UNTIMED)] * 3,
}


@pytest.fixture(scope="module")
def compile_grid(tmp_path_factory):
    """ptb lstm, 3 seeds a cell (COMPILE_RUNS), JAX the baseline of three frameworks."""
    tmp_path = tmp_path_factory.mktemp("compiles")
    files = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        _inventory_stub(monkeypatch)
        for (framework, gpus), seeds in COMPILE_RUNS.items():
            for seed, figures in enumerate(seeds, start=1):
                train, metrics = make_run(tmp_path / "runs", "ptb", "lstm", seed, gpus, 90.0,
                                          85.0, [120.0, 90.0], framework=framework)
                measured = {"first_step_s": 2.0 + seed + (framework == "jax"),
                            "time_to_first_step_s": 8.0 + seed + 2 * (framework == "jax")}
                absent = {}
                for name, value in zip(("compiles", "compile_s"), figures, strict=True):
                    measured[name] = None if isinstance(value, str) else value
                    if isinstance(value, str):
                        absent[name] = value
                _patch(train, measurements=measured, absent=absent)
                files.append((train, metrics))
        train_files, metrics_files = (list(f) for f in zip(*files, strict=True))
        paths = aggregate(train_files, metrics_files, tmp_path / "out",
                          comparison={"frameworks": ["jax", "tensorflow", "pytorch"]})
    table = pd.read_csv(paths["frameworks_csv"])
    table = table[table["question"] == "Compile and start-up"].astype({"gpus": int})
    return paths, table.set_index(["gpus", "framework", "figure"])


def _seeds(framework, gpus, which):
    return [figures[which] for figures in COMPILE_RUNS[(framework, gpus)]]


def test_compile_count_shows_both_means_and_their_ratio_without_a_test(compile_grid):
    paths, rows = compile_grid
    same = rows.loc[(1, "tensorflow", "compiles")]  # 14, 14, 14 against 9, 9, 9
    assert (same["jax_mean"], same["tensorflow_mean"]) == (14, 9)
    assert (same["jax_std"], same["tensorflow_std"]) == (0, 0)
    assert same["ratio"] == pytest.approx(9 / 14)
    assert same["verdict"] == "untested: a count the engine decides (the same over seeds or nearly)"
    for column in ("p_value", "p_adjusted", "t", "df", "ratio_ci_low", "hedges_g"):
        assert math.isnan(same[column]), column
    assert not same["significant"] and same["endpoint"] == "secondary"
    assert same["family"].endswith(" · Compile and start-up")
    # a retrace or two on each side: Welch on the logs would give a p-value; none here, and
    # the ratio is of the means (not the geometric means a test's ratio is)
    spread = rows.loc[(2, "tensorflow", "compiles")]
    jax, tf = _seeds("jax", 2, 0), _seeds("tensorflow", 2, 0)
    assert ratio_test(jax, tf).welch is not None  # testable, so the test could be wrong here
    assert math.isnan(spread["p_value"]) and spread["verdict"].startswith("untested: a count")
    assert spread["ratio"] == pytest.approx(np.mean(tf) / np.mean(jax))
    assert spread["ratio"] != pytest.approx(stats.gmean(tf) / stats.gmean(jax), rel=1e-6)
    # the baseline gives no count: its reason, no ratio
    cpu = rows.loc[(0, "tensorflow", "compiles")]
    assert math.isnan(cpu["ratio"]) and cpu["verdict"] == "untested: no value from jax"
    assert cpu["jax_reason"] == "absent: the jax engine does not count its compiles"
    assert cpu["tensorflow_mean"] == 9
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    assert ("| Compile and start-up | programs compiled per job (TensorFlow: tf.function "
            f"traces) | 14.0 ± 0 (3) | 9.00 ± 0 (3) | absent: {EAGER} | tensorflow | 0.643 | "
            "– | – | – | untested: a count the engine decides") in text
    assert ("| programs compiled per job (TensorFlow: tf.function traces) | absent: the jax "
            "engine does not count its compiles | 9.00 ± 0 (3) | not run | tensorflow | – |"
            ) in text
    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE)


def test_compile_figures_a_framework_does_not_give_show_its_reason(compile_grid):
    paths, rows = compile_grid
    for figure in ("compiles", "compile_s"):
        row = rows.loc[(1, "pytorch", figure)]
        assert row["pytorch_reason"] == f"absent: {EAGER}" and row["pytorch_n"] == 0
        assert row["verdict"] == "untested: no value from pytorch"
        assert math.isnan(row["ratio"]) and math.isnan(row["p_value"])
    assert rows.loc[(2, "tensorflow", "compile_s"), "tensorflow_reason"] == (
        f"absent: {TF_UNTIMED}")
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    assert (f"| Compile and start-up | compile time per job (s) | 21.0 ± 0.500 (3) | 31.2 ± "
            f"1.26 (3) | absent: {EAGER} | pytorch | – | – (no value from pytorch) |") in text
    assert (f"| compile time per job (s) | 21.0 ± 1.00 (3) | absent: {TF_UNTIMED} | not run "
            "| tensorflow | – |") in text


def test_compile_time_is_tested_within_its_question(compile_grid):
    paths, rows = compile_grid
    row = rows.loc[(1, "tensorflow", "compile_s")]
    jax, tf = np.log(_seeds("jax", 1, 1)), np.log(_seeds("tensorflow", 1, 1))
    expected = stats.ttest_ind(tf, jax, equal_var=False)
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["ratio"] == pytest.approx(math.exp(tf.mean() - jax.mean()))
    assert row["ratio_ci_low"] == pytest.approx(math.exp(expected.confidence_interval().low))
    assert row["verdict"].startswith("jax lower than tensorflow by ")
    # secondary: Benjamini-Hochberg over the question's tests of this comparison on this
    # processor (every GPU count: the first step, the job's start to it and compile time;
    # the count is none of them, nor is a side without figures)
    question = rows[rows["family"] == row["family"]]
    assert row["family"] == "tensorflow vs jax · unknown · Compile and start-up"
    tested = question[question["p_value"].notna()]
    assert sorted(tested.index) == sorted([
        (gpus, "tensorflow", figure) for gpus in (0, 1, 2)
        for figure in ("first_step_s", "time_to_first_step_s")] + [(1, "tensorflow", "compile_s")])
    assert tested["p_adjusted"].tolist() == pytest.approx(
        list(adjust(tested["p_value"], "fdr_bh")))
    assert row["adjustment"] == "Benjamini-Hochberg over 7 tests"
    assert row["p_adjusted"] > row["p_value"]
    assert (rows["endpoint"] == "secondary").all()
    # the start-up table: each side's mean count and compile time, and why one is absent
    text = paths["frameworks_md"].read_text(encoding="utf-8")
    start_up = text[text.index("## Compile and start-up"):]
    assert ("| compiles, baseline / compared | compile time (s), baseline / compared |"
            in start_up)
    assert "| ptb | lstm | 1 | tensorflow vs jax |" in start_up
    assert "| 14.0 / 9.00 | 21.0 / 31.2 |" in start_up
    assert "| ptb | lstm | 2 | tensorflow vs jax |" in start_up
    assert "| 14.3 / 9.33 | 21.0 / – |" in start_up
    assert f"- *compile time (s)*, tensorflow: absent: {TF_UNTIMED}" in start_up
    assert f"- *compiles*, pytorch: absent: {EAGER}" in start_up
    assert "- *compiles*, jax: absent: the jax engine does not count its compiles" in start_up
    verdict = paths["verdict_md"].read_text(encoding="utf-8")  # built from the same rows
    assert "| tensorflow vs jax |" in verdict and "compile" not in verdict


def test_a_count_whose_baseline_is_zero_has_no_ratio():
    # an engine that compiled nothing, against one that did: no ratio, no inf, no test
    samples = {"jax": Sample.of([0, 0, 0]), "tensorflow": Sample.of([9, 9, 9])}
    out, result = _compare(samples, "jax", "tensorflow", "compiles", None, EXACT["compiles"])
    assert result is None and math.isnan(out["ratio"]) and math.isnan(out["p_value"])
    assert out["note"] == "jax's mean is 0: no ratio"
    assert out["verdict"].startswith("untested: a count")
    out, _ = _compare({**samples, "jax": Sample.of([14, 14])}, "jax", "tensorflow",
                      "compiles", None, EXACT["compiles"])
    assert out["ratio"] == pytest.approx(9 / 14) and out["note"] == ""
