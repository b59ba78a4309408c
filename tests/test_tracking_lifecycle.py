"""The MLflow run of a paused job, and an SQLite store on a network file system.

A real tiny PyTorch job is paused in its second epoch (SIGTERM, as SLURM
sends it) with a real SQLite store; its run (KILLED, as the UI shows a paused
run) is then deleted, or the job is pointed at another store, and the job is
run again: it must finish, in a new run that names the old one and holds
every epoch, not fail on every retry. A store that cannot be reached must not
be taken for one without the run. Evaluate does the same when the training
run is gone. Then the file-system check: a mountinfo in the kernel's format,
the real one, and the warning a job prints; and the cluster profile, which
names its tracking store before it submits anything.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import REPO, TINY_CONFIG
from mosbench import faults
from mosbench.config import validate_config
from mosbench.errors import MosbenchError, TrainingPaused
from mosbench.evaluation.evaluate import evaluate
from mosbench.tracking import shared_store
from mosbench.tracking.mlflow_run import epoch_metrics, open_store
from mosbench.tracking.spool import SPOOL, Spool
from mosbench.tracking.tracker import PENDING, REPLACES_TAG, TOKEN_TAG, Tracker
from mosbench.training import checkpoint
from mosbench.training.train import train

EXPERIMENT = "lifecycle"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
HPARAMS = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))["presets"]["tiny"]["lstm"]


def _train(data, out, monkeypatch, fault=None):
    """The tiny PyTorch LSTM job (2 epochs); ``fault``: a MOSBENCH_FAULT for this call."""
    if fault:
        monkeypatch.setenv("MOSBENCH_FAULT", fault)
        monkeypatch.setattr(faults, "_arrivals", {})  # counted from this call on
    else:
        monkeypatch.delenv("MOSBENCH_FAULT", raising=False)
    return train(data, out, dataset="tiny", model_name="lstm", seed=5, gpus=0, hparams=HPARAMS,
                 experiment=EXPERIMENT, framework="pytorch", threads=1,
                 config_snapshot={"test": "lifecycle"})


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nobody listens


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An SQLite store with MLflow's tables and nothing else: a copy opens at once."""
    path = tmp_path_factory.mktemp("empty") / "mlflow.db"
    open_store(f"sqlite:///{path}")  # MLflow's schema migrations, once
    return path


@pytest.fixture(scope="module")
def paused(tiny_data, empty_store, tmp_path_factory):
    """A job paused in epoch 2 (epoch 1 logged), its run KILLED."""
    root = tmp_path_factory.mktemp("paused")
    shutil.copyfile(empty_store, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        monkeypatch.setenv("MOSBENCH_TRACKING_WAIT_S", "0")
        with pytest.raises(TrainingPaused):  # SIGTERM after epoch 1: pauses at the next step
            _train(tiny_data, root / "job", monkeypatch, fault="epoch-end:1:SIGTERM")
    return root


@pytest.fixture
def job(paused, tmp_path, monkeypatch):
    """A copy of the paused job and its store: ``(job folder, store URI, run id)``."""
    shutil.copytree(paused / "job", tmp_path / "job")
    shutil.copyfile(paused / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MOSBENCH_TRACKING_WAIT_S", "0")
    run_id = json.loads((tmp_path / "job" / checkpoint.STATE).read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    return tmp_path / "job", uri, run_id


def _assert_replaces(client, run_id, old, summary, artefacts=("config.yaml",)):
    """``run_id`` is FINISHED, names ``old``, and holds what a fresh job's run holds."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    assert run.data.tags[REPLACES_TAG] == old
    assert run.data.tags["mosbench.state"] == "finished" and run.data.tags["model"] == "lstm"
    assert run.info.run_name == "pytorch-tiny-lstm-seed5-gpus0"
    assert run.data.params["n_params"] == str(summary["n_params"])
    assert run.data.params["lr"] == str(HPARAMS["lr"])
    assert {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs} >= {
        ("tiny/train", "training"), ("tiny/valid", "validation")}
    assert {a.path for a in client.list_artifacts(run_id)} >= {"train.json", *artefacts}
    for key in epoch_metrics(summary["history"][0]):  # every epoch, once, as train.json has it
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert logged == [(r["epoch"], pytest.approx(epoch_metrics(r)[key]))
                          for r in summary["history"]], key
    assert [r["epoch"] for r in summary["history"]] == [1, 2]


def test_a_paused_run_deleted_during_an_outage_is_replaced_once_the_store_answers(
        job, tiny_data, monkeypatch, capsys):
    folder, uri, old = job
    client = MlflowClient(uri)
    client.delete_run(old)  # in the UI: a soft delete, the run's lifecycle "deleted"

    # retried while the store is away: the job cannot know, so it keeps its run and pauses
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TrainingPaused):
        _train(tiny_data, folder, monkeypatch, fault="train-step:3:SIGTERM")
    assert REPLACES_TAG not in capsys.readouterr().out
    assert json.loads((folder / checkpoint.STATE).read_text())["run_id"] == old
    assert {r.get("run") for r in Spool(folder / SPOOL).read()[0]} == {old}  # kept for it

    # retried with the store back: it says the run is deleted; a new run, and the job ends
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    summary = _train(tiny_data, folder, monkeypatch)
    said = [line for line in capsys.readouterr().out.splitlines() if REPLACES_TAG in line]
    assert len(said) == 1 and old in said[0] and "was deleted" in said[0], said
    assert summary["run_id"] != old
    _assert_replaces(client, summary["run_id"], old, summary,
                     artefacts=("config.yaml", "model.weights.npz"))
    assert not (folder / SPOOL).exists()  # the calls kept for the deleted run: refused
    gone = client.get_run(old)
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["mosbench.state"] == "paused"
    runs = client.search_runs([gone.info.experiment_id], run_view_type=ViewType.ALL)
    assert {r.info.run_id for r in runs} == {old, summary["run_id"]}


def test_a_job_pointed_at_another_store_gets_a_new_run_there(job, empty_store, tiny_data,
                                                             tmp_path, monkeypatch, capsys):
    folder, _, old = job
    shutil.copyfile(empty_store, tmp_path / "other.db")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    # paused again after the new run was made: the checkpoint names the new run ...
    with pytest.raises(TrainingPaused):
        _train(tiny_data, folder, monkeypatch, fault="train-step:3:SIGTERM")
    said = [line for line in capsys.readouterr().out.splitlines() if REPLACES_TAG in line]
    assert len(said) == 1 and "is not in the tracking store" in said[0], said
    new = json.loads((folder / checkpoint.STATE).read_text())["run_id"]
    assert new != old and MlflowClient(other).get_run(new).info.status == "KILLED"
    # ... so the next retry resumes it, and makes no third run
    summary = _train(tiny_data, folder, monkeypatch)
    assert REPLACES_TAG not in capsys.readouterr().out and summary["run_id"] == new
    client = MlflowClient(other)
    _assert_replaces(client, new, old, summary)
    assert len(client.search_runs([client.get_run(new).info.experiment_id])) == 1


def test_only_the_store_s_own_answer_makes_a_run_gone(empty_store, tmp_path):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT)
    kept, deleted, created_late = (
        client.create_run(experiment, tags=tags).info.run_id
        for tags in ({}, {}, {TOKEN_TAG: "made-while-the-store-was-away"}))
    client.delete_run(deleted)
    client.delete_run(created_late)
    tracker = Tracker(tmp_path / "job", EXPERIMENT, uri=uri)
    assert tracker.gone(kept) is None
    assert tracker.gone(deleted) == "was deleted in the tracking store"
    assert tracker.gone("f" * 32).startswith("is not in the tracking store")
    # a run created late (found by its token tag), deleted; one not created yet is not gone
    assert tracker.gone(PENDING + "made-while-the-store-was-away").startswith("was deleted")
    assert tracker.gone(PENDING + "still-in-a-spool") is None
    # a store that does not answer says nothing about the run
    away = Tracker(tmp_path / "job", EXPERIMENT, uri=f"http://127.0.0.1:{_closed_port()}")
    assert away.gone(deleted) is None and away.gone("f" * 32) is None


def test_evaluate_of_a_deleted_training_run_logs_to_a_new_run(job, tiny_data, tmp_path,
                                                              monkeypatch, capsys):
    folder, uri, _ = job
    trained = _train(tiny_data, folder, monkeypatch)
    client = MlflowClient(uri)
    client.delete_run(trained["run_id"])
    metrics_file = tmp_path / "evaluate" / "metrics.json"
    metrics = evaluate(tiny_data, folder, metrics_file, model_name="lstm", hparams=HPARAMS,
                       experiment=EXPERIMENT, framework="pytorch", threads=1)
    said = [line for line in capsys.readouterr().out.splitlines() if REPLACES_TAG in line]
    assert len(said) == 1 and trained["run_id"] in said[0], said
    new = metrics["run_id"]
    assert new != trained["run_id"] and json.loads(metrics_file.read_text())["run_id"] == new
    _assert_replaces(client, new, trained["run_id"], trained,
                     artefacts=("metrics.json", "model.weights.npz"))
    run = client.get_run(new)
    assert run.data.metrics["test_ppl"] == pytest.approx(metrics["test_ppl"])
    assert run.data.metrics["best_epoch"] == trained["best_epoch"]
    assert "tiny/test" in {i.dataset.name for i in run.inputs.dataset_inputs}
    assert "evaluate.hostname" in run.data.tags


# --- an SQLite store on a network file system ------------------------------------------

# /proc/self/mountinfo as a cluster node has it: the root on a local disk, home over NFS
# (its mount point with an escaped space), scratch on Lustre, a FUSE CephFS, and an NFS
# mount with a local tmpfs stacked on the same mount point.
MOUNTINFO = r"""22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
25 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
30 22 0:45 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=8123456k
41 22 0:51 /home /home/lab\040users rw,relatime shared:30 - nfs4 fs1:/export/home rw,vers=4.2,hard
44 22 0:53 / /scratch rw,relatime shared:32 - lustre 10.0.0.1@o2ib:/scratch rw,flock,lazystatfs
47 22 0:55 / /ceph rw,relatime shared:34 - fuse.ceph-fuse ceph-fuse rw,user_id=0,group_id=0
52 22 0:60 / /data rw,relatime shared:40 - nfs nas:/data rw,vers=3
53 52 0:61 / /data rw,relatime shared:41 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(("path", "expected"), [
    ("/home/lab users/me/results/mlflow.db", ("/home/lab users", "nfs4")),
    ("/scratch/me/not-yet-there/mlflow.db", ("/scratch", "lustre")),
    ("/ceph/mlflow.db", ("/ceph", "fuse.ceph-fuse")),
    ("/home/lab/mlflow.db", None),  # a sibling of the NFS mount point, on the root disk
    ("/tmp/mlflow.db", None),
    ("/data/mlflow.db", None),  # the tmpfs on top hides the NFS mount below it
])
def test_the_mount_table_tells_a_network_file_system(tmp_path, path, expected):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert shared_store.network_mount(path, mountinfo) == expected


def test_this_machine_s_tmp_is_local():
    assert shared_store.mount_of("/tmp") is not None  # the real /proc/self/mountinfo
    assert shared_store.network_mount("/tmp") is None


def test_a_job_warns_once_of_its_sqlite_store_on_nfs(empty_store, tmp_path, monkeypatch, capfd):
    def open_twice(db):
        shutil.copyfile(empty_store, db)
        for _ in range(2):  # a job opens its store more than once (train, its tracker): one line
            open_store(f"sqlite:///{db}").search_experiments()
        return capfd.readouterr().err

    nfs, local = tmp_path / "nfs", tmp_path / "nfs" / "local"  # a local disk inside, too
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO + f"70 22 0:70 / {nfs} rw - nfs4 fs1:/x rw\n"
                         f"71 70 259:3 / {local} rw - xfs /dev/nvme1n1 rw\n")
    monkeypatch.setattr(shared_store, "MOUNTINFO", mountinfo)
    local.mkdir(parents=True)
    err = open_twice(nfs / "mlflow.db")
    warned = [line for line in err.splitlines() if "network file system" in line]
    assert len(warned) == 1 and f"nfs4 at {nfs}" in warned[0], err
    assert "make mlflow-server" in warned[0] and "MLFLOW_TRACKING_URI" in warned[0]
    assert "network file system" not in open_twice(local / "mlflow.db")


def test_the_cluster_profile_needs_a_named_store(tmp_path):
    # unset: the workflow stops before it submits anything (a real snakemake, SLURM profile)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(TINY_CONFIG), "--profile", "slurm"],
        cwd=REPO, env={**env, "SBATCH_PARTITION": "nowhere"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    refused = [line for line in done.stderr.splitlines() if line.startswith("mosbench: ")]
    assert len(refused) == 1 and "MLFLOW_TRACKING_URI is not set" in refused[0], done.stderr
    assert "sbatch" not in done.stdout + done.stderr.replace(refused[0], "")
    assert not (tmp_path / "results").exists()  # nothing ran, nothing was submitted
    # named: a server passes; the SQLite file, asked for, passes with a warning
    assert shared_store.cluster_store_line("slurm", {"MLFLOW_TRACKING_URI":
                                                     "http://login1:5000"}) is None
    line = shared_store.cluster_store_line(
        "slurm", {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert line.startswith("warning:") and "make mlflow-server" in line
    with pytest.raises(MosbenchError, match="results/mlflow.db"):
        shared_store.cluster_store_line("slurm", {})
