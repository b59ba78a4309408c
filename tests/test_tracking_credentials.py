"""Tracking credentials stay secret, and a spool is data, never instructions.

A tracking URI with ``user:password@`` reaches no file and no message of a real
training job whose server hangs up on every request (a socket server that
records what it was sent), yet every request carries the credentials; the
job's spool is readable by its owner only.
``mosbench replay-tracking`` delivers to the store it is given
(``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), never to the one a spool
names, and uploads no file from outside the spool's job folder. The stores
are real SQLite MLflow stores; the spools are written by a real Tracker whose
server is a closed port, then edited as anyone who can write the results
folder could.
"""

import base64
import contextlib
import json
import socket
import socketserver
import stat
import threading

import pytest
from mlflow import MlflowClient

from conftest import TINY_CONFIG
from mosbench.cli import main
from mosbench.tracking.spool import SPOOL, Spool
from mosbench.tracking.tracker import Tracker
from mosbench.training.train import train

PASSWORD = "s3cret-5e1d9a"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replay_tracking(*args):
    return main(["--config", str(TINY_CONFIG), "replay-tracking", *map(str, args)])


class HangUp(socketserver.BaseRequestHandler):
    """Reads a request's head, keeps it, and closes without answering."""

    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head and (chunk := self.request.recv(65536)):
            head += chunk
        self.server.heads.append(head)


@contextlib.contextmanager
def hanging_up_server():
    """A loopback server that takes no call; yields its port and the heads it read."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), HangUp) as server:
        server.daemon_threads, server.heads = True, []
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1], server.heads
        finally:
            server.shutdown()


@pytest.fixture
def credentials_env(monkeypatch):
    """MLflow's credential variables, restored after the test (the tracker may set them)."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("MOSBENCH_TRACKING_WAIT_S", "0")
    return monkeypatch


def test_credentials_in_the_uri_reach_no_file_and_no_message(tiny_config, tiny_data, tmp_path,
                                                             credentials_env, capfd):
    out = tmp_path / "train"
    # one epoch of few, wide batches: a few steps, and the same MLflow calls as any job
    hparams = dict(tiny_config["presets"]["tiny"]["lstm"], epochs=1, batch_size=64,
                   eval_batch_size=32)
    with hanging_up_server() as (port, heads):
        uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
        credentials_env.setenv("MLFLOW_TRACKING_URI", uri)
        train(tiny_data, out, dataset="tiny", model_name="lstm", seed=5, gpus=0,
              hparams=hparams, experiment="credentials", config_snapshot=tiny_config,
              prices=tiny_config["cost"],
              framework="pytorch")  # the quicker engine to start: the tracking is the same
        spool = out / SPOOL
        assert spool.exists() and stat.S_IMODE(spool.stat().st_mode) == 0o600  # owner's only
        # and a replay to the same server, the credentials on its command line
        assert replay_tracking(out, "--tracking-uri", uri) == 2
    # MLflow's API requests still carry them, as basic auth (later tries stopped at the
    # tracker's /health probe)
    api = [head for head in heads if b" /api/" in head.split(b"\r\n")[0]]
    auth = b"authorization: basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).lower()
    assert api and all(auth in head.lower() for head in api), heads

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert spool in files and (out / "train.json").exists()
    assert [p for p in files if PASSWORD.encode() in p.read_bytes()] == []
    printed = "".join(capfd.readouterr())
    assert PASSWORD not in printed
    assert f"store at http://127.0.0.1:{port} cannot" in printed  # named, without them


@pytest.fixture(scope="module")
def given_store(tmp_path_factory):
    """The real SQLite store replays are given (made once: its tables take seconds)."""
    return sqlite_store(tmp_path_factory.mktemp("given"))


def sqlite_store(folder):
    return f"sqlite:///{folder / 'mlflow.db'}"


def kept_run(folder, experiment, recorded_uri):
    """A run a job logged while its store was away, every call kept in ``folder``'s spool,
    whose records then say they were for ``recorded_uri``. Returns the run's reference."""
    tracker = Tracker(folder, experiment, uri=f"http://127.0.0.1:{closed_port()}")
    tracker.create_run("kept-run", tags={"mosbench.stage": "train"}, params={"lr": 1},
                       dicts={"config.yaml": {"lr": 1}})
    tracker.log_metrics({"valid_ppl": 5.0}, step=1)
    (folder / "train.json").write_text("{}")
    tracker.log_artifact(folder / "train.json")
    assert tracker.end_run(wait_s=0) is False  # all of it kept
    spool = folder / SPOOL
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert records and all("done" not in r for r in records)
    spool.write_text("".join(json.dumps({**r, "uri": recorded_uri}) + "\n" for r in records))
    return tracker.run_id


def runs_of(uri, experiment):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_replay_without_a_uri_fails_and_sends_nothing_where_the_spool_says(
        tmp_path, credentials_env, capsys):
    credentials_env.delenv("MLFLOW_TRACKING_URI", raising=False)
    job, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    job.mkdir()
    kept_run(job, "no-uri", sqlite_store(elsewhere))
    before = (job / SPOOL).read_bytes()
    capsys.readouterr()  # what the job said

    assert replay_tracking(job) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "--tracking-uri" in err and "MLFLOW_TRACKING_URI" in err
    assert f"the jobs logged to {sqlite_store(elsewhere)}" in err  # a hint, not a target
    assert not (elsewhere / "mlflow.db").exists()  # the spool's store was never opened
    assert (job / SPOOL).read_bytes() == before  # nothing marked sent


def test_replay_delivers_to_the_given_store_only(tmp_path, given_store, credentials_env,
                                                 capsys):
    elsewhere = tmp_path / "elsewhere"
    credentials_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    job = tmp_path / "job"
    job.mkdir()
    kept_run(job, "given-only", sqlite_store(elsewhere))

    assert replay_tracking(job, "--tracking-uri", given_store) == 0  # over the env's
    assert f"delivered to {given_store}" in capsys.readouterr().out
    client, runs = runs_of(given_store, "given-only")
    assert [r.info.run_name for r in runs] == ["kept-run"] and runs[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"train.json",
                                                                            "config.yaml"}
    assert not (elsewhere / "mlflow.db").exists()
    assert not (job / SPOOL).exists()


def test_kept_artefacts_outside_the_job_folder_are_refused(tmp_path, given_store,
                                                           credentials_env, capsys):
    job = tmp_path / "job"
    job.mkdir()
    run = kept_run(job, "outside", given_store)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the job's\n")
    (job / "link.txt").symlink_to(outside)  # inside by its name, outside once resolved
    kept = Spool(job / SPOOL)
    for path in ("/etc/passwd", job / "link.txt", job / ".." / "outside.txt"):
        kept.append({"uri": given_store, "experiment": "outside", "run": run,
                     "op": "log_artifact", "path": str(path)})

    assert replay_tracking(job, "--tracking-uri", given_store) == 0
    out, err = capsys.readouterr()
    refused = [line for line in err.splitlines() if "outside the job folder" in line]
    assert len(refused) == 3 and "/etc/passwd" in refused[0], err
    assert all(str(outside) in line for line in refused[1:]), err
    assert "3 call(s) naming a file outside the job folder" in out
    client, runs = runs_of(given_store, "outside")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the rest delivered
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"train.json",
                                                                            "config.yaml"}
    assert not (job / SPOOL).exists()  # refused for good, not kept to try again
