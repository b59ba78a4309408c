"""A diverged job is an outcome: it ends once, marked, and never blocks the report.

Real divergences of the tiny LSTM (a learning rate of 1e38), a real MLflow
store, the real `mosbench` command; the aggregate over hand-written run files
as in tests/test_aggregate.py.
"""

import json
import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from test_aggregate import make_run

from conftest import TINY_CONFIG
from mosbench import paths
from mosbench.cli import main
from mosbench.config import validate_config
from mosbench.evaluation.evaluate import evaluate, load_trained
from mosbench.io import write_json
from mosbench.reporting.aggregate import aggregate
from mosbench.training.train import train

HUGE_LR = 1e38  # the first update overflows the weights


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module's training jobs (a new store costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


def _run(experiment):
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert len(runs) == 1
    return runs.iloc[0]


def _no_checkpoint_left(folder):
    names = {p.name for p in Path(folder).iterdir()}
    return {"model.weights.npz", "train.json"} <= names and not {
        n for n in names if n.startswith(("checkpoint", "best-", "."))}


def test_a_diverged_job_ends_once_with_its_outputs_marked(tiny_config, tiny_data, store,
                                                          tmp_path, monkeypatch, capsys):
    # One epoch trains well; the finetune's first update overflows, its second step's loss
    # is not finite. Through the command a Snakemake job runs the same way: exit status 0.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / "results" / "data" / "tiny").symlink_to(tiny_data)
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["mlflow"]["experiment"] = "diverges-in-training"
    # (a batch of 100 streams: 3 windows an epoch)
    raw["presets"]["tiny"]["lstm"].update(epochs=1, finetune_epochs=1, finetune_lr=HUGE_LR,
                                          batch_size=100)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", "config.yaml", "train", "tiny", "lstm", "--seed", "3",
                 "--framework", "pytorch"]) == 0
    assert "pytorch/tiny/lstm/seed3-gpus0; diverged: the training loss" in (
        capsys.readouterr().out)

    folder = Path(paths.TRAIN.format(framework="pytorch", dataset="tiny", model="lstm",
                                     seed=3, gpus=0))
    summary = json.loads((folder / "train.json").read_text())
    assert summary["outcome"] == "diverged"
    assert summary["reason"].startswith("the training loss became ")
    assert "at epoch 2, step 2 (finetune phase, lr 1e+38)" in summary["reason"]
    at = summary["diverged_at"]
    assert (at["loss"], at["epoch"], at["step"], at["phase"]) == ("training", 2, 2, "finetune")
    assert at["value"] in ("nan", "inf")
    assert [h["epoch"] for h in summary["history"]] == [1]  # the history so far
    assert summary["best_epoch"] == 1 and math.isfinite(summary["best_valid_loss"])
    with np.load(folder / "model.weights.npz") as weights:  # epoch 1's, not the overflowed
        assert weights.files and all(np.isfinite(weights[k]).all() for k in weights.files)
    assert _no_checkpoint_left(folder)  # a rerun would diverge again: nothing to resume

    run = _run("diverges-in-training")
    assert run["run_id"] == summary["run_id"] and run["status"] == "FAILED"
    assert run["tags.mosbench.state"] == "diverged"
    assert run["tags.mosbench.reason"] == summary["reason"]


@pytest.fixture(scope="module")
def never_validated(tiny_data, store, tmp_path_factory):
    """A PyTorch job of one step per epoch whose only update overflows: every training loss
    is finite, the validation loss is not."""
    out = tmp_path_factory.mktemp("never-validated")
    preset = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))["presets"]["tiny"]["lstm"]
    hparams = dict(preset, epochs=1, lr=HUGE_LR, batch_size=285)
    summary = train(tiny_data, out / "train", dataset="tiny", model_name="lstm", seed=3, gpus=0,
                    hparams=hparams, experiment="diverges-in-validation", framework="pytorch")
    return summary, out


def test_a_validation_loss_never_finite_is_a_divergence(never_validated, tiny_config):
    summary, out = never_validated  # returned, not KeyError: 'best_file'
    assert summary == json.loads((out / "train" / "train.json").read_text())
    assert summary["outcome"] == "diverged"
    assert summary["reason"].startswith("the validation loss became ")
    assert "at epoch 1 (train phase, lr 1e+38)" in summary["reason"]
    assert summary["diverged_at"]["loss"] == "validation"
    assert summary["history"] == [] and summary["best_valid_loss"] is None
    # the current weights, whole: they load into the model (evaluate does not score them)
    load_trained(out / "train", "lstm", summary["vocab_size"],
                 tiny_config["presets"]["tiny"]["lstm"], framework="pytorch")
    assert _no_checkpoint_left(out / "train")
    run = _run("diverges-in-validation")
    assert run["status"] == "FAILED" and run["tags.mosbench.state"] == "diverged"
    assert run["tags.mosbench.reason"] == summary["reason"]


def test_evaluate_of_a_diverged_run_writes_the_outcome_only(never_validated, tiny_config,
                                                            tiny_data):
    summary, out = never_validated
    metrics = evaluate(tiny_data, out / "train", out / "eval" / "metrics.json",
                       model_name="lstm", hparams=tiny_config["presets"]["tiny"]["lstm"],
                       experiment="diverges-in-validation", framework="pytorch")
    expected = {key: summary[key] for key in ("framework", "dataset", "model", "seed", "gpus",
                                              "run_id", "outcome", "reason")}
    assert metrics == expected
    assert json.loads((out / "eval" / "metrics.json").read_text()) == expected
    run = _run("diverges-in-validation")  # nothing logged: no metric of evaluate's
    assert run["status"] == "FAILED" and "metrics.test_ppl" not in run
    assert not [key for key in run.index if key.startswith("tags.evaluate.")]


def _diverged(root, framework, seed, reason):
    """A diverged run's files as train and evaluate write them; its numbers would show in
    any mean they entered."""
    train_json, metrics_json = make_run(root, "synthetic", "lstm", seed, 0, 9e9, 9e9, [9e9],
                                        8.0, framework=framework)
    record = json.loads(train_json.read_text())
    write_json(train_json, {**record, "outcome": "diverged", "reason": reason,
                            "best_valid_loss": None, "best_epoch": 0})
    write_json(metrics_json, {key: record.get(key) for key in (
        "framework", "dataset", "model", "seed", "gpus", "run_id")}
        | {"outcome": "diverged", "reason": reason})
    return train_json, metrics_json


def test_the_aggregate_leaves_diverged_runs_out_and_lists_them(runs, tmp_path):
    train_files, metrics_files, _ = runs
    alone = aggregate(train_files, metrics_files, tmp_path / "finished")
    reasons = {"tensorflow": "the training loss became nan at epoch 1, step 7",
               "pytorch": "the validation loss became inf at epoch 1"}
    extra = [_diverged(tmp_path / "diverged", f, 3, r) for f, r in reasons.items()]
    both = aggregate(train_files + [t for t, _ in extra], metrics_files + [m for _, m in extra],
                     tmp_path / "with")

    # no mean, count or curve of the report holds the diverged runs
    for name in ("runs", "summary_csv", "scaling_csv", "result_cost_csv", "published_csv"):
        pd.testing.assert_frame_equal(pd.read_csv(both[name]), pd.read_csv(alone[name]))
    assert both["valid_ppl_png"].read_bytes() == alone["valid_ppl_png"].read_bytes()
    with_them, without = (pd.read_csv(p["frameworks_csv"]) for p in (both, alone))
    pd.testing.assert_frame_equal(with_them.drop(columns="pytorch_reason"),
                                  without.drop(columns="pytorch_reason"))
    cell = with_them[(with_them["model"] == "lstm") & (with_them["dataset"] == "synthetic")
                     & (with_them["gpus"] == 0)]
    assert set(cell["pytorch_reason"]) == {
        "no finished run: diverged (see Runs not in the figures)"}

    for page in ("summary_md", "frameworks_md"):
        text = both[page].read_text(encoding="utf-8")
        assert "## Runs not in the figures" in text
        assert "2 of the 6 runs are in no table, figure or count" in text
        for framework, reason in reasons.items():
            assert f"| {framework} | synthetic | lstm | 3 | 0 | diverged | {reason} |" in text
        assert "Runs not in the figures" not in alone[page].read_text(encoding="utf-8")
    assert "<h2>Runs not in the figures</h2>" in both["summary_html"].read_text()


@pytest.fixture
def runs(tmp_path):
    """Finished runs of two cells (two seeds each), all TensorFlow."""
    specs = [("synthetic", "lstm", 1, 0, 10.0, 11.0, [30.0, 10.0], 8.0),
             ("synthetic", "lstm", 2, 0, 14.0, 15.0, [40.0, 14.0], 8.0),
             ("synthetic", "mos", 1, 0, 9.0, 10.0, [25.0, 9.0], 8.0),
             ("synthetic", "mos", 2, 0, 11.0, 12.0, [25.0, 11.0], 8.0)]
    pairs = [make_run(tmp_path / "runs", *spec) for spec in specs]
    train_files, metrics_files = (list(files) for files in zip(*pairs, strict=True))
    return train_files, metrics_files, tmp_path / "report"


TRACEBACK = """epoch   1 train    | train ppl     38.96 | valid ppl     10.72
Traceback (most recent call last):
  File "workflow/scripts/train.py", line 27, in <module>
    train(Path(snakemake.input.train).parent, ...)
mosbench.errors.MosbenchError: results/train/x/checkpoint.json: cannot read it (Errno 5)
2026/01/01 00:00:00 INFO mlflow.system_metrics: Stopping system metrics monitoring...
"""


def test_a_partial_aggregate_reports_what_finished_and_why_the_rest_is_missing(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["run"].update(frameworks=["tensorflow"], models=["lstm"], seeds=[1, 2, 3, 4])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    grid = dict(framework="tensorflow", dataset="tiny", model="lstm", gpus=0)
    for seed, ppl in ((1, 10.0), (2, 14.0)):  # finished and evaluated
        train_json, metrics_json = make_run(tmp_path / "made", "tiny", "lstm", seed, 0, ppl,
                                            ppl + 1, [30.0, ppl], 8.0)
        for made, template in ((train_json, paths.TRAIN), (metrics_json, paths.EVALUATE)):
            folder = Path(template.format(**grid, seed=seed))
            folder.mkdir(parents=True)
            shutil.copy(made, folder)
    # seed 3 failed after its retries (no train.json, its log ends in a traceback); seed 4
    # never ran
    log = Path(f"logs/train/{paths.RUN.format(**grid, seed=3)}.log")
    log.parent.mkdir(parents=True)
    log.write_text(TRACEBACK)

    assert main(["--config", "config.yaml", "aggregate", "--partial"]) == 0
    out = capsys.readouterr().out
    error = ("mosbench.errors.MosbenchError: results/train/x/checkpoint.json: cannot read it "
             "(Errno 5)")
    assert (f"not in the report: tensorflow/tiny/lstm/seed3-gpus0: failed: train: {error} "
            f"({log})") in out
    assert "not in the report: tensorflow/tiny/lstm/seed4-gpus0: not run: not run" in out

    summary = pd.read_csv(Path(paths.AGGREGATE) / "summary.csv")
    assert summary["n_seeds"].tolist() == [2]  # what finished, counted as such
    text = (Path(paths.AGGREGATE) / "summary.md").read_text(encoding="utf-8")
    assert "2 of the 4 runs are in no table, figure or count" in text
    assert f"| tensorflow | tiny | lstm | 3 | 0 | failed | train: {error} ({log}) |" in text
    assert "| tensorflow | tiny | lstm | 4 | 0 | not run | not run |" in text
