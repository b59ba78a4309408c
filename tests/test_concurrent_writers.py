"""Sixteen jobs logging at once to the default embedded SQLite store lose nothing.

Each writer is its own process with its own SQLite connection, going through
the project's tracking path (``mlflow_run.connect``, then a ``Tracker``):
it creates a run, logs params, the same data set as an input, 20 steps of
two metrics and an artefact, and ends the run. All of them start logging at
the same instant (a barrier), after their imports and after the store and
the experiment exist. A lone writer does the same first, for comparison. The
launcher forks the writers after importing MLflow once, so that sixteen
imports do not dominate the timing on a small machine; nothing of the store
is opened before the fork.
"""

import json
import sqlite3
import subprocess
import sys

from mlflow import MlflowClient

from mosbench.tracking.spool import SPOOL

WRITERS, STEPS = 16, 20

LAUNCHER = """
import json, multiprocessing as mp, os, sys, time
from pathlib import Path
root, writers, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 (imported once, before the forks)
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import Tracker
(root / "train.parquet").write_bytes(b"the same split for every writer")

def writer(name, ready, go, together, results):
    mlflow_run.connect("concurrent")  # the store (migrated by the first) and the experiment
    folder = root / name
    tracker = Tracker(folder, "concurrent")
    ready.wait()  # everyone imported and connected
    go.wait()
    began = time.monotonic()
    tracker.create_run(name, tags={"writer": name},
                       params={f"p{i}": i for i in range(10)})
    together.wait()  # all runs exist: the inputs go in at the same instant
    tracker.log_inputs([mlflow_run.dataset_input(root / "train.parquet", "tiny/train",
                                                 "training", 100)])
    for step in range(steps):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "step_sq": step * step}, step=step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "note.txt").write_text(name)
    tracker.log_artifact(folder / "note.txt")
    clean = tracker.end_run("FINISHED")
    results.put({"name": name, "run_id": tracker.run_id, "seconds": time.monotonic() - began,
                 "kept": tracker.last_error is not None or not clean})

def phase(count, prefix):
    fork = mp.get_context("fork")
    ready, go, results = fork.Barrier(count + 1), fork.Barrier(count + 1), fork.Queue()
    together = fork.Barrier(count)
    procs = [fork.Process(target=writer, args=(f"{prefix}{i}", ready, go, together, results))
             for i in range(count)]
    for p in procs:
        p.start()
    ready.wait()
    began = time.monotonic()
    go.wait()
    done = [results.get(timeout=300) for _ in procs]
    wall = time.monotonic() - began
    for p in procs:
        p.join()
    return {"wall_s": wall, "exit_codes": [p.exitcode for p in procs], "writers": done}

print(json.dumps({"one": phase(1, "alone"), "many": phase(writers, "w")}))
"""


def test_sixteen_writers_on_one_sqlite_store(tmp_path):
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(tmp_path), str(WRITERS),
                           str(STEPS)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    one, many = report["one"], report["many"]
    assert one["exit_codes"] == [0] and many["exit_codes"] == [0] * WRITERS
    print(f"\n1 writer: {one['wall_s']:.2f} s; {WRITERS} writers: {many['wall_s']:.2f} s "
          f"(each {min(w['seconds'] for w in many['writers']):.2f}-"
          f"{max(w['seconds'] for w in many['writers']):.2f} s); calls kept and sent later by "
          f"{sum(w['kept'] for w in many['writers'])} writer(s)")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("concurrent").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment], max_results=100)}
    names = {"alone0"} | {f"w{i}" for i in range(WRITERS)}
    assert set(runs) == names  # every run, each once
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        assert run.data.params == {f"p{i}": str(i) for i in range(10)}, name
        for key, value in (("loss", lambda s: 1.0 / (s + 1)), ("step_sq", lambda s: s * s)):
            history = sorted((m.step, m.value) for m in client.get_metric_history(
                run.info.run_id, key))
            assert history == [(s, value(s)) for s in range(STEPS)], (name, key)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"], name
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiny/train"], name
        assert not (tmp_path / name / SPOOL).exists(), name  # nothing left undelivered


RACE = """
import io, json, multiprocessing as mp, os, sys
from pathlib import Path
root, racers = Path(sys.argv[1]), int(sys.argv[2])
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 (imported once, before the forks)
from mlflow.store.tracking.dbmodels.models import SqlDataset
from sqlalchemy import event
from sqlalchemy.orm import Session
from mosbench.tracking import mlflow_run, tracker as tracking
(root / "train.parquet").write_bytes(b"one split for every job")

def connect():  # in a child: the launcher opens no store that its forks would share
    for experiment in ("without-retry", "with-retry"):
        mlflow_run.connect(experiment)

def racer(name, experiment, tries, looked_up, results):
    sys.stderr = io.StringIO()  # the tracker's messages, returned with the outcome
    pending = [True]
    def hold_the_insert(session, context, instances):
        # MLflow looked the data set up and found nothing; no racer inserts it until
        # every racer has looked: the race, every time, not by chance
        if pending[0] and any(isinstance(row, SqlDataset) for row in session.new):
            pending[0] = False
            looked_up.wait(timeout=120)
    event.listen(Session, "before_flush", hold_the_insert)
    if tries is not None:  # else the tracker's own; one try shows what the retry is for
        original = tracking._log_inputs
        tracking._log_inputs = lambda *args: original(*args, tries=tries)
    tracker = tracking.Tracker(root / name, experiment)
    tracker.create_run(name, tags={}, params={})
    try:
        tracker.log_inputs([mlflow_run.dataset_input(root / "train.parquet", "tiny/train",
                                                     "training", 100)])
        error = None
    except Exception as exc:
        error = str(exc)
    tracker.end_run("FINISHED" if error is None else "FAILED")
    results.put({"name": name, "error": error, "said": sys.stderr.getvalue()})

fork = mp.get_context("fork")
setup = fork.Process(target=connect)
setup.start()
setup.join()
report = {}
for experiment, tries in (("without-retry", 1), ("with-retry", None)):
    looked_up, results = fork.Barrier(racers), fork.Queue()
    procs = [fork.Process(target=racer, args=(f"{experiment}-{i}", experiment, tries,
                                              looked_up, results)) for i in range(racers)]
    for p in procs:
        p.start()
    report[experiment] = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
print(json.dumps(report))
"""
RACERS = 6


def test_jobs_of_one_data_set_that_log_it_at_once_all_keep_it(tmp_path):
    # MLflow's store looks a data set up and then inserts it, so jobs of one data set
    # that start together race; before the tracker retried, the losers failed with
    # "UNIQUE constraint failed: datasets..." (seen under SLURM, and here 5 of 6 by
    # chance). A barrier between the look-up and the insert makes every racer look
    # before any inserts, so exactly one wins and the others must retry.
    done = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), str(RACERS)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    retried = "another job inserted data set tiny/train at the same moment; linked that record"

    # without the retry (one try), the same race fails every racer but the winner (raised,
    # or refused on delivery had the call been kept through a busy store)
    lost = ["UNIQUE constraint failed: datasets" in f"{r['error']} {r['said']}"
            for r in report["without-retry"]]
    assert sorted(lost) == [False] + [True] * (RACERS - 1), report["without-retry"]

    # with it, the losers say they linked the winner's record, and every racer keeps it
    assert [r["error"] for r in report["with-retry"]] == [None] * RACERS, report
    assert sorted(retried in r["said"] for r in report["with-retry"]) == (
        [False] + [True] * (RACERS - 1)), [r["said"] for r in report["with-retry"]]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("with-retry").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == RACERS
    for run in runs:
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiny/train"]
        assert run.info.status == "FINISHED"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # one record, not one per racer
        assert db.execute("SELECT COUNT(*) FROM datasets WHERE experiment_id = ?",
                          (experiment,)).fetchone() == (1,)
