"""Train and evaluate for real on a tiny corpus, tracked in a real MLflow store."""

import json
import os

import mlflow
import pandas as pd
import pytest

from mosbench.engines import FRAMEWORKS
from mosbench.engines.jax import compiled
from mosbench.errors import MosbenchError, TrainingPaused
from mosbench.evaluation.evaluate import evaluate, load_trained
from mosbench.training import checkpoint
from mosbench.training import train as train_module
from mosbench.training.train import train


def _train(tiny_config, data, out, framework="tensorflow", **overrides):
    hparams = dict(tiny_config["presets"]["tiny"]["lstm"], **overrides)
    return train(data, out, dataset="tiny", model_name="lstm", seed=3, gpus=0,
                 hparams=hparams, experiment="unit", config_snapshot=tiny_config,
                 framework=framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_then_evaluate_into_the_same_run(tiny_config, tiny_data, tmp_path, mlflow_store,
                                               framework):
    summary = _train(tiny_config, tiny_data, tmp_path / "train", framework)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    ppls = [r["valid_ppl"] for r in summary["history"]]
    assert ppls[-1] < 40  # better than a uniform guess over the 40-word vocabulary
    assert json.loads((tmp_path / "train" / "train.json").read_text()) == summary
    # the input's share of the steps, through the framework's own input path, and the first
    # read of the data from a cold page cache where the OS allows
    measured = summary["measurements"]
    assert 0 < measured["input_wait_s"] and 0 < measured["input_wait_fraction"] < 1
    assert measured["input_load_s"] > 0 and all(r["valid_time_s"] > 0
                                                for r in summary["history"])
    if hasattr(os, "posix_fadvise"):
        assert summary["input_load_page_cache"].startswith("posix_fadvise(POSIX_FADV_DONTNEED)")
    # the programs the engine compiled (TensorFlow: its steps' traces, untimed); PyTorch's
    # eager engine compiles none: absent, with its reason
    absent = summary["absent"]
    if framework == "pytorch":
        assert measured["compiles"] is None and measured["compile_s"] is None
        assert absent["compiles"] == absent["compile_s"] == ("PyTorch runs eagerly: the engine "
                                                             "compiles nothing")
    else:
        assert measured["compiles"] >= 1 and "compiles" not in absent
    if framework == "jax":
        assert measured["compile_s"] > 0 and "compile_s" not in absent
    if framework == "tensorflow":
        assert measured["compile_s"] is None
        assert absent["compile_s"].startswith("TensorFlow traces and optimises a step's graph")

    metrics = evaluate(tiny_data, tmp_path / "train", tmp_path / "eval" / "metrics.json",
                       model_name="lstm", hparams=tiny_config["presets"]["tiny"]["lstm"],
                       experiment="unit", framework=framework)
    assert metrics["run_id"] == summary["run_id"] and metrics["framework"] == framework
    # the best checkpoint is what evaluate scores
    assert metrics["best_valid_ppl"] == pytest.approx(min(ppls), rel=1e-4)
    assert 1 < metrics["optimal_ppl"] < metrics["test_ppl"]
    assert metrics["latency_ms_p95"] >= metrics["latency_ms_median"] > 0
    # what the result needs (no dynamic evaluation here) apart from the benchmark's own
    assert metrics["result_eval_s"] == pytest.approx(metrics["static_valid_s"]
                                                     + metrics["static_test_s"])
    assert metrics["static_test_s"] > 0 and metrics["measurement_eval_s"] > 0

    runs = mlflow.search_runs(experiment_names=["unit"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] == summary["run_id"] and run["status"] == "FINISHED"
    assert run["tags.mlflow.runName"] == f"{framework}-tiny-lstm-seed3-gpus0"
    assert run["tags.framework"] == framework and run["tags.seed"] == "3"
    assert run["tags.framework_version"] and run["params.framework"] == framework
    assert run["params.n_params"] == str(summary["n_params"])
    assert run["params.bptt"] == "20"
    assert run["metrics.test_ppl"] == pytest.approx(metrics["test_ppl"])
    assert run["metrics.measurements/input_wait_fraction"] == pytest.approx(
        measured["input_wait_fraction"])
    if framework == "pytorch":
        assert "metrics.measurements/compiles" not in run or pd.isna(
            run["metrics.measurements/compiles"])
        assert run["tags.absent.compiles"] == absent["compiles"]
    else:
        assert run["metrics.measurements/compiles"] == measured["compiles"]
    history = mlflow.MlflowClient().get_metric_history(summary["run_id"], "history/valid_ppl")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"])}
    assert {"config.yaml", "train.json", "metrics.json"} <= artifacts


def test_divergence_ends_the_job_marked_with_a_failed_run(tiny_config, tiny_data, tmp_path,
                                                         mlflow_store):
    # A NaN loss is an outcome, not bad input (tests/test_divergence.py): no retry, outputs
    # written and marked, the MLflow run FAILED.
    summary = _train(tiny_config, tiny_data, tmp_path / "train", init_range=3e38, epochs=1)
    assert summary["outcome"] == "diverged"
    assert summary["reason"].startswith("the training loss became ")
    assert "at epoch 1, step 1 (train phase" in summary["reason"]
    runs = mlflow.search_runs(experiment_names=["unit"])
    assert runs["status"].tolist() == ["FAILED"]
    assert json.loads((tmp_path / "train" / "train.json").read_text()) == summary


def test_more_gpus_than_the_machine_has(tiny_config, tiny_data, tmp_path, mlflow_store):
    with pytest.raises(MosbenchError, match="gpus=64 was asked for"):
        train(tiny_data, tmp_path, dataset="tiny", model_name="lstm", seed=1, gpus=64,
              framework="pytorch", hparams=tiny_config["presets"]["tiny"]["lstm"],
              experiment="unit")


def test_checkpoint_of_another_model_is_refused(tiny_config, tiny_data, tmp_path, mlflow_store):
    _train(tiny_config, tiny_data, tmp_path / "train", epochs=1)
    bigger = dict(tiny_config["presets"]["tiny"]["lstm"], emsize=24, nhid=24)
    with pytest.raises(MosbenchError, match="cannot load these weights"):
        load_trained(tmp_path / "train", "lstm", 40, bigger, "tensorflow")


def test_a_resumed_jobs_compiles_are_the_sum_over_its_launches(tiny_config, tiny_data, tmp_path,
                                                              mlflow_store, monkeypatch):
    # JAX, paused after its first step (a wall-time budget of ~0 s), then resumed to the end
    engines, load_engine = [], train_module.load_engine

    def recorded(*args, **kwargs):
        engines.append(load_engine(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(train_module, "load_engine", recorded)
    out = tmp_path / "train"

    def launch(wall_time_s=None):
        # each launch a new process, as Snakemake runs it: no programs from earlier ones
        monkeypatch.setattr(compiled, "_SHARED", {})
        return train(tiny_data, out, dataset="tiny", model_name="lstm", seed=3, gpus=0,
                     hparams=dict(tiny_config["presets"]["tiny"]["lstm"], epochs=1),
                     experiment="unit", framework="jax", wall_time_s=wall_time_s)

    with pytest.raises(TrainingPaused):
        launch(wall_time_s=1e-9)
    first = engines[0].compile_statistics()[0]
    assert first["compiles"] >= 1 and first["compile_s"] > 0  # its training step at least
    saved = json.loads((out / checkpoint.STATE).read_text())["compiles"]
    assert saved == [first["compiles"], pytest.approx(first["compile_s"])]

    summary = launch()
    second = engines[1].compile_statistics()[0]
    assert second["compiles"] >= 1  # the same programs again, and validation's
    measured = summary["measurements"]
    assert measured["compiles"] == first["compiles"] + second["compiles"]
    assert measured["compile_s"] == pytest.approx(first["compile_s"] + second["compile_s"])
    run = mlflow.search_runs(experiment_names=["unit"]).iloc[0]
    assert run["metrics.measurements/compiles"] == measured["compiles"]
