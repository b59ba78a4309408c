"""The cluster's own faults around checkpoints: durability, a full disk, what a rerun resumes.

* A new checkpoint generation (its arrays, its JSON, the best weights it
  names) is on disk, each file and its folder fsynced, before the previous
  generation is deleted: recorded from the real ``os.fsync`` calls.
* A full disk (ENOSPC) or quota (EDQUOT) while a checkpoint or the best
  weights are written ends the job in one line that names the folder and the
  generation kept; the rerun resumes from it. Injected with
  ``MOSBENCH_FAULT=point:n:ENOSPC`` (:mod:`mosbench.faults`): a real full file
  system needs root to mount.
* A checkpoint of other train code or other data is not resumed; one of an
  older format is kept and named.
* A failed or paused ``mosbench train`` / ``evaluate`` rerun leaves none of
  the previous run's outputs (a paused train keeps its checkpoint).

Real engines (PyTorch, the quickest here) on the tiny corpus, a real MLflow
store (one for the module: creating one takes seconds), the real command.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY_CONFIG
from mosbench import faults
from mosbench.cli import main
from mosbench.code_hash import PACKAGE_ROOT, ROOT_ENV
from mosbench.engines import load_engine
from mosbench.errors import PAUSED_EXIT_CODE, MosbenchError, TrainingPaused
from mosbench.training import checkpoint
from mosbench.training.train import SUMMARY, WEIGHTS, _save_best, train

FRAMEWORK = "pytorch"
RUN = Path(f"results/train/{FRAMEWORK}/tiny/lstm/seed1-gpus0")
TRAIN = ["train", "tiny", "lstm", "--seed", "1", "--framework", FRAMEWORK]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's jobs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def frozen_code(tmp_path_factory):
    """The train code's hash taken from a copy of the package, so that a source edited
    while these tests run cannot turn a resume into a fresh start."""
    code = tmp_path_factory.mktemp("code") / "mosbench"
    shutil.copytree(PACKAGE_ROOT, code, ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_ENV, str(code))
        yield code


@pytest.fixture
def workdir(tmp_path, tiny_data, store, frozen_code, monkeypatch):
    """A project folder with the tiny corpus tokenised and a config; the command runs here."""
    shutil.copytree(tiny_data, tmp_path / "results" / "data" / "tiny")
    (tmp_path / "config.yaml").write_text(TINY_CONFIG.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(faults, "_arrivals", {})  # fault points count per test, not per process
    return tmp_path


def command(capsys, *argv):
    """``mosbench --config config.yaml ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["--config", "config.yaml", *argv])
    out, err = capsys.readouterr()
    return status, out, err


# --- 1. the previous generation stays until the next one is on disk ----------------------

def test_a_generation_is_on_disk_before_the_previous_one_is_deleted(tmp_path, monkeypatch):
    hparams = dict(emsize=8, nhid=8, nlayers=1, dropout=0.0, tie_weights=True, init_range=0.1,
                   lr=1.0, clip=0.25, small_batch_size=None)
    engine = load_engine(FRAMEWORK)
    engine.build("lstm", 20, hparams)
    engine.prepare_training(hparams, 4)

    events = []  # ("fsync", path) / ("replace", from, to) / ("unlink", path), in order
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, **kwargs)

    def unlink(path, **kwargs):
        events.append(("unlink", os.path.realpath(path)))
        return real_unlink(path, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)

    state = {}
    for epoch in (1, 2):  # as train() does at an epoch end: the best weights, then the checkpoint
        events.clear()  # keep the second generation's
        state["epoch"] = epoch
        state["keep"] = [_save_best(engine, False, tmp_path, epoch, state.get("generation", 0))]
        checkpoint.save(tmp_path, engine, state)

    folder = os.path.realpath(tmp_path)
    old = {os.path.join(folder, name) for name in ("checkpoint-1.npz", "best-1.weights.npz")}
    deletions = [i for i, event in enumerate(events) if event[0] == "unlink" and event[1] in old]
    assert {events[i][1] for i in deletions} == old  # the previous generation did go
    for name in ("best-2.weights.npz", "checkpoint-2.npz", checkpoint.STATE):
        final = os.path.join(folder, name)
        renamed = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final)
        assert ("fsync", events[renamed][1]) in events[:renamed], f"{name} renamed unsynced"
        assert ("fsync", folder) in events[renamed + 1:deletions[0]], \
            f"the folder not fsynced after {name}'s rename, before the old generation went"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-2.weights.npz", "checkpoint-2.npz", "checkpoint.json"]


# --- 2. a full disk while a checkpoint or the best weights are written ---------------------

@pytest.mark.parametrize(("point", "error", "writing", "strerror"), [
    ("checkpoint-npz", "ENOSPC", "checkpoint-2.npz", "No space left on device"),
    ("checkpoint-arrays", "EDQUOT", "checkpoint.json", "Disk quota exceeded"),  # the JSON's write
    ("best-weights", "ENOSPC", "best-2.weights.npz", "No space left on device"),
])
def test_a_full_disk_keeps_the_previous_generation_and_says_so(point, error, writing, strerror,
                                                               workdir, monkeypatch, capsys):
    monkeypatch.setenv("MOSBENCH_FAULT", f"{point}:2:{error}")  # at epoch 2's end
    status, _, err = command(capsys, *TRAIN)
    assert status == 2, err
    assert "Traceback" not in err and "Errno" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"mosbench: error: {RUN}: {strerror} while writing {writing}; the previous checkpoint "
        "(generation 1) is kept and a rerun resumes from it. Free space (or raise the quota) "
        "and run the job again")

    # nothing lost: generation 1 whole (its arrays hash to what its JSON says), no temporaries
    state = json.loads((RUN / checkpoint.STATE).read_text())
    assert state["generation"] == 1 and state["epoch"] == 1
    assert hashlib.sha256((RUN / state["arrays"]).read_bytes()).hexdigest() == state["sha256"]
    assert (RUN / state["best_file"]).exists()
    assert not [p.name for p in RUN.iterdir() if p.name.startswith(".")]
    assert not (RUN / WEIGHTS).exists() and not (RUN / SUMMARY).exists()

    monkeypatch.delenv("MOSBENCH_FAULT")  # space freed
    status, out, err = command(capsys, *TRAIN)
    assert status == 0, err
    assert "resuming at epoch 2, window position 0" in out
    summary = json.loads((RUN / SUMMARY).read_text())
    assert [r["epoch"] for r in summary["history"]] == [1, 2]


# --- 3. a checkpoint of other code or data is not resumed ----------------------------------

def _pause(data, out_dir, tiny_config, **kwargs):
    """Train until the first step is done, then pause (a wall-time budget of ~0 s)."""
    with pytest.raises(TrainingPaused):
        train(data, out_dir, dataset="tiny", model_name="lstm", seed=1, gpus=0,
              hparams=tiny_config["presets"]["tiny"]["lstm"], experiment="durability",
              framework=FRAMEWORK, wall_time_s=1e-9, **kwargs)


def _other_data(tiny_data, folder):
    """The tiny corpus with its training ids reversed: same metadata, other data."""
    shutil.copytree(tiny_data, folder)
    table = pq.read_table(folder / "train.parquet")
    ids = table.column("id").to_numpy()[::-1].copy()
    pq.write_table(table.set_column(0, "id", [ids]), folder / "train.parquet")
    return folder


@pytest.mark.parametrize("change", ["code", "data"])
def test_a_checkpoint_of_other_code_or_data_is_not_resumed(change, tiny_config, tiny_data,
                                                           tmp_path, store, frozen_code,
                                                           capsys):
    out_dir = tmp_path / "train"
    before, after = ({"code_hash": "0" * 16}, {"code_hash": "1" * 16}) if change == "code" \
        else ({}, {})
    data_after = _other_data(tiny_data, tmp_path / "other") if change == "data" else tiny_data
    _pause(tiny_data, out_dir, tiny_config, **before)
    written = json.loads((out_dir / checkpoint.STATE).read_text())["fingerprint"]
    capsys.readouterr()

    _pause(data_after, out_dir, tiny_config, **after)
    out = capsys.readouterr().out
    assert f"{out_dir}: the checkpoint there is of other settings; starting afresh" in out
    assert "resuming" not in out
    now = json.loads((out_dir / checkpoint.STATE).read_text())["fingerprint"]
    assert now[change] != written[change]
    assert {k: v for k, v in now.items() if k != change} == \
        {k: v for k, v in written.items() if k != change}

    _pause(data_after, out_dir, tiny_config, **after)  # the same code and data do resume
    assert "resuming at epoch 1" in capsys.readouterr().out


def test_an_older_format_checkpoint_is_kept_and_named(tiny_config, tiny_data, tmp_path, store,
                                                       frozen_code):
    out_dir = tmp_path / "train"
    _pause(tiny_data, out_dir, tiny_config)
    path = out_dir / checkpoint.STATE
    state = json.loads(path.read_text())
    # as mosbench wrote it before: format 3, no code hash or data digest in the fingerprint
    state["format_version"] = 3
    for key in ("code", "data"):
        state["fingerprint"].pop(key, None)
    path.write_text(json.dumps(state))
    files = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}
    with pytest.raises(MosbenchError) as error:
        train(tiny_data, out_dir, dataset="tiny", model_name="lstm", seed=1, gpus=0,
              hparams=tiny_config["presets"]["tiny"]["lstm"], experiment="durability",
              framework=FRAMEWORK)
    assert str(error.value).startswith(
        f"{path}: checkpoint format 3, expected {checkpoint.FORMAT_VERSION} (written by another "
        "version of mosbench); it is kept. To start afresh, delete")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()} == files


# --- 4. a failed rerun of the command leaves no outputs of the previous run ----------------

def test_a_paused_train_rerun_removes_the_previous_outputs_and_keeps_its_checkpoint(
        workdir, monkeypatch, capsys):
    RUN.mkdir(parents=True)
    np.savez(RUN / WEIGHTS, w=np.zeros(3))  # a previous run's outputs
    (RUN / SUMMARY).write_text('{"best_valid_loss": 1.0}')
    monkeypatch.setenv("MOSBENCH_FAULT", "train-step:1:SIGTERM")  # SLURM's warning, 1st step
    status, _, err = command(capsys, *TRAIN)
    assert status == PAUSED_EXIT_CODE, err
    assert not (RUN / WEIGHTS).exists() and not (RUN / SUMMARY).exists()
    assert checkpoint.exists(RUN)


def test_a_failed_evaluate_rerun_removes_the_previous_metrics(workdir, capsys):
    metrics = Path(str(RUN).replace("results/train", "results/evaluate")) / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"test_ppl": 6.0}')  # a previous run's; its training is gone since
    status, _, err = command(capsys, "evaluate", *TRAIN[1:])
    assert status == 2, err
    assert f"{RUN / SUMMARY} is missing" in err
    assert not metrics.exists()
