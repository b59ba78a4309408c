"""MLflow in one place: where runs go, how they are named, what they carry.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` and otherwise is the
embedded SQLite store ``results/mlflow.db`` with artefacts beside it in
``results/mlartifacts``. It is never a Snakemake param, so moving to a
tracking server reruns nothing.
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
    with _store_lock(uri):
        if mlflow.get_experiment_by_name(experiment) is None:
            try:
                mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri))
            except mlflow.exceptions.MlflowException as exc:
                # On a tracking server another job may have created it just now.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
    mlflow.set_experiment(experiment)
    return mlflow


@contextlib.contextmanager
def _store_lock(uri):
    """Serialise creating a local SQLite store and its experiment between jobs.

    Two jobs that start together would otherwise both run MLflow's schema
    migrations on a new database, and one of them fails.
    """
    if not uri.startswith("sqlite:///"):
        yield  # a tracking server serialises for us
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_tags(dataset, model, seed, gpus):
    return {"dataset": dataset, "model": model, "seed": str(seed), "gpus": str(gpus),
            "framework": "tensorflow", "git_commit": git_commit()}


def run_name(dataset, model, seed, gpus):
    return f"{dataset}-{model}-seed{seed}-gpus{gpus}"


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


def log_missing_epochs(run_id, history):
    """Log the epochs of ``history`` that the active run does not have yet.

    After a resume, epochs logged before the interruption are not logged again
    and epochs checkpointed but not yet logged are not lost.
    """
    import mlflow

    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "valid/ppl")}
    for record in history:
        if record["epoch"] not in logged:
            mlflow.log_metrics(epoch_metrics(record), step=record["epoch"])


def mark_paused(mlflow):
    """End the active run as paused: KILLED, tagged so, and resumed by the next job."""
    mlflow.set_tag("mosbench.state", "paused")
    mlflow.end_run(status="KILLED")
