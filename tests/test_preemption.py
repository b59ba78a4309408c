"""Training jobs killed at many points and rerun by Snakemake end as if never killed.

A job, the tiny LSTM in PyTorch (op determinism on), is killed by SIGKILL
or SIGTERM at one point of each attempt, through the fault points of
:mod:`mosbench.faults`: between steps, while a checkpoint's arrays are being
written, between a checkpoint's arrays and its JSON, while the best weights
are being written, after validation before the checkpoint, and after the
results are written but before the clean-up. Each time `snakemake
--rerun-incomplete` runs the job again, which resumes from whatever
checkpoint survived. For every attempt the test checks how the job ended
(exit status 75 for a checkpointed pause, death by SIGKILL otherwise, as
Snakemake reports it) and which checkpoint generation the next run resumed.
The final history, weights and MLflow run must equal those of an
uninterrupted run of the same job (made meanwhile, in another folder).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench.errors import PAUSED_EXIT_CODE

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# One framework: what is killed and resumed here is the neutral procedure (checkpoint
# generations, the best weights, train.json, MLflow); each engine's own bit-identical resume
# is test_engine_conformance.py's, for every framework.
FRAMEWORKS = ("pytorch",)
JOB = "results/train/{framework}/tiny/lstm/seed1-gpus0"
TARGETS = [f"{JOB.format(framework=f)}/train.json" for f in FRAMEWORKS]
LOG = "logs/train/{framework}/tiny/lstm/seed1-gpus0.log"
BPTT = 20  # the tiny LSTM's windows, all of this length (no variable BPTT)


class Attempt(NamedTuple):
    point: str  # the fault point, its n-th arrival in the attempt, and what happens there
    n: int
    fault: str
    resumes: tuple  # the checkpoint the kill leaves: (generation, epochs done, window position)
    left: str | None = None  # a file, new in this attempt, that shows where the kill struck


# checkpoint.save writes generation g+1 in this order: its npz to a temporary file
# (point "checkpoint-npz"), renamed (point "checkpoint-arrays"), then checkpoint.json naming
# it. Only the JSON makes g+1 the one a rerun resumes, so a kill before it leaves g, a kill
# after it g+1. A generation is written at each epoch's end (after the epoch's best
# weights, at window position 0) and by a pause (SIGTERM: mid-epoch); 2 epochs in all.
ATTEMPTS = [
    # fresh start; SLURM's warning after 5 windows: the pause writes generation 1, exit 75
    Attempt("train-step", 5, "SIGTERM", (1, 0, 5 * BPTT)),
    # from 1, to the end of epoch 1: generation 2's npz in place, its JSON not yet
    Attempt("checkpoint-arrays", 1, "SIGKILL", (1, 0, 5 * BPTT), "checkpoint-2.npz"),
    # from 1: generation 2's npz half-way, only its temporary file exists
    Attempt("checkpoint-npz", 1, "SIGKILL", (1, 0, 5 * BPTT), ".checkpoint-2.npz.*"),
    # from 1: epoch 1's best weights half-way, before generation 2
    Attempt("best-weights", 1, "SIGKILL", (1, 0, 5 * BPTT), ".best-*"),
    # from 1: epoch 1 ends with generation 2; epoch 2 is validated, not yet checkpointed
    Attempt("epoch-end", 2, "SIGKILL", (2, 1, 0)),
    # from 2: mid-epoch 2, no warning; nothing written since generation 2
    Attempt("train-step", 4, "SIGKILL", (2, 1, 0)),
    # from 2: epoch 2 ends with generation 3; train.json written, checkpoint not yet removed
    Attempt("finished", 1, "SIGKILL", (3, 2, 0)),
]


def _config(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["run"].update(models=["lstm"], seeds=[1])
    config["presets"]["tiny"]["lstm"].update(epochs=2, deterministic=True)
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _empty_store(tmp_path):
    """An MLflow SQLite store with its tables, made once: each job folder gets a copy."""
    path = tmp_path / "empty-mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


def _workdir(path, tiny_data, store):
    """A Snakemake folder with the shared tiny corpus (no rule prepares it again) and store.

    Creating a store's tables takes seconds, and the first job of each folder would do it
    while the other one waits.
    """
    # copied with their times, raw before tokenised: Snakemake finds the data up to date
    shutil.copytree(tiny_data.parent / "raw", path / "results" / "raw" / "tiny")
    shutil.copytree(tiny_data, path / "results" / "data" / "tiny")
    shutil.copyfile(store, path / "results" / "mlflow.db")
    return path


def _snakemake(workdir, configfile, fault=None):
    """The `snakemake` command that (re)runs the jobs in ``workdir``, and its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                             "MOSBENCH_FAULT")}
    if fault:
        env["MOSBENCH_FAULT"] = ":".join(map(str, fault))
    # the jobs at once; --keep-going: one job's death does not spare another its fault
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(configfile), "--cores", "2", "--keep-going",
           "--rerun-incomplete", *TARGETS]
    return cmd, env


def _run(workdir, configfile, fault=None):
    cmd, env = _snakemake(workdir, configfile, fault)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _ends(stderr):
    """How each failed train job ended, by framework, as Snakemake reports it.

    An exit status, or the name of the signal that killed the job: Snakemake says
    "died with <Signals.SIGKILL: 9>", or 137 (128 + 9) where a shell stood between.
    """
    ends = {}
    for report in stderr.split("RuleException:")[1:]:
        framework = re.search(r"output: results/train/(\w+)/", report)[1]
        status = re.search(r"returned non-zero exit status (\d+)|died with <Signals\.(\w+):",
                           report)
        if status[2]:
            ends[framework] = status[2]
        else:
            code = int(status[1])
            ends[framework] = signal.Signals(code - 128).name if code > 128 else code
    return ends


def _checkpoint(workdir, framework):
    """(generation, epochs done, window position) of a job's checkpoint.json, and its npz."""
    state = json.loads((workdir / JOB.format(framework=framework) / "checkpoint.json")
                       .read_text())
    return (state["generation"], state["epoch"], state["position"]), state["arrays"]


def _resumed(workdir, framework):
    """(epoch, window position) of each "resuming at ..." line in the job's last log."""
    log = (workdir / LOG.format(framework=framework)).read_text()  # Snakemake's: this run's
    return [tuple(map(int, found)) for found in
            re.findall(r"resuming at epoch (\d+), window position (\d+)", log)]


def _weights(path):
    """A digest of the weight arrays of a weights file, by name."""
    with np.load(path) as arrays:
        named = {name: arrays[name].tobytes() for name in arrays.files}
    return hashlib.sha256(repr(sorted(named.items())).encode()).hexdigest()


def _epochs(workdir, framework):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mosbench-test"],
                              filter_string=f"tags.framework = '{framework}'")
    assert len(runs) == 1, runs  # every attempt logged into the same run
    history = mlflow.MlflowClient().get_metric_history(runs["run_id"][0], "history/valid_ppl")
    return runs["status"][0], sorted((m.step, m.value) for m in history)


def _interrupt_and_resume(killed, configfile):
    """Run the attempts of ATTEMPTS in ``killed``, checking each, then the last run."""
    resumes = None  # the checkpoint the next run must resume: none yet
    for attempt in ATTEMPTS:
        folders = {f: killed / JOB.format(framework=f) for f in FRAMEWORKS}
        before = {f: set(os.listdir(folder)) if folder.exists() else set()
                  for f, folder in folders.items()}
        done = _run(killed, configfile, attempt[:3])
        expected_end = PAUSED_EXIT_CODE if attempt.fault == "SIGTERM" else attempt.fault
        assert _ends(done.stderr) == dict.fromkeys(FRAMEWORKS, expected_end), (
            attempt, done.stderr[-3000:])
        for framework, folder in folders.items():
            where = (attempt, framework)
            # nothing that looks complete: Snakemake removes the failed job's outputs
            assert not (folder / "train.json").exists(), where
            # this run resumed the generation the previous kill left, or started afresh
            assert _resumed(killed, framework) == (
                [] if resumes is None else [(resumes[1] + 1, resumes[2])]), where
            state, arrays = _checkpoint(killed, framework)
            assert state == attempt.resumes, where
            assert arrays == f"checkpoint-{state[0]}.npz", where
            if attempt.left:
                new = set(os.listdir(folder)) - before[framework]
                assert any(Path(name).match(attempt.left) for name in new), (where, new)
        resumes = attempt.resumes
    done = _run(killed, configfile)
    assert done.returncode == 0, done.stderr[-3000:]
    for framework in FRAMEWORKS:
        assert _resumed(killed, framework) == [(resumes[1] + 1, resumes[2])], framework


@pytest.mark.slow
def test_killed_at_seven_points_and_rerun_by_snakemake_ends_as_if_never_killed(tmp_path,
                                                                               tiny_data):
    configfile = _config(tmp_path)
    store = _empty_store(tmp_path)
    calm, killed = (_workdir(tmp_path / name, tiny_data, store) for name in ("calm", "killed"))
    # the uninterrupted run goes on beside the first attempts, on what they leave idle
    # (each `snakemake` starts alone; one job often ends before the other)
    cmd, env = _snakemake(calm, configfile)
    with open(tmp_path / "calm.log", "w+") as calm_log:
        calm_run = subprocess.Popen(cmd, env=env, stdout=calm_log, stderr=subprocess.STDOUT)
        try:
            _interrupt_and_resume(killed, configfile)
        finally:
            calm_run.wait(timeout=600)
        calm_log.seek(0)
        assert calm_run.returncode == 0, calm_log.read()[-3000:]

    for framework in FRAMEWORKS:
        folder = Path(JOB.format(framework=framework))
        expected = yaml.safe_load((calm / folder / "train.json").read_text())
        got = yaml.safe_load((killed / folder / "train.json").read_text())
        assert [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in got["history"]] == [
            (h["epoch"], h["train_loss"], h["valid_loss"]) for h in expected["history"]]
        assert got["best_valid_loss"] == expected["best_valid_loss"], framework
        assert _weights(killed / folder / "model.weights.npz") == _weights(
            calm / folder / "model.weights.npz"), framework
        assert sorted(p.name for p in (killed / folder).iterdir()) == [
            "model.weights.npz", "train.json"], framework  # no checkpoint or best weights left
        # each epoch logged once, the run FINISHED
        assert _epochs(killed, framework) == _epochs(calm, framework), framework
