"""A training job killed at many points and rerun by Snakemake ends as if never killed.

One job (tiny LSTM, op determinism on) is killed by SIGKILL or SIGTERM at a
different point in each attempt, through the fault points of
:mod:`mosbench.faults`: between steps, while a checkpoint's arrays are being
written, between a checkpoint's arrays and its JSON, while the best weights
are being written, after validation before the checkpoint, and after the
results are written but before the clean-up. Each time `snakemake
--rerun-incomplete` runs the job again, which resumes from whatever
checkpoint survived. The final history, weights and MLflow run must equal
those of an uninterrupted run of the same job.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from conftest import REPO, TINY_CONFIG

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TARGET = "results/train/tensorflow/tiny/lstm/seed1-gpus0/train.json"
# (fault point, n-th arrival in the attempt, signal): each attempt dies once, then resumes.
ATTEMPTS = [
    ("train-step", 5, "SIGTERM"),  # SLURM's warning: a checkpoint mid-epoch, exit 75
    ("checkpoint-arrays", 1, "SIGKILL"),  # the new npz is in place, the JSON is the old one
    ("checkpoint-npz", 1, "SIGKILL"),  # the new npz half-way: only its temporary file exists
    ("best-weights", 1, "SIGKILL"),  # the best weights half-way
    ("epoch-end", 2, "SIGKILL"),  # validated, not yet checkpointed
    ("train-step", 4, "SIGKILL"),  # mid-epoch, no warning
    ("finished", 1, "SIGKILL"),  # train.json written, checkpoint not yet removed
]


def _config(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["run"].update(models=["lstm"], seeds=[1])
    config["presets"]["tiny"]["lstm"].update(epochs=3, deterministic=True)
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(workdir, configfile, fault=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                             "MOSBENCH_FAULT")}
    if fault:
        env["MOSBENCH_FAULT"] = ":".join(map(str, fault))
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(configfile), "--cores", "1",
           "--rerun-incomplete", TARGET]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _weights(path):
    """A digest of the weight arrays of a weights file, by name."""
    with np.load(path) as arrays:
        named = {name: arrays[name].tobytes() for name in arrays.files}
    return hashlib.sha256(repr(sorted(named.items())).encode()).hexdigest()


def _epochs(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mosbench-test"])
    assert len(runs) == 1, runs  # every attempt logged into the same run
    history = mlflow.MlflowClient().get_metric_history(runs["run_id"][0], "history/valid_ppl")
    return runs["status"][0], sorted((m.step, m.value) for m in history)


@pytest.mark.slow
def test_killed_at_seven_points_and_rerun_by_snakemake_ends_as_if_never_killed(tmp_path):
    configfile = _config(tmp_path)
    calm, killed = tmp_path / "calm", tmp_path / "killed"
    done = _run(calm, configfile)
    assert done.returncode == 0, done.stderr[-3000:]

    for fault in ATTEMPTS:
        done = _run(killed, configfile, fault)
        assert done.returncode != 0, f"{fault}: the job was not interrupted"
        # nothing that looks complete: Snakemake removes the failed job's outputs
        assert not (killed / TARGET).exists(), fault
    done = _run(killed, configfile)
    assert done.returncode == 0, done.stderr[-3000:]

    folder = Path(TARGET).parent
    expected = yaml.safe_load((calm / TARGET).read_text())
    got = yaml.safe_load((killed / TARGET).read_text())
    assert [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in got["history"]] == [
        (h["epoch"], h["train_loss"], h["valid_loss"]) for h in expected["history"]]
    assert got["best_valid_loss"] == expected["best_valid_loss"]
    assert _weights(killed / folder / "model.weights.npz") == _weights(
        calm / folder / "model.weights.npz")
    assert sorted(p.name for p in (killed / folder).iterdir()) == [
        "model.weights.npz", "train.json"]  # no checkpoint or best-weights file left
    assert _epochs(killed) == _epochs(calm)  # each epoch logged once, the run FINISHED
