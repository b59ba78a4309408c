"""After a real run, a dry run plans exactly the jobs that a change invalidated.

The run is the session's one run of the tiny workflow (conftest.tiny_workflow,
shared with tests/test_workflow.py). It hashes a copy of the package
(``MOSBENCH_CODE_ROOT``), so these tests edit the copy, never the sources. It
logs to a real `make mlflow-server` on loopback, and the dry runs afterwards
see no tracking URI: switching the tracking store reruns nothing.
"""

import contextlib
import json
import os
import re
import time
from types import SimpleNamespace

import pytest
import yaml

from conftest import TINY_CONFIG, run_snakemake  # run_snakemake: other tests import it here
from mosbench.code_hash import ROOT_ENV
from mosbench.engines import FRAMEWORKS

JOB = re.compile(r"^(?:local)?rule (\S+):$")


def _pairs(text):
    return dict(item.split("=", 1) for item in text.split(", ") if "=" in item)


def planned_jobs(output):
    """Rule, wildcards and resources of every job a dry run lists (the `all` target aside)."""
    jobs = []
    for line in output.splitlines():
        line = line.strip()  # the jobs of a group job are indented once more
        if match := JOB.match(line):
            jobs.append(SimpleNamespace(rule=match[1], wildcards={}, resources={}))
        elif jobs and line.startswith("wildcards: "):
            jobs[-1].wildcards = _pairs(line.removeprefix("wildcards: "))
        elif jobs and line.startswith("resources: "):
            jobs[-1].resources = _pairs(line.removeprefix("resources: "))
    return [job for job in jobs if job.rule != "all"]


@pytest.fixture(scope="module")
def tiny_run(tiny_workflow):
    """The session's one real run of the tiny workflow (conftest.tiny_workflow)."""
    return tiny_workflow


def dry_run(tiny_run, *args, configfile=TINY_CONFIG):
    done = run_snakemake(tiny_run.work, "--dry-run", *args, configfile=configfile,
                         env={ROOT_ENV: str(tiny_run.code)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def counts(jobs):
    out = {}
    for job in jobs:
        out[job.rule] = out.get(job.rule, 0) + 1
    return out


@contextlib.contextmanager
def edited(path, edit):
    """``path`` in the package copy with ``edit`` applied, restored afterwards."""
    original = path.read_text()
    path.write_text(edit(original))
    try:
        yield
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_another_tracking_store_and_a_touch_plan_nothing(tiny_run):
    # no MLFLOW_TRACKING_URI now: the tracking store is not a param
    assert "Nothing to be done" in dry_run(tiny_run)
    future = time.time() + 3600
    for path in tiny_run.code.rglob("*.py"):
        os.utime(path, (future, future))
    assert "Nothing to be done" in dry_run(tiny_run)


# What an edit of each kind of module reruns: one framework's jobs, or both frameworks';
# the data-pipeline job of a framework too where it imports the module (its engine does).
# The tiny config runs 3 frameworks x 2 models x 2 seeds, and 1 data set on the CPU.
# module edited: (frameworks retrained, data-pipeline jobs per framework, probe jobs). A
# framework's probes rerun with its engine, and so do the later frameworks' probes of the
# same cells (tiny.yaml: tensorflow, pytorch, jax), which must be timed beside them again.
EDITS = {
    "the TensorFlow engine's LSTM": ("engines/tensorflow/models/lstm.py", {"tensorflow"}, 1, 6),
    "the PyTorch engine's LSTM": ("engines/pytorch/models/lstm.py", {"pytorch"}, 1, 4),
    "the JAX engine's LSTM": ("engines/jax/models/scan_lstm.py", {"jax"}, 1, 2),
    "the neutral training procedure": ("training/bptt.py", set(FRAMEWORKS), 0, 0),
    "the engine interface": ("engines/interface.py", set(FRAMEWORKS), 1, 6),
}


@pytest.mark.slow
@pytest.mark.parametrize("edit", EDITS)
def test_a_code_edit_plans_train_evaluate_aggregate_of_its_frameworks_only(tiny_run, edit):
    module, frameworks, pipelines, probes = EDITS[edit]
    with edited(tiny_run.code / module, lambda text: text + "\n# a real edit\n"):
        jobs = planned_jobs(dry_run(tiny_run))
    expected = {"train": 4 * len(frameworks), "evaluate": 4 * len(frameworks), "aggregate": 1}
    if pipelines:
        expected["data_pipeline"] = pipelines * len(frameworks)
    if probes:
        expected["probe"] = probes
    assert counts(jobs) == expected
    assert {job.wildcards["framework"] for job in jobs
            if job.rule not in ("aggregate", "probe")} == frameworks
    # the same content again, with a newer mtime: the hash matches the recorded one
    assert "Nothing to be done" in dry_run(tiny_run)


@pytest.mark.slow
def test_a_reporting_edit_plans_only_aggregate(tiny_run):
    report = tiny_run.code / "reporting" / "aggregate.py"
    with edited(report, lambda text: text.replace('"""', '"""Edited. ', 1)):
        assert counts(planned_jobs(dry_run(tiny_run))) == {"aggregate": 1}


@pytest.mark.slow
def test_a_hyperparameter_change_plans_only_that_models_jobs(tiny_run):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["presets"]["tiny"]["lstm"]["lr"] = 4.0
    changed = tiny_run.root / "lstm-lr4.yaml"
    changed.write_text(yaml.safe_dump(config))  # keys now sorted: a new order reruns nothing
    jobs = planned_jobs(dry_run(tiny_run, configfile=changed))
    # every framework's: 2 seeds of training and evaluation, 1 probe each
    n = len(FRAMEWORKS)
    assert counts(jobs) == {"train": 2 * n, "evaluate": 2 * n, "probe": n, "aggregate": 1}
    assert {job.wildcards["model"] for job in jobs if job.rule != "aggregate"} == {"lstm"}

    # The README's way to see which outputs a params change invalidates.
    summary = dry_run(tiny_run, "--summary", configfile=changed).splitlines()
    stale = {row.split("\t")[0] for row in summary if "\tparams changed\t" in row}
    assert stale == {f"results/{stage}/{framework}/tiny/lstm/seed{seed}-gpus0/{name}"
                     for framework in FRAMEWORKS for seed in (1, 2) for stage, names in (
                         ("train", ("model.weights.npz", "train.json")),
                         ("evaluate", ("metrics.json",))) for name in names} | {
                         f"results/probe/{framework}/tiny/lstm/strong-gpus0/probe.json"
                         for framework in FRAMEWORKS}


@pytest.mark.slow
def test_an_engine_setting_plans_only_that_frameworks_jobs(tiny_run):
    """engines.jax: a param of JAX's training, evaluation and probe jobs, no other's."""
    changed = changed_config(tiny_run, "jax-bucket", lambda config: config.setdefault(
        "engines", {}).setdefault("jax", {}).update(bptt_bucket=4))
    jobs = planned_jobs(dry_run(tiny_run, configfile=changed))
    assert counts(jobs) == {"train": 4, "evaluate": 4, "probe": 2, "aggregate": 1}
    assert {job.wildcards["framework"] for job in jobs if job.rule != "aggregate"} == {"jax"}


def changed_config(tiny_run, name, change):
    """The tiny config with ``change`` applied, written to a file of its own."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    change(config)
    path = tiny_run.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# Keys only evaluation reads (workload.EVALUATION_KEYS), each changed for one model.
EVALUATION_CHANGES = {
    "rank_contexts": ("lstm", lambda preset: preset.update(rank_contexts=50)),
    "test_batch_size": ("lstm", lambda preset: preset.update(test_batch_size=2)),
    "dynamic_eval": ("awd-lstm-mos", lambda preset: preset["dynamic_eval"].update(lr=0.003)),
    "dynamic_eval off": ("awd-lstm-mos", lambda preset: preset.update(dynamic_eval=None)),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", EVALUATION_CHANGES)
def test_an_evaluation_only_key_plans_only_that_models_evaluate_and_aggregate(tiny_run, key):
    model, change = EVALUATION_CHANGES[key]
    changed = changed_config(tiny_run, key.replace(" ", "-"),
                             lambda config: change(config["presets"]["tiny"][model]))
    jobs = planned_jobs(dry_run(tiny_run, configfile=changed))
    assert counts(jobs) == {"evaluate": 2 * len(FRAMEWORKS), "aggregate": 1}  # x 2 seeds
    assert {job.wildcards["model"] for job in jobs if job.rule == "evaluate"} == {model}


@pytest.mark.slow
def test_a_data_pipeline_setting_plans_only_the_data_pipeline_jobs_and_aggregate(tiny_run):
    changed = changed_config(tiny_run, "pipeline-bptt",
                             lambda config: config.setdefault("data_pipeline", {}).update(
                                 bptt=35))
    jobs = planned_jobs(dry_run(tiny_run, configfile=changed))
    assert counts(jobs) == {"data_pipeline": len(FRAMEWORKS), "aggregate": 1}


@pytest.mark.slow
def test_the_data_pipeline_ran_once_per_framework_dataset_and_device(tiny_run):
    records = sorted((tiny_run.work / "results" / "data_pipeline").glob("*/*/*/data_pipeline.json"))
    assert [p.relative_to(tiny_run.work / "results").parts[1:4] for p in records] == [
        (framework, "tiny", "cpu") for framework in sorted(FRAMEWORKS)]
    for path in records:
        record = json.loads(path.read_text())
        assert record["absent"] == {} and record["data_stream_tokens_per_s"] > 0
    for train in (tiny_run.work / "results" / "train").rglob("train.json"):  # not in training
        assert not any(k.startswith("data_") for k in json.loads(train.read_text())[
            "measurements"])


@pytest.mark.slow
def test_a_grid_with_gpu_jobs_plans_one_data_pipeline_job_per_device(tiny_run):
    changed = changed_config(tiny_run, "gpus01", lambda config: config["run"].update(gpus=[0, 1]))
    done = run_snakemake(tiny_run.root / "fresh", "--dry-run", configfile=changed,
                         env={ROOT_ENV: str(tiny_run.code)})
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = planned_jobs(done.stdout + done.stderr)
    pipelines = [job for job in jobs if job.rule == "data_pipeline"]
    # trained at the smallest GPU count (each framework x 2 models x 2 seeds), probed at both
    assert counts(jobs)["train"] == counts(jobs)["probe"] == 4 * len(FRAMEWORKS)
    assert {j.wildcards["gpus"] for j in jobs if j.rule == "train"} == {"0"}
    assert {j.wildcards["gpus"] for j in jobs if j.rule == "probe"} == {"0", "1"}
    assert sorted((j.wildcards["framework"], j.wildcards["device"]) for j in pipelines) == [
        (framework, device) for framework in sorted(FRAMEWORKS) for device in ("cpu", "gpu")]
    for job in pipelines:  # a GPU node's host for the gpu figures, as a 1-GPU training job
        on_gpu = job.wildcards["device"] == "gpu"
        assert job.resources.get("gpu") == str(int(on_gpu)), job
        assert job.resources.get("cpus_per_gpu") == ("8" if on_gpu else None), job


@pytest.mark.slow
def test_a_new_price_plans_only_aggregate(tiny_run):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["cost"]["gpu_hour"] = 9.0
    changed = tiny_run.root / "price.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert counts(planned_jobs(dry_run(tiny_run, configfile=changed))) == {"aggregate": 1}
