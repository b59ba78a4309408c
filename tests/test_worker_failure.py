"""A data-parallel worker that dies mid-step fails the job within seconds, saying why.

Two PyTorch replicas on the CPU (gloo, a real worker process) train the tiny
LSTM until the worker fails at its second step (a fault point,
``MOSBENCH_FAULT=replica-1-step:2:...``, inherited from the job's
environment): SIGKILL, as the out-of-memory killer sends it, or a Python
error (ENOMEM raised as an OSError). The job raises one WorkerError naming
the replica, its pid and how it ended, the worker's own traceback is in the
job's output, no worker survives, and the MLflow run (a real SQLite store)
ends FAILED.
"""

import re
import threading
import time

import mlflow
import psutil
import pytest

from mosbench.engines.pytorch.distributed import WorkerError
from mosbench.training.train import train

pytest.importorskip("torch")

BOUND_S = 30.0  # from the worker's death to the job's error; generous for a loaded machine
WORKER = "mosbench.engines.pytorch.worker"


def _workers():
    """This process' data-parallel workers (children started with ``-m WORKER``)."""
    return [p for p in psutil.Process().children() if WORKER in p.cmdline()]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module's jobs (a new store costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


class WorkerWatch(threading.Thread):
    """Finds this process' data-parallel worker and notes when it dies (exited or a zombie)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pid = self.died = None
        self.done = threading.Event()

    def run(self):
        worker = None
        while not self.done.is_set() and self.died is None:
            try:
                if worker is None:
                    worker = next(iter(_workers()), None)
                    self.pid = worker and worker.pid
                elif worker.status() == psutil.STATUS_ZOMBIE:
                    self.died = time.monotonic()
            except psutil.NoSuchProcess:
                if worker is not None:
                    self.died = time.monotonic()
            time.sleep(0.02)


def _train_until_the_worker_fails(tiny_config, tiny_data, out_dir, monkeypatch, fault,
                                  experiment):
    """Train on two CPU replicas with ``fault`` in the worker; the error and its delay."""
    monkeypatch.setenv("MOSBENCH_FAULT", fault)
    watch = WorkerWatch()
    watch.start()
    try:
        with pytest.raises(WorkerError) as raised:
            train(tiny_data, out_dir, dataset="tiny", model_name="lstm", seed=1, gpus=0,
                  hparams=tiny_config["presets"]["tiny"]["lstm"], experiment=experiment,
                  framework="pytorch", threads=1, devices=["cpu", "cpu"])
        failed = time.monotonic()
    finally:
        watch.done.set()
        watch.join()
    assert watch.pid and watch.died, "the worker was not seen to start and die"
    assert not _workers(), "a worker outlived the failure"
    return str(raised.value), watch.pid, failed - watch.died


def _status(experiment):
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert len(runs) == 1
    return runs.iloc[0]["status"]


def test_a_worker_killed_mid_step_fails_the_job_within_seconds(tiny_config, tiny_data, store,
                                                                tmp_path, monkeypatch):
    message, pid, delay = _train_until_the_worker_fails(
        tiny_config, tiny_data, tmp_path / "train", monkeypatch, "replica-1-step:2:SIGKILL",
        "worker-killed")
    print(f"\nthe job failed {delay:.2f} s after its worker died: {message}")
    assert re.match(rf"replica 1 \(pid {pid}\) was killed by SIGKILL \(it leaves no traceback",
                    message), message
    assert delay < BOUND_S
    assert _status("worker-killed") == "FAILED"


def test_a_worker_error_mid_step_puts_its_traceback_in_the_job_output(
        tiny_config, tiny_data, store, tmp_path, monkeypatch, capfd):
    message, pid, delay = _train_until_the_worker_fails(
        tiny_config, tiny_data, tmp_path / "train", monkeypatch, "replica-1-step:2:ENOMEM",
        "worker-error")
    output = capfd.readouterr().err  # the job's stderr: the worker's too
    raised = "OSError: [Errno 12] Cannot allocate memory"
    # The worker wrote the whole traceback itself, when it failed
    written = re.search(rf"^mosbench: replica 1 \(pid {pid}\) failed:\n"
                        r"Traceback \(most recent call last\):\n(.+\n)+?" + re.escape(raised),
                        output, re.MULTILINE)
    assert written and "in train_step" in written[0], output[-3000:]
    # ... and the job's error quotes its last lines
    assert message.startswith(f"replica 1 (pid {pid}) exited with code 1 after an error"), message
    assert message.endswith(raised) and "in train_step" in message, message
    assert delay < BOUND_S
    assert _status("worker-error") == "FAILED"
