"""Sixteen jobs logging at once to the default embedded SQLite store lose nothing.

Each writer is its own process with its own SQLite connection, going through
the project's tracking path (``mlflow_run.connect``, then a ``Tracker``):
it creates a run, logs params, 20 steps of two metrics and an artefact, and
ends the run. All of them start logging at the same instant (a barrier), after
their imports and after the store and the experiment exist. A lone writer
does the same first, for comparison. The launcher forks the writers after
importing MLflow once, so that sixteen imports do not dominate the timing on a
small machine; nothing of the store is opened before the fork.
"""

import json
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

def writer(name, ready, go, results):
    mlflow_run.connect("concurrent")  # the store (migrated by the first) and the experiment
    folder = root / name
    tracker = Tracker(folder, "concurrent")
    ready.wait()  # everyone imported and connected
    go.wait()
    began = time.monotonic()
    tracker.create_run(name, tags={"writer": name},
                       params={f"p{i}": i for i in range(10)})
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
    procs = [fork.Process(target=writer, args=(f"{prefix}{i}", ready, go, results))
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
        assert not (tmp_path / name / SPOOL).exists(), name  # nothing left undelivered
