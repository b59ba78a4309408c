"""MLflow in one place: where runs go, how they are named, what they carry.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` and otherwise is the
embedded SQLite store ``results/mlflow.db`` with artefacts beside it in
``results/mlartifacts``. It is never a Snakemake param, so moving to a
tracking server reruns nothing. Jobs make their calls through
:class:`mosbench.tracking.tracker.Tracker`, which keeps what the store cannot
take yet.
"""

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

DEFAULT_STORE = Path("results") / "mlflow.db"


def tracking_uri():
    """``MLFLOW_TRACKING_URI`` if set, else the local SQLite store under results/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{DEFAULT_STORE.resolve()}"


def _artifact_location(uri):
    """For a local SQLite store keep artefacts next to the database, not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides where artefacts go


def git_commit():
    """The commit of the code that ran, marked ``-dirty`` with uncommitted changes."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(params, prefix=""):
    """Nested dict -> ``{"a.b": value}``, the shape MLflow params take."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def connect(experiment):
    """Point MLflow at the tracking store and select ``experiment``, creating it if needed."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id(open_store(uri), experiment, uri)
    mlflow.set_experiment(experiment)
    return mlflow


def open_store(uri):
    """An ``MlflowClient`` on ``uri``.

    Opening a new SQLite store creates its tables (MLflow's schema
    migrations): jobs do that one at a time, and the one that did it notes the
    database file's inode in the lock file. A store so noted is opened without
    waiting: opening a complete store only reads it, and it costs each job a
    second or two (MLflow checks the schema version), which would otherwise
    queue jobs that start together.
    """
    from mlflow import MlflowClient

    if _complete(uri):
        return MlflowClient(uri)
    with store_lock(uri) as lock:
        client = MlflowClient(uri)
        if lock is not None:
            lock.truncate(0)
            lock.write(str(_sqlite_path(uri).stat().st_ino))
            lock.flush()
    return client


def experiment_id(client, experiment, uri):
    """The id of ``experiment`` in ``client``'s store, creating it if needed."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    with store_lock(uri):  # jobs that start together: one creates it, the others find it
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(experiment,
                                            artifact_location=_artifact_location(uri))
        except MlflowException as exc:
            # On a tracking server another job may have created it just now.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return client.get_experiment_by_name(experiment).experiment_id


def _sqlite_path(uri):
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _complete(uri):
    """Whether ``uri`` is a server, or an SQLite store that a job has fully created."""
    db = _sqlite_path(uri)
    if db is None:
        return True
    try:
        return db.with_name(db.name + ".lock").read_text() == str(db.stat().st_ino)
    except (FileNotFoundError, ValueError):
        return False


@contextlib.contextmanager
def store_lock(uri):
    """Serialise creating a local SQLite store and its experiments between jobs.

    Two jobs that start together would otherwise both run MLflow's schema
    migrations on a new database, and one of them fails. Yields the lock file
    (None for a tracking server, which serialises for us).
    """
    db = _sqlite_path(uri)
    if db is None:
        yield None
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_tags(dataset, model, seed, gpus, framework, versions):
    """The run's identity and what it ran on: ``versions`` from ``Engine.versions()``."""
    tags = {"dataset": dataset, "model": model, "seed": str(seed), "gpus": str(gpus),
            "framework": framework, "git_commit": git_commit()}
    tags.update((key, str(value)) for key, value in versions.items() if value is not None)
    return tags


def run_name(dataset, model, seed, gpus, framework):
    return f"{framework}-{dataset}-{model}-seed{seed}-gpus{gpus}"


def epoch_metrics(record):
    """The MLflow metrics of one epoch record of train.json, with namespaced keys."""
    metrics = {"train/loss": record["train_loss"], "valid/loss": record["valid_loss"],
               "valid/ppl": record["valid_ppl"], "time/epoch_s": record["epoch_time_s"],
               "speed/tokens_per_s": record["tokens_per_s"], "train/lr": record["lr"]}
    optional = {"time/step_median_s": "step_time_median_s", "time/step_p95_s": "step_time_p95_s",
                "cost/epoch": "cost_per_epoch"}
    metrics.update((name, record[key]) for name, key in optional.items()
                   if record.get(key) is not None)
    return metrics


def log_aggregate(experiment, files):
    """A run named "aggregate" holding the aggregate's tables and plots as artefacts.

    Each aggregation makes a new one, so earlier reports stay browsable.
    """
    mlflow = connect(experiment)
    tags = {"mosbench.stage": "aggregate", "git_commit": git_commit()}
    with mlflow.start_run(run_name="aggregate", tags=tags):
        for path in files:
            mlflow.log_artifact(str(path))
