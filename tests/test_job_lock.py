"""One trainer per job folder: a live holder stops a second trainer; a dead one is taken over."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import TINY_CONFIG
from mosbench import faults, paths
from mosbench.cli import main
from mosbench.errors import PAUSED_EXIT_CODE, MosbenchError
from mosbench.training import checkpoint, job_lock
from mosbench.training.train import SUMMARY, WEIGHTS, train

# A trainer's lock without the training: holds the lock of argv[1] until stdin closes.
# argv[2]: its heartbeat in seconds; argv[3], if given: the host name it claims to run on.
HOLD = """
import sys
from mosbench.training import job_lock
job_lock.HEARTBEAT_S = float(sys.argv[2])
if len(sys.argv) > 3:
    machine = job_lock._machine
    job_lock._machine = lambda: {**machine(), "hostname": sys.argv[3]}
with job_lock.JobLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(folder, heartbeat_s=30.0, host=None):
    """A real process holding ``folder``'s lock (it has said so when this returns)."""
    argv = [sys.executable, "-c", HOLD, str(folder), str(heartbeat_s), *([host] if host else [])]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


COMMAND = ["--config", "config.yaml", "train", "tiny", "lstm", "--seed", "1", "--framework",
           "pytorch"]


def _train(tiny_config, data, out, **overrides):
    hparams = dict(tiny_config["presets"]["tiny"]["lstm"], epochs=1, **overrides)
    return train(data, out, dataset="tiny", model_name="lstm", seed=3, gpus=0, hparams=hparams,
                 experiment="unit", framework="pytorch")


def _workdir(tmp_path, monkeypatch, tiny_data):
    """Run `mosbench` in ``tmp_path`` (its config, its data); return COMMAND's job folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / paths.DATA.format(dataset="tiny")).symlink_to(tiny_data)
    shutil.copyfile(TINY_CONFIG, tmp_path / "config.yaml")
    return tmp_path / paths.TRAIN.format(framework="pytorch", dataset="tiny", model="lstm",
                                         seed=1, gpus=0)


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def _lock_of_another_host(folder, heartbeat_age_s):
    """The lock a trainer on another node left, its last heartbeat ``heartbeat_age_s`` ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / job_lock.LOCK
    path.write_text(json.dumps({**job_lock.holder_record(), "hostname": "node-elsewhere",
                                "pid": 4242, "slurm_job_id": "981"}))
    beat = time.time() - heartbeat_age_s
    os.utime(path, (beat, beat))
    return path


def _acquire_within(folder, seconds):
    """``JobLock(folder).acquire()`` with a deadline: the lock, or the MosbenchError it raised."""
    outcome = []

    def second_trainer():
        try:
            outcome.append(job_lock.JobLock(folder).acquire())
        except MosbenchError as error:
            outcome.append(error)

    thread = threading.Thread(target=second_trainer, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the second trainer still waits after {seconds} s"
    return outcome[0]


def test_second_trainer_stops_at_once_and_touches_nothing(tiny_config, tiny_data, tmp_path,
                                                          mlflow_store):
    out = tmp_path / "train"
    out.mkdir()
    # a checkpoint of other settings: a trainer that got in would delete it and start afresh
    (out / checkpoint.STATE).write_text(json.dumps({"format_version": checkpoint.FORMAT_VERSION,
                                                    "fingerprint": {"seed": 99}}))
    (out / "checkpoint-4.npz").write_bytes(b"the first trainer's arrays")
    holder = _holder(out)
    try:
        before = _files(out)
        started = time.monotonic()
        with pytest.raises(MosbenchError) as refused:
            _train(tiny_config, tiny_data, out)
        assert time.monotonic() - started < 2  # at once: not after loading the engine
        assert _files(out) == before  # the holder's lock too
    finally:
        holder.kill()
        holder.wait()
    message = str(refused.value)
    assert "\n" not in message and str(out / job_lock.LOCK) in message
    assert f"pid {holder.pid} on " in message and "its process runs on this host" in message


def test_lock_of_a_killed_trainer_is_taken_over_and_released_at_a_pause(
        tiny_data, tmp_path, mlflow_store, monkeypatch, capsys):
    out = _workdir(tmp_path, monkeypatch, tiny_data)
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # nothing of it runs to remove the lock
    holder.wait()
    assert (out / job_lock.LOCK).exists()
    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv("MOSBENCH_FAULT", "train-step:1:SIGTERM")  # SLURM's warning, at once
    assert main(COMMAND) == PAUSED_EXIT_CODE
    said = capsys.readouterr().out
    assert f"taking over the lock of pid {holder.pid} on " in said
    assert f"process {holder.pid} has ended" in said
    assert checkpoint.exists(out)  # it trained
    assert not (out / job_lock.LOCK).exists()


def test_lock_without_heartbeat_for_the_lease_is_taken_over_and_released_at_the_end(
        tiny_config, tiny_data, tmp_path, mlflow_store, capsys):
    out = tmp_path / "train"
    _lock_of_another_host(out, heartbeat_age_s=job_lock.LEASE_S + 60)
    summary = _train(tiny_config, tiny_data, out)
    assert [r["epoch"] for r in summary["history"]] == [1]
    said = capsys.readouterr().out
    assert "taking over the lock of pid 4242 on node-elsewhere, SLURM job 981" in said
    assert f"no heartbeat for {job_lock.LEASE_S + 60:.0f} s" in said
    assert not [p.name for p in out.iterdir() if p.name.startswith(job_lock.LOCK)]


def test_lock_is_released_when_the_job_fails(tiny_config, tiny_data, tmp_path, mlflow_store):
    holder = _holder(tmp_path)
    holder.kill()
    holder.wait()
    with pytest.raises(MosbenchError, match="gpus=64 was asked for"):
        train(tiny_data, tmp_path, dataset="tiny", model_name="lstm", seed=1, gpus=64,
              hparams=tiny_config["presets"]["tiny"]["lstm"], experiment="unit",
              framework="pytorch")
    assert not (tmp_path / job_lock.LOCK).exists()


def test_holder_elsewhere_whose_heartbeat_goes_on_stops_a_second_trainer(tmp_path, monkeypatch):
    monkeypatch.setattr(job_lock, "LEASE_S", 3.0)  # ten beats
    monkeypatch.setattr(job_lock, "POLL_S", 0.05)
    holder = _holder(tmp_path, heartbeat_s=0.3, host="node-elsewhere")
    try:
        refused = _acquire_within(tmp_path, seconds=2)  # a beat, not the lease
        assert isinstance(refused, MosbenchError), "took a live holder's lock"
        assert "its heartbeat went on while this trainer watched" in str(refused)
        holder.stdin.close()  # the holder ends as trainers do, and removes its own lock
        assert holder.wait(timeout=10) == 0
    finally:
        holder.kill()
    assert not (tmp_path / job_lock.LOCK).exists()


def test_holder_elsewhere_whose_heartbeat_stopped_is_taken_over_after_the_lease(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(job_lock, "LEASE_S", 1.0)
    monkeypatch.setattr(job_lock, "POLL_S", 0.05)
    path = _lock_of_another_host(tmp_path, heartbeat_age_s=0)  # its node died just now
    started = time.monotonic()
    with job_lock.JobLock(tmp_path):
        assert time.monotonic() - started >= 0.9  # it waited for the lease
        assert json.loads(path.read_text())["pid"] == os.getpid()
    said = capsys.readouterr().out
    assert "held by pid 4242 on node-elsewhere" in said and "taking over the lock" in said


def test_a_lock_that_changed_since_it_was_judged_stale_is_not_removed(tmp_path):
    """Two trainers that find the same stale lock: the slower one must not remove the new one."""
    path = _lock_of_another_host(tmp_path, heartbeat_age_s=job_lock.LEASE_S + 60)
    stale = job_lock._look(path)
    path.unlink()  # the faster trainer took it over ...
    holder = _holder(tmp_path)  # ... and holds it now
    try:
        job_lock.JobLock(tmp_path)._take_over(stale, None, "no heartbeat")
        assert json.loads(path.read_text())["pid"] == holder.pid
        assert not path.with_name(job_lock.LOCK + ".takeover").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_command_refused_by_the_lock_deletes_no_outputs(tiny_data, tmp_path, monkeypatch,
                                                             capsys, mlflow_store):
    """`mosbench train` clears the job's old outputs first: only once it holds the lock."""
    out = _workdir(tmp_path, monkeypatch, tiny_data)
    holder = _holder(out)  # a trainer at its end: outputs written, MLflow being waited for
    try:
        for name in (WEIGHTS, SUMMARY):
            (out / name).write_text(f"the holder's {name}")
        before = _files(out)
        status = main(COMMAND)
        assert _files(out) == before
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"mosbench: error: {out / job_lock.LOCK}: this job is being "
                             f"trained by pid {holder.pid} on ")
