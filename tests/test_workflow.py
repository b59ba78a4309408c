"""The real workflow, end to end, through the real `snakemake` and a real MLflow store."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_CONFIG
from mosbench import paths
from mosbench.data.tokenise import read_metadata
from mosbench.engines import FRAMEWORKS

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
OUTPUTS = tuple(paths.AGGREGATE_OUTPUTS.values())
PLOTS = [name for name in OUTPUTS if name.endswith(".png")]
GPU_FIGURES = ("allocator_peak_mb", "gpu_memory_peak_mb", "gpu_util_mean_pct",
               "gpu_power_mean_w")


def snakemake(workdir, *args, configfile=TINY_CONFIG):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # the tiny jobs last seconds
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_tracks_every_run(tmp_path):
    done = snakemake(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = tmp_path / "results"
    for name in OUTPUTS:
        assert (results / "aggregate" / name).stat().st_size > 0
    for rule in ("synthetic/tiny", "tokenise/tiny", "train/tensorflow/tiny/lstm/seed1-gpus0",
                 "train/pytorch/tiny/lstm/seed1-gpus0", "evaluate/pytorch/tiny/lstm/seed2-gpus0",
                 "evaluate/tensorflow/tiny/awd-lstm-mos/seed2-gpus0", "aggregate/aggregate"):
        assert (tmp_path / "logs" / f"{rule}.log").exists()
    for framework in FRAMEWORKS:
        assert (results / "train" / framework / "tiny" / "awd-lstm-mos" / "seed1-gpus0" /
                "model.weights.npz").stat().st_size > 0

    runs = pd.read_csv(results / "aggregate" / "runs.csv")
    # per model, a cell's frameworks side by side, then seeds
    assert runs["model"].tolist() == ["awd-lstm-mos"] * 4 + ["lstm"] * 4
    assert runs["framework"].tolist() == ["pytorch", "pytorch", "tensorflow", "tensorflow"] * 2
    assert runs["seed"].tolist() == [1, 2] * 4
    assert (runs["test_ppl"] > runs["optimal_ppl"]).all()
    lstm, mos = runs[runs["model"] == "lstm"], runs[runs["model"] == "awd-lstm-mos"]
    assert (lstm["best_valid_ppl"] < 40).all()  # learnt something: uniform guessing scores 40
    # the softmax bottleneck: a 16-dimensional softmax stays within rank 18, MoS does not
    assert (lstm["logprob_rank"] <= lstm["rank_bound"]).all() and (lstm["rank_bound"] == 18).all()
    vocab = read_metadata(results / "data" / "tiny" / "vocab.parquet")["vocab_size"]
    assert (mos["rank_bound"] == vocab).all()  # MoS: no bound below the vocabulary size
    # dynamic evaluation ran through evaluate() where the preset asks for it, and only there
    assert (mos["dynamic_test_ppl"] > 1).all() and (mos["dynamic_valid_ppl"] > 1).all()
    assert lstm["dynamic_test_ppl"].isna().all()
    summary = (results / "aggregate" / "summary.md").read_text()
    assert "± " in summary and "log-prob rank" in summary
    for framework in FRAMEWORKS:
        assert f"| tiny | lstm | 0 | {framework} | 2 |" in summary
    # the same MoS, whichever framework built it (the reference's parameter count)
    assert mos["n_params"].nunique() == 1
    inventory = pd.read_csv(results / "aggregate" / "ease_of_use.csv")
    assert set(inventory["framework"]) == set(FRAMEWORKS)
    check_measurements(runs)
    assert "*GPU util (%)*: absent: gpus=0: a CPU job" in summary

    # the default store is results/mlflow.db in the working directory, artefacts beside it
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    for framework in FRAMEWORKS:
        tracked = mlflow.search_runs(experiment_names=["mosbench-test"],
                                     filter_string=f"tags.framework = '{framework}'")
        assert len(tracked) == 4 and set(tracked["status"]) == {"FINISHED"}
        assert sorted(tracked["tags.mlflow.runName"]) == [
            f"{framework}-tiny-{model}-seed{seed}-gpus0" for model in ("awd-lstm-mos", "lstm")
            for seed in (1, 2)]
        assert tracked["tags.framework_version"].notna().all()
        assert set(tracked["params.framework"]) == {framework}
    tracked = mlflow.search_runs(experiment_names=["mosbench-test"],
                                 filter_string="tags.dataset = 'tiny'")
    assert len(tracked) == 8 and set(tracked["tags.framework"]) == set(FRAMEWORKS)
    assert set(tracked["params.n_params"].astype(int)) == set(runs["n_params"])
    assert set(tracked["params.matmul_precision"]) == {"float32"}  # strict fp32 by default
    tracked = tracked.set_index("run_id").loc[runs["run_id"]]
    assert tracked["metrics.test/ppl"].tolist() == pytest.approx(runs["test_ppl"].tolist())
    assert tracked["metrics.best/valid_ppl"].tolist() == pytest.approx(
        runs["best_valid_ppl"].tolist())
    assert "metrics.final/valid_ppl" not in tracked  # the old, misleading name
    dynamic = tracked["metrics.dynamic_eval/test_ppl"].tolist()
    assert dynamic[:4] == pytest.approx(mos["dynamic_test_ppl"].tolist())
    assert tracked["tags.git_commit"].str.len().min() >= 7
    assert any((results / "mlartifacts").rglob("metrics.json"))
    one = mlflow.MlflowClient().get_run(runs["run_id"][0])
    assert one.data.metrics["measure/first_step_s"] > 0
    assert one.data.tags["absent.gpu_memory_peak_mb"] == "gpus=0: a CPU job"
    # system metrics on (a TensorFlow run: the tiny PyTorch jobs can end within one sampling
    # interval, before MLflow's monitor logs anything)
    slower = mlflow.MlflowClient().get_run(
        runs.loc[runs["framework"] == "tensorflow", "run_id"].iloc[0])
    assert any(name.startswith("system/") for name in slower.data.metrics)
    board = mlflow.search_runs(experiment_names=["mosbench-test"],
                               filter_string="tags.`mosbench.stage` = 'aggregate'")
    assert len(board) == 1
    artefacts = {a.path for a in mlflow.MlflowClient().list_artifacts(board["run_id"][0])}
    assert artefacts == set(OUTPUTS)

    # the HTML report embeds every plot, byte for byte
    report = results / "report.html"
    done = snakemake(tmp_path, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    html = report.read_text()
    for name in PLOTS + ["summary.html", "scaling.html", "published.html", "ease_of_use.html"]:
        content = base64.b64encode((results / "aggregate" / name).read_bytes()).decode()
        assert content in html, name

    again = snakemake(tmp_path, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def check_measurements(runs):
    """Every per-run figure is there and plausible: positive, finite, units that agree."""
    positive = ["epoch_time_s", "tokens_per_s", "step_time_median_s", "first_step_s",
                "time_to_first_step_s", "cost_per_epoch", "latency_ms_median",
                "eval_tokens_per_s", "test_tokens_per_s", "host_rss_peak_mb",
                "data_preprocess_s", "data_parquet_load_s", "data_stream_tokens_per_s",
                "data_cache_memory_tokens_per_s", "data_cache_file_tokens_per_s"]
    values = runs[positive]
    assert (values > 0).all().all() and np.isfinite(values).all().all(), values.T
    assert (runs["step_time_p95_s"] >= runs["step_time_median_s"]).all()
    assert (runs["latency_ms_p95"] >= runs["latency_ms_median"]).all()
    assert (runs["time_to_first_step_s"] >= runs["first_step_s"]).all()
    assert (runs["host_rss_peak_mb"] > 100).all()  # TensorFlow alone takes more
    # one epoch's tokens, two ways: tokens/s x epoch time, and the input pipeline's count
    assert (runs["tokens_per_s"] * runs["epoch_time_s"]).tolist() == pytest.approx(
        runs["data_train_tokens"].tolist(), rel=1e-6)
    assert runs["cost_per_epoch"].tolist() == pytest.approx(
        (runs["epoch_time_s"] / 3600 * 0.1).tolist())  # tiny.yaml: cpu_hour 0.1
    for figure in GPU_FIGURES:  # absent with the reason on a CPU run, never zero
        assert runs[figure].isna().all(), figure
        assert runs["absent"].str.contains(f"{figure}: gpus=0: a CPU job").all(), figure


def test_bad_config_is_refused_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG.read_text().replace("models: [lstm,", "models: [gpt,"))
    done = snakemake(tmp_path, "--dry-run", configfile=bad)
    assert done.returncode != 0
    assert "'gpt' is not one of ['lstm', 'awd-lstm'," in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_demo_and_grid_configs_plan_the_expected_jobs(tmp_path):
    # frameworks x datasets x models x seeds x GPU counts
    for configfile, trains in ((REPO / "config" / "demo.yaml", 2 * 1 * 4 * 2 * 1),
                               (REPO / "config" / "config.yaml", 2 * 2 * 4 * 10 * 4)):
        done = snakemake(tmp_path, "--dry-run", configfile=configfile)
        assert done.returncode == 0, done.stderr[-2000:]
        counts = dict(line.split()[:2] for line in done.stdout.splitlines()
                      if len(line.split()) == 2 and line.split()[1].isdigit())
        assert int(counts["train"]) == trains and int(counts["evaluate"]) == trains
        assert int(counts["aggregate"]) == 1
    assert trains == 640
