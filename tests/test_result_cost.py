"""The cost of a result: the target rule, what counts in a time to target and in a total,
and evaluate's split of its time into what the result needs and what the benchmark measures."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mosbench.evaluation.evaluate import _evaluation_seconds
from mosbench.reporting.result_cost import (
    TARGET_MARGIN_PCT,
    cost_of_results,
    cost_summary,
    rule_target,
    target_of,
)

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def test_every_published_model_declares_the_target_the_rule_gives():
    reference = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["reference"]
    declared = 0
    for dataset, models in reference.items():
        for model, block in models.items():
            if "valid_ppl" not in block:
                continue
            assert block["target_valid_ppl"] == rule_target(block["valid_ppl"]), (dataset, model)
            assert block["target_valid_ppl"] > block["valid_ppl"]
            declared += 1
    assert declared == 7
    assert rule_target(56.54) == 58.24 and rule_target(60.0) == 61.8  # up to 0.01, not past


def test_a_published_value_without_a_declared_target_gets_the_rule():
    reference = {"ptb": {"mos": {"valid_ppl": 56.54, "source": "paper"},
                         "lstm": {"valid_ppl": 86.2, "target_valid_ppl": 100.0, "source": "Z"}}}
    target, origin = target_of(reference, "ptb", "mos")
    assert target == pytest.approx(56.54 * (1 + TARGET_MARGIN_PCT / 100), abs=0.01)
    assert origin == "published 56.54 + 3 %: paper"
    assert target_of(reference, "ptb", "lstm") == (100.0, "config target: Z")
    none, why = target_of(reference, "wikitext2", "lstm")
    assert none is None and "neither target_valid_ppl nor a published valid_ppl" in why


def _run(history, **metrics):
    key = ("ptb", "mos", "pytorch", 1, 1)
    runs = pd.DataFrame([{**dict(zip(["dataset", "model", "framework", "seed", "gpus"], key,
                                     strict=True)),
                          "train_time_s": sum(h["epoch_time_s"] for h in history), **metrics}])
    return {key: (Path("train.json"), {"history": history})}, runs


def test_time_to_target_and_totals_count_validation_and_the_needed_evaluation():
    history = [{"epoch": 1, "valid_ppl": 70.0, "epoch_time_s": 10.0, "valid_time_s": 1.0},
               {"epoch": 2, "valid_ppl": 58.0, "epoch_time_s": 10.0, "valid_time_s": 1.5},
               {"epoch": 3, "valid_ppl": 57.0, "epoch_time_s": 10.0, "valid_time_s": 1.0}]
    train, runs = _run(history, result_eval_s=4.0)
    reference = {"ptb": {"mos": {"valid_ppl": 56.54}}}
    prices = {"gpu_hour": 3.6, "cpu_hour": 0.36}
    table, reasons = cost_of_results(train, runs, prices=prices, reference=reference,
                                     eval_seconds={("ptb", "mos", "pytorch", 1, 1): 99.0})
    row = table.iloc[0]
    # reached at epoch 2: two epochs of training and their two validation passes
    assert row["epochs_to_target"] == 2 and row["time_to_target_s"] == pytest.approx(22.5)
    assert row["valid_time_s"] == pytest.approx(3.5) and row["eval_time_s"] == 4.0
    # training, validation and the evaluation the result needs; the job's wall time apart
    assert row["total_time_s"] == pytest.approx(30.0 + 3.5 + 4.0)
    assert row["eval_job_wall_s"] == 99.0
    assert row["total_cost"] == pytest.approx(37.5 / 3600 * 3.6)
    assert row["eval_cost"] == pytest.approx(4.0 / 3600 * 3.6)
    assert not reasons
    summary = cost_summary(pd.concat([runs, table], axis=1), ["dataset", "model", "gpus",
                                                              "framework"])
    assert summary.loc[0, "n_reached"] == 1 and summary.loc[0, "n_seeds"] == 1


def test_runs_from_before_the_timings_say_what_the_totals_leave_out():
    history = [{"epoch": 1, "valid_ppl": 70.0, "epoch_time_s": 10.0}]
    train, runs = _run(history)
    table, reasons = cost_of_results(train, runs, reference={"ptb": {"mos": {
        "target_valid_ppl": 60.0}}})
    row = table.iloc[0]
    assert row["total_time_s"] == 10.0 and math.isnan(row["eval_time_s"])
    assert "were not timed" in reasons[(0, "valid_time_s")]
    assert "no result_eval_s" in reasons[(0, "eval_time_s")]
    assert reasons[(0, "time_to_target_s")] == ("target valid ppl 60 not reached in 1 epochs "
                                                "(best 70.00)")


def test_evaluate_separates_the_result_from_the_benchmarks_measurements():
    static = {"static_valid_s": 1.0, "static_test_s": 2.0, "measurement_s": 5.0, "rank_s": 7.0}
    assert _evaluation_seconds(static) == {"result_eval_s": 3.0, "measurement_eval_s": 12.0,
                                           "static_valid_s": 1.0, "static_test_s": 2.0}
    dynamic = {**static, "dynamic_valid_loss": 4.0, "dynamic_statistics_s": 10.0,
               "dynamic_valid_s": 20.0, "dynamic_test_s": 30.0}
    assert _evaluation_seconds(dynamic)["result_eval_s"] == 63.0
    # progress saved by code that did not time a stage: no total rather than a short one
    partial = {k: v for k, v in dynamic.items() if k != "dynamic_test_s"}
    assert _evaluation_seconds(partial)["result_eval_s"] is None
