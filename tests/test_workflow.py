"""The real workflow, end to end, through the real `snakemake` and a real MLflow store."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_CONFIG, run_snakemake
from mosbench import paths
from mosbench.code_hash import ROOT_ENV
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
    env.update(MOSBENCH_PROGRESS_STEPS="10", MOSBENCH_PROGRESS_S="0")  # progress lines in logs
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_tracks_every_run(tiny_workflow):
    """The session's one run of the tiny workflow (conftest.tiny_workflow), on a real server."""
    workdir = tiny_workflow.work
    results = workdir / "results"
    for name in OUTPUTS:
        assert (results / "aggregate" / name).stat().st_size > 0
    for rule in ("synthetic/tiny", "tokenise/tiny", "train/tensorflow/tiny/lstm/seed1-gpus0",
                 "train/pytorch/tiny/lstm/seed1-gpus0", "evaluate/pytorch/tiny/lstm/seed2-gpus0",
                 "evaluate/tensorflow/tiny/awd-lstm-mos/seed2-gpus0", "aggregate/aggregate"):
        assert (workdir / "logs" / f"{rule}.log").exists()
    for framework in FRAMEWORKS:
        assert (results / "train" / framework / "tiny" / "awd-lstm-mos" / "seed1-gpus0" /
                "model.weights.npz").stat().st_size > 0

    runs = pd.read_csv(results / "aggregate" / "runs.csv")
    # per model, a cell's frameworks side by side, then seeds
    n = len(FRAMEWORKS)
    assert runs["model"].tolist() == ["awd-lstm-mos"] * 2 * n + ["lstm"] * 2 * n
    assert runs["framework"].tolist() == [f for f in sorted(FRAMEWORKS) for _ in (1, 2)] * 2
    assert runs["seed"].tolist() == [1, 2] * 2 * n
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
    check_measurements(runs, read_metadata(results / "data" / "tiny" / "train.parquet"))
    check_data_pipeline(results, runs)
    check_probes(results)
    assert "*GPU util (%)*: absent: gpus=0: a CPU job" in summary

    # every stage logged to the server (tests/test_cli.py checks the default local store)
    assert (tiny_workflow.root / "tracking" / "mlflow.db").stat().st_size > 0
    assert not (results / "mlflow.db").exists()  # nothing fell back to SQLite
    mlflow.set_tracking_uri(tiny_workflow.uri)
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
    assert len(tracked) == 4 * n and set(tracked["tags.framework"]) == set(FRAMEWORKS)
    assert set(tracked["params.n_params"].astype(int)) == set(runs["n_params"])
    assert set(tracked["params.matmul_precision"]) == {"float32"}  # strict fp32 by default
    # an engine's own settings (tiny.yaml: engines.jax), in its runs' params and train.json
    jax_runs = tracked["tags.framework"] == "jax"
    assert set(tracked.loc[jax_runs, "params.engine.bptt_bucket"]) == {"8"}
    assert tracked.loc[~jax_runs, "params.engine.bptt_bucket"].isna().all()
    for framework in FRAMEWORKS:
        record = results / "train" / framework / "tiny" / "lstm" / "seed1-gpus0" / "train.json"
        assert json.loads(record.read_text())["engine_options"] == (
            {"bptt_bucket": 8, "compilation_cache": None} if framework == "jax" else {})
    tracked = tracked.set_index("run_id").loc[runs["run_id"]]
    assert tracked["metrics.test_ppl"].tolist() == pytest.approx(runs["test_ppl"].tolist())
    assert tracked["metrics.best_valid_ppl"].tolist() == pytest.approx(
        runs["best_valid_ppl"].tolist())
    assert "metrics.final/valid_ppl" not in tracked  # the old, misleading name
    dynamic = tracked["metrics.dynamic_test_ppl"].tolist()
    assert dynamic[:2 * n] == pytest.approx(mos["dynamic_test_ppl"].tolist())
    assert tracked["tags.git_commit"].str.len().min() == 40
    assert any((tiny_workflow.root / "tracking" / "mlartifacts").rglob("metrics.json"))
    one = mlflow.MlflowClient().get_run(runs["run_id"][0])
    assert one.data.metrics["measurements/first_step_s"] > 0
    assert one.data.tags["absent.gpu_memory_peak_mb"] == "gpus=0: a CPU job"
    # system metrics on (a TensorFlow run: the tiny PyTorch jobs can end within one sampling
    # interval, before MLflow's monitor logs anything)
    slower = mlflow.MlflowClient().get_run(
        runs.loc[runs["framework"] == "tensorflow", "run_id"].iloc[0])
    assert any(name.startswith("system/") for name in slower.data.metrics)
    # the aggregate's run sits in an experiment of its own, not among the training runs
    assert mlflow.search_runs(experiment_names=["mosbench-test"],
                              filter_string="tags.`mosbench.stage` = 'aggregate'").empty
    board = mlflow.search_runs(experiment_names=["mosbench-test-aggregate"],
                               filter_string="tags.`mosbench.stage` = 'aggregate'")
    assert len(board) == 1
    artefacts = {a.path for a in mlflow.MlflowClient().list_artifacts(board["run_id"][0])}
    assert artefacts == set(OUTPUTS)
    check_progress_provenance_and_mlflow_runs(workdir, runs, tiny_workflow.output)

    # the HTML report embeds every plot, byte for byte
    report = results / "report.html"
    code_copy = {ROOT_ENV: str(tiny_workflow.code)}  # the sources may be edited meanwhile
    done = run_snakemake(workdir, "--cores", "2", "--report", str(report), env=code_copy)
    assert done.returncode == 0, done.stderr[-3000:]
    html = report.read_text()
    for name in PLOTS + ["summary.html", "scaling.html", "published.html", "ease_of_use.html"]:
        content = base64.b64encode((results / "aggregate" / name).read_bytes()).decode()
        assert content in html, name
    check_answer_pages(results / "aggregate", html)

    again = run_snakemake(workdir, "--dry-run", env=code_copy)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def check_measurements(runs, train_meta):
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
    # one epoch's tokens, two ways: tokens/s x epoch time, and the windows of the train split
    # (tiny.yaml's presets: batch 8); the data-pipeline job's windows have a batch of 20
    tokens = train_meta["tokens"]["train"]
    assert (runs["tokens_per_s"] * runs["epoch_time_s"]).tolist() == pytest.approx(
        [8 * (tokens // 8 - 1)] * len(runs), rel=1e-6)
    assert (runs["data_train_tokens"] == 20 * (tokens // 20 - 1)).all()
    assert runs["cost_per_epoch"].tolist() == pytest.approx(
        (runs["epoch_time_s"] / 3600 * 0.1).tolist())  # tiny.yaml: cpu_hour 0.1
    for figure in GPU_FIGURES:  # absent with the reason on a CPU run, never zero
        assert runs[figure].isna().all(), figure
        assert runs["absent"].str.contains(f"{figure}: gpus=0: a CPU job").all(), figure


def check_progress_provenance_and_mlflow_runs(workdir, runs, snakemake_output):
    """Jobs report progress in their logs; each run records what it ran on, its data, its
    weights, and metrics under its JSON files' names; the experiment opens on its runs."""
    from mosbench.io import read_json
    from mosbench.measurement.provenance import KEYS
    from mosbench.tracking import mlflow_run

    logs = workdir / "logs"
    train_log = (logs / "train/tensorflow/tiny/awd-lstm-mos/seed1-gpus0.log").read_text()
    lines = [line for line in train_log.splitlines() if line.startswith("train epoch ")]
    assert len(lines) >= 4, train_log[-2000:]  # ~37 steps an epoch, a line every 10
    assert all(" | loss " in line and " tok/s | elapsed " in line and ", run (2 epochs) " in line
               for line in lines), lines
    assert "validate epoch 1 | window " in train_log
    evaluate_log = (logs / "evaluate/pytorch/tiny/awd-lstm-mos/seed2-gpus0.log").read_text()
    for what in ("evaluate valid | window ", "evaluate test | window ",
                 "dynamic evaluation (test) | segment ", "rank: log-probability rows | row "):
        assert what in evaluate_log, what
    assert "\r" not in train_log + evaluate_log  # plain lines in files, no bar
    assert "train epoch " not in snakemake_output  # Snakemake's own output stays its own

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("mosbench-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    data = workdir / "results" / "data" / "tiny"
    digests = {split: mlflow_run.dataset_input(data / f"{split}.parquet", "", "", 0)["digest"]
               for split in ("train", "valid", "test")}
    for run in runs.itertuples():
        job = dict(framework=run.framework, dataset="tiny", model=run.model, seed=run.seed,
                   gpus=0)
        summary = read_json(workdir / paths.TRAIN.format(**job) / "train.json")
        metrics = read_json(workdir / paths.EVALUATE.format(**job) / "metrics.json")
        assert sorted(summary["provenance"]) == sorted(KEYS)  # written with sorted keys
        assert summary["provenance"]["framework"] == run.framework
        assert summary["provenance"]["gpu_count"] == 0
        tracked = client.get_run(run.run_id)
        assert tracked.data.tags["framework_version"] == summary["provenance"]["framework_version"]
        assert tracked.data.tags["cpu_model"] == summary["provenance"]["cpu_model"]
        assert tracked.data.tags["evaluate.cpu_model"] == metrics["provenance"]["cpu_model"]
        inputs = {(i.dataset.name, i.dataset.digest, i.tags[0].value)
                  for i in tracked.inputs.dataset_inputs}
        assert inputs == {("tiny/train", digests["train"], "training"),
                          ("tiny/valid", digests["valid"], "validation"),
                          ("tiny/test", digests["test"], "test")}
        assert {"model.weights.npz", "train.json", "metrics.json"} <= {
            a.path for a in client.list_artifacts(run.run_id)}
        # every MLflow metric has its JSON key's name and value (the system metrics aside)
        logged = {k: v for k, v in tracked.data.metrics.items() if not k.startswith("system/")}
        expected = {**mlflow_run.train_metrics(summary), **mlflow_run.evaluate_metrics(metrics),
                    **mlflow_run.epoch_metrics(summary["history"][-1])}
        assert logged == pytest.approx(expected)
        history = client.get_metric_history(run.run_id, "history/valid_ppl")
        assert sorted((m.step, m.value) for m in history) == pytest.approx(
            [(r["epoch"], r["valid_ppl"]) for r in summary["history"]])


def check_answer_pages(aggregate_dir, report_html):
    """The frameworks page and the cost of a result, from the real runs: the Welch test
    agrees with SciPy on runs.csv, targets are timed, seeds split only by environment."""
    from scipy import stats

    runs = pd.read_csv(aggregate_dir / "runs.csv")
    for name in ("verdict.html", "frameworks.html", "result_cost.html", "result_cost.png"):
        content = base64.b64encode((aggregate_dir / name).read_bytes()).decode()
        assert content in report_html, name
    assert "Answer (start here)" in report_html and "1. Verdict" in report_html
    # the verdict: per workload each framework against the baseline (tensorflow, the first of
    # tiny.yaml's run.frameworks), then the geometric mean over the two workloads
    verdict = (aggregate_dir / "verdict.md").read_text()
    assert verdict.startswith("# Verdict") and " · CPU" in verdict
    for framework in FRAMEWORKS[1:]:
        for model in ("lstm", "awd-lstm-mos"):
            assert f"| tiny | {model} | {framework} vs tensorflow |" in verdict
        assert (f"| geometric mean over workloads | 2 workloads | {framework} vs tensorflow |"
                in verdict)
    page = (aggregate_dir / "frameworks.md").read_text()
    assert page.startswith("# Frameworks side by side")
    assert "## Data loading: streaming against caching" in page and "## Ease of use" in page
    rows = pd.read_csv(aggregate_dir / "frameworks.csv")
    assert {"p_adjusted", "equivalence", "ratio_ci_low", "endpoint"} <= set(rows.columns)
    rows = rows[(rows["figure"] == "best_valid_ppl") & (rows["framework"] == "pytorch")]
    rows = rows.set_index("model")
    for model, group in runs.groupby("model"):
        tf, pt = (np.log(group.loc[group["framework"] == f, "best_valid_ppl"])
                  for f in ("tensorflow", "pytorch"))
        expected = stats.ttest_ind(pt, tf, equal_var=False)  # on the per-token loss
        assert rows.loc[model, "p_value"] == pytest.approx(expected.pvalue), model
        assert rows.loc[model, "p_adjusted"] >= rows.loc[model, "p_value"]
        assert rows.loc[model, "tensorflow_n"] == rows.loc[model, "pytorch_n"] == 2
        assert rows.loc[model, "equivalence"] == rows.loc[model, "verdict"]
        assert f"## tiny · {model} · CPU" in page
        assert (f"- valid ppl, pytorch − tensorflow: {pt.mean() - tf.mean():+.4f} nats per "
                "token (95 % interval ") in page
    # the cost of a result: every run timed to tiny.yaml's target, or told why not
    targets = runs["model"].map({"lstm": 8.0, "awd-lstm-mos": 15.0})
    assert (runs["target_valid_ppl"] == targets).all()
    reached = runs["epochs_to_target"].notna()
    assert reached.any()
    for run in runs[reached].itertuples():  # training and its validation passes
        assert 0 < run.time_to_target_s <= run.train_time_s + run.valid_time_s + 1e-9
        assert run.cost_to_target == pytest.approx(run.time_to_target_s / 3600 * 0.1)
    # the cost counts the evaluation the result needs, not evaluate's own measurements
    assert (runs["eval_time_s"] == runs["result_eval_s"]).all()
    assert (runs["eval_job_wall_s"] > runs["result_eval_s"] + runs["measurement_eval_s"]).all()
    assert runs["total_time_s"].to_numpy() == pytest.approx(
        (runs["train_time_s"] + runs["valid_time_s"] + runs["eval_time_s"]).to_numpy())
    mos = runs[runs["model"] == "awd-lstm-mos"]  # with dynamic evaluation
    assert (mos["result_eval_s"] > mos["dynamic_test_s"] + mos["static_test_s"]).all()
    # every job's wait for its input, each framework's own path, beside the pipelines' table
    assert ((runs["input_wait_fraction"] > 0) & (runs["input_wait_fraction"] < 1)).all()
    assert (runs["input_load_s"] > 0).all()
    assert "## Data loading inside training: waiting for input" in page
    assert page.index("## Data loading: streaming against caching") < page.index(
        "## Data loading inside training")
    for run in runs[~reached].itertuples():
        assert run.best_valid_ppl > run.target_valid_ppl
        assert (f"time_to_target_s: target valid ppl {run.target_valid_ppl:g} not reached in "
                f"2 epochs") in run.absent
    assert (runs["total_cost"] >= runs["train_time_s"] / 3600 * 0.1 - 1e-12).all()
    cost = pd.read_csv(aggregate_dir / "result_cost.csv")
    assert len(cost) == 2 * len(FRAMEWORKS) and cost["n_reached"].sum() == reached.sum()
    # one machine, one set of library versions per framework: no cell is split
    summary = pd.read_csv(aggregate_dir / "summary.csv")
    assert len(summary) == 2 * len(FRAMEWORKS) and (summary["n_seeds"] == 2).all()
    assert "git_commit" in runs and "Seeds not averaged together" not in page
    published = (aggregate_dir / "published.md").read_text()
    assert "No published numbers for the data sets and models of this run." in published


def test_bad_config_is_refused_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG.read_text().replace("models: [lstm,", "models: [gpt,"))
    done = snakemake(tmp_path, "--dry-run", configfile=bad)
    assert done.returncode != 0
    assert "'gpt' is not one of ['lstm', 'awd-lstm'," in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_demo_and_grid_configs_plan_the_expected_jobs(tmp_path):
    # trained: frameworks x datasets x models x seeds x train GPU counts; probed: frameworks x
    # datasets x models x (strong at every GPU count + weak at 2 or more)
    for configfile, trains, probes in ((REPO / "config" / "demo.yaml", 3 * 1 * 4 * 2 * 1,
                                        3 * 1 * 4 * 1),
                                       (REPO / "config" / "config.yaml", 3 * 2 * 4 * 10 * 1,
                                        3 * 2 * 4 * (4 + 3))):
        done = snakemake(tmp_path, "--dry-run", configfile=configfile)
        assert done.returncode == 0, done.stderr[-2000:]
        counts = dict(line.split()[:2] for line in done.stdout.splitlines()
                      if len(line.split()) == 2 and line.split()[1].isdigit())
        assert int(counts["train"]) == trains and int(counts["evaluate"]) == trains
        assert int(counts["probe"]) == probes and int(counts["aggregate"]) == 1
    assert trains == 240  # a quarter of the 960 of full training at 1, 2, 4 and 8 GPUs


def check_probes(results):
    """One strong probe per framework and model on the CPU (tiny.yaml: gpus [0]), timed as
    the config says, and its figures in probes.csv, scaling.csv and the frameworks page."""
    from mosbench.io import read_json

    records = sorted(results.glob("probe/*/*/*/*/probe.json"))
    assert [p.relative_to(results).parts[1:5] for p in records] == [
        (f, "tiny", m, "strong-gpus0") for f in sorted(FRAMEWORKS)
        for m in ("awd-lstm-mos", "lstm")]
    for path in records:
        probe = read_json(path)
        assert (probe["timed_steps"], probe["warmup_steps"], probe["repeats"]) == (3, 1, 2)
        assert len(probe["tokens_per_s_blocks"]) == 2 and probe["tokens_per_s"] > 0
        assert probe["provenance"]["framework"] == probe["framework"]
        assert probe["absent"]["allocator_peak_mb"] == "gpus=0: a CPU job"
    table = pd.read_csv(results / "aggregate" / "probes.csv")
    assert len(table) == 2 * len(FRAMEWORKS) and (table["blocks"] == 2).all()
    baseline = table[table["framework"] == table["baseline"]]
    assert (baseline["speed_ratio"] == 1.0).all() and len(baseline) == 2
    assert (table["speed_ratio"] > 0).all()
    page = (results / "aggregate" / "frameworks.md").read_text()
    assert "## Speed, scaling and memory at each GPU count (probes)" in page
    for framework in FRAMEWORKS[1:]:  # each against the baseline, tensorflow
        assert f"| tiny | lstm | strong | 0 | {framework} |" in page


def check_data_pipeline(results, runs):
    """The data pipeline was measured once per (framework, dataset, device), by its own
    rule, and each run's data figures are those of its framework's measurement."""
    from mosbench.io import read_json

    records = sorted(results.glob("data_pipeline/*/*/*/data_pipeline.json"))
    assert [p.relative_to(results).parts[1:4] for p in records] == [
        (framework, "tiny", "cpu") for framework in sorted(FRAMEWORKS)]  # tiny.yaml: gpus [0]
    for path in records:
        record = read_json(path)
        assert (record["batch_size"], record["bptt"]) == (20, 70)  # the config's defaults
        assert record["absent"] == {} and record["provenance"]["framework"] == record["framework"]
        mine = runs[runs["framework"] == record["framework"]]
        assert mine["data_stream_tokens_per_s"].tolist() == pytest.approx(
            [record["data_stream_tokens_per_s"]] * len(mine))
    for summary in results.glob("train/*/*/*/*/train.json"):  # no training job measures it
        assert not [k for k in read_json(summary)["measurements"] if k.startswith("data_")]
