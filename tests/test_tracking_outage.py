"""A tracking server that goes away during a job: the job goes on, and no metric is lost.

A real ``mlflow server`` on loopback, killed (SIGKILL of its process group,
as a crash) while a real tiny training runs, and started again on the same
port and store; or not there at all until the job is over, when
``mosbench replay-tracking`` (the installed command) delivers what the jobs
kept, twice, logging nothing twice; or not there for a whole workflow run,
which still completes, every stage keeping its calls, and one replay of
``results`` afterwards delivers them all.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, TINY_CONFIG
from mosbench import paths
from mosbench.errors import TrainingPaused
from mosbench.evaluation.evaluate import evaluate
from mosbench.tracking.mlflow_run import aggregate_experiment, epoch_metrics
from mosbench.tracking.spool import SPOOL
from mosbench.tracking.tracker import TOKEN_TAG
from mosbench.training import checkpoint
from mosbench.training.train import train

BIN = Path(sys.executable).parent

# One tiny training job in its own process, logging to $MLFLOW_TRACKING_URI once the
# server there answers (it imports TensorFlow meanwhile). TensorFlow, the slower to train:
# the job must outlast several of the system-metrics sampler's half-second intervals.
TRAIN_JOB = """
import json, os, sys, time, urllib.request
from mosbench.training.train import train
for _ in range(600):
    try:
        urllib.request.urlopen(os.environ["MLFLOW_TRACKING_URI"] + "/health", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
train(sys.argv[1], sys.argv[2], dataset="tiny", model_name="lstm", seed=3, gpus=0,
      framework="tensorflow", hparams=json.loads(sys.argv[3]), experiment="outage",
      config_snapshot={"job": "outage"})
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1:``port`` over an SQLite store in ``folder``."""

    def __init__(self, folder, port):
        self.folder, self.port = Path(folder), port
        self.uri = f"http://127.0.0.1:{port}"
        self.process = None

    def start(self):
        return self.launch().wait_up()

    def launch(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "mlartifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners
        with open(self.folder / "server.log", "a") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # its own process group
        return self

    def wait_up(self):
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).read()
                return self
            except OSError:
                assert self.process.poll() is None, (self.folder / "server.log").read_text()
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.3)

    def stop(self, sig=signal.SIGTERM):
        """Signal the server's whole process group; return once the port is closed."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"port {self.port} still answers after the server was stopped")


@pytest.fixture
def servers():
    """Servers a test starts, stopped at its end whatever happens."""
    started = []

    def make(folder, port=None):
        server = Server(folder, port or free_port())
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(signal.SIGKILL)


def assert_logged_once(client, run_id, history, single=()):
    """Every epoch's metrics once each, equal to train.json's; each of ``single`` once."""
    for key in epoch_metrics(history[0]):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(logged) == [(r["epoch"], pytest.approx(epoch_metrics(r)[key]))
                                  for r in history], key
    for key in single:
        assert len(client.get_metric_history(run_id, key)) == 1, key


def test_server_killed_mid_job_and_restarted(tiny_config, tiny_data, tmp_path, servers):
    server = servers(tmp_path / "store").launch()  # the job waits for it to answer
    out = tmp_path / "train"
    hparams = dict(tiny_config["presets"]["tiny"]["lstm"], epochs=3)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "MOSBENCH_TRACKING_WAIT_S": "180",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}
    with open(tmp_path / "job.err", "w") as err:
        job = subprocess.Popen([sys.executable, "-c", TRAIN_JOB, str(tiny_data), str(out),
                                json.dumps(hparams)], stdout=subprocess.PIPE, stderr=err,
                               env=env, text=True)
    try:
        # "epoch 2" is printed after epoch 1 was logged and before epoch 2 is: freeze the
        # job there, crash the server, and let the job go on while the server is away.
        for line in job.stdout:
            if line.startswith("epoch   2"):
                job.send_signal(signal.SIGSTOP)
                break
        else:
            pytest.fail(f"the job ended early: {(tmp_path / 'job.err').read_text()[-3000:]}")
        server.stop(signal.SIGKILL)
        job.send_signal(signal.SIGCONT)
        time.sleep(1)
        server.start()  # same port, same store
        job.stdout.read()
        assert job.wait(timeout=300) == 0, (tmp_path / "job.err").read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    log = (tmp_path / "job.err").read_text()
    assert "cannot take calls now" in log and "answers again" in log  # the outage was felt

    summary = json.loads((out / "train.json").read_text())
    assert [r["epoch"] for r in summary["history"]] == [1, 2, 3]
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # one run, the job's
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mosbench.state"] == "finished"
    assert any(key.startswith("system/") for key in run.data.metrics)  # its sampler ran too
    assert_logged_once(client, summary["run_id"], summary["history"],
                       single=("best_valid_loss", "measurements/epoch_time_s"))
    assert {a.path for a in client.list_artifacts(summary["run_id"])} >= {"train.json",
                                                                           "config.yaml"}
    assert not (out / SPOOL).exists()  # all delivered, nothing kept


def test_server_never_back_then_replay_twice(tiny_config, tiny_data, tmp_path, monkeypatch,
                                             servers):
    server = servers(tmp_path / "store").launch()  # another port: the jobs never see it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("MOSBENCH_TRACKING_WAIT_S", "0")
    hparams = tiny_config["presets"]["tiny"]["lstm"]
    out, metrics_file = tmp_path / "train", tmp_path / "evaluate" / "metrics.json"

    def job(**kwargs):
        return train(tiny_data, out, dataset="tiny", model_name="lstm", seed=3, gpus=0,
                     framework="pytorch", hparams=hparams, experiment="outage",
                     config_snapshot=tiny_config, **kwargs)

    # paused after one step, before the run could be created: the checkpoint names it pending
    with pytest.raises(TrainingPaused):
        job(wall_time_s=1e-9)
    pending = json.loads((out / checkpoint.STATE).read_text())["run_id"]
    assert pending.startswith("pending:")
    summary = job()  # resumed into the same (still pending) run
    assert summary["run_id"] == pending
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert (out / "model.weights.npz").exists() and summary["measurements"]["epoch_time_s"] > 0
    metrics = evaluate(tiny_data, out, metrics_file, model_name="lstm", hparams=hparams,
                       experiment="outage", framework="pytorch")
    assert json.loads(metrics_file.read_text()) == metrics and metrics["test_ppl"] > 1
    assert (out / SPOOL).exists() and (metrics_file.parent / SPOOL).exists()

    server.wait_up()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    replay = [str(BIN / "mosbench"), "--config", str(TINY_CONFIG), "replay-tracking",
              str(metrics_file.parent), str(out)]  # in any order: evaluate waits for train
    spools = {path: path.read_bytes() for path in (out / SPOOL, metrics_file.parent / SPOOL)}

    def replay_once():
        done = subprocess.run(replay, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "delivered" in replay_once()
    assert not any(path.exists() for path in spools)  # all delivered: nothing kept
    assert replay_once().count("nothing kept") == 2
    # As if a replay had died after sending everything and before marking any of it sent:
    # sent again, the calls must find the run and every metric value already there.
    for path, content in spools.items():
        path.write_bytes(content)
    again = replay_once()
    for path, content in spools.items():
        values = sum(len(json.loads(line).get("metrics", ()))
                     for line in content.decode().splitlines())
        assert f"{path.parent}: delivered to {server.uri}; {values} metric value(s) already " \
               "there" in again, again  # every one of them
    assert not any(path.exists() for path in spools)

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags[TOKEN_TAG] == pending.removeprefix("pending:")
    assert run.info.status == "FINISHED" and run.info.run_name == "pytorch-tiny-lstm-seed3-gpus0"
    assert run.data.params["n_params"] == str(summary["n_params"])
    assert run.data.metrics["test_ppl"] == pytest.approx(metrics["test_ppl"])
    assert_logged_once(client, run.info.run_id, summary["history"],
                       single=("best_valid_loss", "measurements/epoch_time_s", "test_ppl",
                               "latency_ms_median"))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "train.json", "metrics.json", "config.yaml"}


AWAY = ("pytorch",)  # the frameworks of the workflow run while the server is away

@pytest.mark.slow
def test_a_workflow_run_without_its_server_completes_and_one_replay_delivers_it(tmp_path,
                                                                                servers):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    # One job per stage: the spool and its replay are the tracker's, the same for every
    # framework (tests/test_engine_conformance.py covers the engines); PyTorch starts fastest.
    config["run"].update(frameworks=list(AWAY), models=["lstm"], seeds=[1])
    config["run"]["probes"]["enabled"] = False  # probes log nothing to MLflow
    config["mlflow"]["experiment"] = "away"
    configfile = tmp_path / "away.yaml"
    configfile.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MOSBENCH_"))}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # a closed port
    began = time.monotonic()
    done = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(work), "--configfile", str(configfile),
                           "--cores", "2"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    wall_s = time.monotonic() - began
    print(f"workflow with the tracking server away: exit {done.returncode}, {wall_s:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    results = work / "results"
    assert all((results / "aggregate" / name).stat().st_size > 0
               for name in paths.AGGREGATE_OUTPUTS.values())

    # every stage that talks to MLflow kept its calls, said so, and waited for nothing
    jobs = [f"{stage}/{framework}/tiny/lstm/seed1-gpus0" for stage in ("train", "evaluate")
            for framework in AWAY] + ["aggregate"]
    assert sorted(p.parent.relative_to(results).as_posix()
                  for p in results.rglob(SPOOL)) == sorted(jobs)
    for job in jobs:
        log = (work / "logs" / (f"{job}.log" if job != "aggregate" else "aggregate/aggregate.log")
               ).read_text()
        assert log.count("cannot take calls now (Connection refused)") == 1, job
        assert log.count("not delivered (waited 0 s)") == 1, job
        assert "Traceback" not in log, job

    server = servers(tmp_path / "store").start()
    replay = [str(BIN / "mosbench"), "--config", str(configfile), "replay-tracking",
              str(results)]
    env["MLFLOW_TRACKING_URI"] = server.uri
    for attempt in range(2):  # the second finds nothing left to send
        done = subprocess.run(replay, cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("delivered to") == (3 if attempt == 0 else 0), done.stdout
    assert not list(results.rglob(SPOOL))
    assert "nothing kept" in done.stdout

    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("away").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{f}-tiny-lstm-seed1-gpus0"
                                                     for f in AWAY]
    for run in runs:
        framework = run.data.tags["framework"]
        summary = json.loads((results / "train" / framework / "tiny" / "lstm" / "seed1-gpus0" /
                              "train.json").read_text())
        assert summary["run_id"] == f"pending:{run.data.tags[TOKEN_TAG]}"
        assert run.info.status == "FINISHED" and run.data.tags["mosbench.state"] == "finished"
        assert_logged_once(client, run.info.run_id, summary["history"],
                           single=("best_valid_loss", "test_ppl", "latency_ms_median"))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "train.json", "metrics.json", "config.yaml", "model.weights.npz"}
    board = client.search_runs([client.get_experiment_by_name(
        aggregate_experiment("away")).experiment_id])
    assert len(board) == 1 and board[0].info.status == "FINISHED"
    assert board[0].data.tags["mosbench.stage"] == "aggregate"
    assert {a.path for a in client.list_artifacts(board[0].info.run_id)} == set(
        paths.AGGREGATE_OUTPUTS.values())
