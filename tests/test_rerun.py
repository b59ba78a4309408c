"""After a real run, a dry run plans exactly the jobs that a change invalidated.

The run hashes a copy of the package (``MOSBENCH_CODE_ROOT``), so these tests
edit the copy, never the sources. It logs to a real `make mlflow-server` on
loopback, and the dry runs afterwards see no tracking URI: switching the
tracking store reruns nothing.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench.code_hash import PACKAGE_ROOT, ROOT_ENV
from mosbench.engines import FRAMEWORKS

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
JOB = re.compile(r"^(?:local)?rule (\S+):$")


def run_snakemake(workdir, *args, configfile=TINY_CONFIG, env=None, cwd=REPO):
    """The real `snakemake` on the repository's Snakefile, in ``workdir``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ROOT_ENV)}
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    return subprocess.run(cmd, env={**clean, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=900)


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store):
    """`make mlflow-server` on a free loopback port; yields its URI, stops it on exit."""
    port = free_port()
    # -o: never reinstall .venv from inside a test
    cmd = ["make", "-o", ".venv/.installed", "mlflow-server", f"PORT={port}",
           f"MLFLOW_DIR={store}", "MLFLOW_WORKERS=1"]
    log = open(store.parent / "mlflow-server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (store.parent / "mlflow-server.log").read_text()
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make, mlflow and its workers: one group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run of the tiny workflow, shared by the tests below."""
    root = tmp_path_factory.mktemp("rerun")
    code = root / "mosbench"
    shutil.copytree(PACKAGE_ROOT, code, ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    with mlflow_server(root / "tracking") as uri:
        # Jobs that start together race to create a missing experiment on a server
        # (mlflow_run.connect locks only for SQLite); create it first, as the README says.
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("mosbench-test")
        done = run_snakemake(work, "--cores", "2",
                             env={ROOT_ENV: str(code), "MLFLOW_TRACKING_URI": uri})
        assert done.returncode == 0, done.stderr[-3000:]
        yield SimpleNamespace(root=root, code=code, work=work, uri=uri)


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
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_run_was_tracked_on_the_mlflow_server(tiny_run, framework):
    mlflow.set_tracking_uri(tiny_run.uri)
    tracked = mlflow.search_runs(experiment_names=["mosbench-test"],
                                 filter_string=f"tags.framework = '{framework}'")
    assert sorted(tracked["tags.mlflow.runName"]) == [
        f"{framework}-tiny-{model}-seed{seed}-gpus0" for model in ("awd-lstm-mos", "lstm")
        for seed in (1, 2)]
    assert set(tracked["status"]) == {"FINISHED"}
    assert tracked["metrics.test_ppl"].notna().all()  # evaluate logged into the same runs
    assert (tiny_run.root / "tracking" / "mlflow.db").stat().st_size > 0
    assert not (tiny_run.work / "results" / "mlflow.db").exists()  # nothing fell back to SQLite
    board = mlflow.search_runs(experiment_names=["mosbench-test-aggregate"],
                               filter_string="tags.`mosbench.stage` = 'aggregate'")
    assert len(board) >= 1  # the aggregate's run, on the server too, apart from training's


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
# The tiny config runs 2 frameworks x 2 models x 2 seeds, and 1 data set on the CPU.
# module edited: (frameworks retrained, data-pipeline jobs per framework, probe jobs). A
# framework's probes rerun with its engine, and so do the next framework's probes of the same
# cells (tiny.yaml: tensorflow, then pytorch), which must be timed beside them again.
EDITS = {
    "the TensorFlow engine's LSTM": ("engines/tensorflow/models/lstm.py", {"tensorflow"}, 1, 4),
    "the PyTorch engine's LSTM": ("engines/pytorch/models/lstm.py", {"pytorch"}, 1, 2),
    "the neutral training procedure": ("training/bptt.py", set(FRAMEWORKS), 0, 0),
    "the engine interface": ("engines/interface.py", set(FRAMEWORKS), 1, 4),
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
    # both frameworks': 2 seeds of training and evaluation, 1 probe each
    assert counts(jobs) == {"train": 4, "evaluate": 4, "probe": 2, "aggregate": 1}
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
    assert counts(jobs) == {"evaluate": 4, "aggregate": 1}  # 2 frameworks x 2 seeds
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
    # trained at the smallest GPU count (2 frameworks x 2 models x 2 seeds), probed at both
    assert counts(jobs)["train"] == 8 and counts(jobs)["probe"] == 8
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
